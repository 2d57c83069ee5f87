package localcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// stopGrace is how long a process gets between SIGTERM and SIGKILL; the
// node agents need it to stop their pods.
const stopGrace = 10 * time.Second

// Down removes everything recorded in cfg.StateDir's resource record, in
// order: node agents (SIGTERM: they stop their pods), `nodeagent cleanup`
// per node, every other process group (reverse start order), the
// namespaces, root links, guard routes, recorded files, and the state
// directory. Without a record it does nothing. It carries on past errors
// and returns them all.
func Down(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	if cfg.StateDir == "" {
		return errors.New("localcluster: a state directory is required")
	}
	rec, err := loadRecord(cfg.StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("localcluster: removing the local cluster needs root; run with sudo")
	}
	var errs []error
	progress(cfg, "stopping node agents and their pods")
	isAgent := func(p ProcEntry) bool { return strings.HasPrefix(p.Name, "nodeagent-") }
	stopProcs(filterProcs(rec.Procs, isAgent))
	for _, dir := range rec.AgentDirs {
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		out, err := exec.CommandContext(cctx, rec.NodeBin, "cleanup", "--state-dir", dir).CombinedOutput()
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("localcluster: nodeagent cleanup --state-dir %s: %w: %s", dir, err, strings.TrimSpace(string(out))))
		}
	}
	progress(cfg, "stopping kube-proxy and the control plane")
	others := filterProcs(rec.Procs, func(p ProcEntry) bool { return !isAgent(p) })
	// One at a time, newest first: the apiserver waits out its grace
	// period when etcd is gone before it.
	for _, p := range slices.Backward(others) {
		stopProcs([]ProcEntry{p})
	}

	progress(cfg, "removing namespaces, links and routes")
	for _, ns := range slices.Backward(rec.Netns) {
		if _, err := os.Stat(NetnsPath(ns)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := ip("netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	for _, l := range rec.Links {
		if _, err := os.Stat("/sys/class/net/" + l); err != nil {
			continue // gone with its peer's namespace
		}
		if err := ip("link", "del", l); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range rec.Routes {
		if !routeExists(r) {
			continue
		}
		if err := ip(append([]string{"route", "del"}, r.Args()...)...); err != nil {
			errs = append(errs, err)
		}
	}
	for _, f := range rec.Files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		// Keep the record so that the next Down retries.
		return err
	}
	if err := os.RemoveAll(cfg.StateDir); err != nil {
		return fmt.Errorf("localcluster: %w", err)
	}
	progress(cfg, "down")
	return nil
}

func filterProcs(ps []ProcEntry, keep func(ProcEntry) bool) []ProcEntry {
	var out []ProcEntry
	for _, p := range ps {
		if keep(p) {
			out = append(out, p)
		}
	}
	return out
}

// stopProcs sends SIGTERM to each live recorded process group, waits up to
// stopGrace for them all, then SIGKILLs what is left.
func stopProcs(ps []ProcEntry) {
	var live []ProcEntry
	for _, p := range ps {
		if p.alive() {
			live = append(live, p)
			_ = syscall.Kill(-p.Pid, syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(stopGrace)
	for len(live) > 0 && time.Now().Before(deadline) {
		live = filterProcs(live, ProcEntry.alive)
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range live {
		_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	}
	for _, p := range ps {
		// Descendants left in a group whose leader was ours. Only when the
		// leader is ours or gone: a reused pid's group is not touched.
		st, err := procStart(p.Pid)
		if err != nil || st == p.Start {
			_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
		}
	}
	for _, p := range live {
		for i := 0; i < 100 && p.alive(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// routeExists reports whether the root namespace has the route.
func routeExists(r Route) bool {
	out, err := exec.Command("ip", "route", "show", "type", r.Type, r.Dst, "proto", r.Proto).Output()
	return err == nil && strings.Contains(string(out), fmt.Sprintf("metric %d", r.Metric))
}
