package testenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// namePrefix starts every namespace name this package (and the namespace
// tests of internal/netns) creates: amt-<pid>-...
const namePrefix = "amt-"

// guardProto marks the root-namespace unreachable routes as ours; the
// route's metric is the owning process's pid.
const guardProto = "167"

// guardMu guards guardRefs: the number of live topologies of this process.
// The first one installs the guard routes and the last one removes them.
var (
	guardMu   sync.Mutex
	guardRefs int
)

func guardCIDRs() []string {
	return []string{PodCIDR.String(), ServiceCIDR.String(), NodeCIDR.String(),
		PodCIDR6.String(), ServiceCIDR6.String(), NodeCIDR6.String()}
}

func acquireGuard() error {
	guardMu.Lock()
	defer guardMu.Unlock()
	if guardRefs == 0 {
		for _, cidr := range guardCIDRs() {
			if err := ipCmd("route", "replace", "unreachable", cidr, "proto", guardProto, "metric", strconv.Itoa(os.Getpid())); err != nil {
				return fmt.Errorf("guard route in the root namespace: %w", err)
			}
		}
	}
	guardRefs++
	return nil
}

func releaseGuard() error {
	guardMu.Lock()
	defer guardMu.Unlock()
	guardRefs--
	if guardRefs > 0 {
		return nil
	}
	return deleteGuard(os.Getpid())
}

func deleteGuard(pid int) error {
	var errs []error
	for _, cidr := range guardCIDRs() {
		if err := ipCmd("route", "del", "unreachable", cidr, "proto", guardProto, "metric", strconv.Itoa(pid)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// alive reports whether a process with this pid exists.
func alive(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// ownerPid parses the pid out of amt-<pid>-...; ok is false for other names.
func ownerPid(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, namePrefix)
	if !ok {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil && pid > 0
}

// CleanStale deletes the namespaces and root guard routes left by a test
// process that no longer exists. Those of live processes (other test
// binaries running in parallel) are left alone.
func CleanStale() error {
	var errs []error
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("list /run/netns: %w", err)
	}
	for _, e := range entries {
		if pid, ok := ownerPid(e.Name()); ok && !alive(pid) {
			if err := ipCmd("netns", "del", e.Name()); err != nil {
				// Another test binary may be cleaning the same leftovers.
				path := filepath.Join("/run/netns", e.Name())
				if rmErr := os.Remove(path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
					errs = append(errs, err)
				}
			}
		}
	}

	out, err := exec.Command("ip", "-j", "route", "show", "proto", guardProto).Output()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("ip -j route show proto %s: %w", guardProto, err))...)
	}
	var routes []struct {
		Type   string `json:"type"`
		Dst    string `json:"dst"`
		Metric int    `json:"metric"`
	}
	if len(strings.TrimSpace(string(out))) > 0 {
		if err := json.Unmarshal(out, &routes); err != nil {
			return errors.Join(append(errs, fmt.Errorf("parse routes: %w", err))...)
		}
	}
	for _, r := range routes {
		if r.Type == "unreachable" && r.Metric > 0 && !alive(r.Metric) {
			// "No such process": another test binary removed it first.
			if err := ipCmd("route", "del", "unreachable", r.Dst, "proto", guardProto, "metric", strconv.Itoa(r.Metric)); err != nil &&
				!strings.Contains(err.Error(), "No such process") {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
