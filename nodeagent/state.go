package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// podRecord is the crash-safe record of one pod's node-side resources,
// written to <state-dir>/pods/<ns>_<name>_<uid>/state.json before each
// resource is created and after each change, so that Cleanup can remove
// everything with nothing but the state directory.
type podRecord struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	// NodeNetns is the node's namespace path, where CNI plugins run.
	NodeNetns string `json:"nodeNetns,omitempty"`
	// Netns is the pod's namespace name (/run/netns/<Netns>); empty for a
	// hostNetwork pod.
	Netns string `json:"netns,omitempty"`
	// CNI is set once ADD is about to run; DEL uses exactly this.
	CNI *cniRecord `json:"cni,omitempty"`
	// Processes are the running containers' process-group leaders.
	Processes map[string]procRecord `json:"processes,omitempty"`
}

type cniRecord struct {
	BinDir      []string        `json:"binDir"`
	CacheDir    string          `json:"cacheDir"`
	ConfList    json.RawMessage `json:"confList"`
	ContainerID string          `json:"containerID"`
	IfName      string          `json:"ifName"`
	Args        [][2]string     `json:"args"`
	Result      json.RawMessage `json:"result,omitempty"`
}

type procRecord struct {
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat, so that a reused pid is
	// never signalled.
	StartTime uint64 `json:"startTime"`
}

const (
	podsDir   = "pods"
	stateFile = "state.json"
)

// podDirName is <namespace>_<name>_<uid>, as kubelet names pod log dirs.
func podDirName(ns, name, uid string) string { return ns + "_" + name + "_" + uid }

// save writes the record atomically.
func (r *podRecord) save(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("nodeagent: state: %w", err)
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("nodeagent: state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("nodeagent: state: %w", err)
	}
	return nil
}

func loadRecord(dir string) (*podRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var r podRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("nodeagent: %s: %w", filepath.Join(dir, stateFile), err)
	}
	return &r, nil
}

// procStartTime reads the start time of pid, or 0 if it does not exist.
func procStartTime(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields resume after ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); starttime is field 22.
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// killGroup SIGKILLs the process group led by p, if p is still the process
// that was recorded (or has exited while its group lives on: Linux does not
// reuse a pid that is still a process-group id).
func killGroup(p procRecord) {
	st := procStartTime(p.PID)
	if st != 0 && st != p.StartTime {
		return // the pid belongs to someone else now
	}
	_ = syscall.Kill(-p.PID, syscall.SIGKILL)
}

// Cleanup removes everything recorded under stateDir: it kills the pods'
// processes, runs CNI DEL with the recorded configuration, deletes the
// pods' network namespaces and removes the pod directories. It is what
// `nodeagent cleanup` runs and what Run does first, so that nothing of an
// agent that crashed survives. Host-local IPAM state under stateDir is
// released by the DELs.
func Cleanup(ctx context.Context, stateDir string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root := filepath.Join(stateDir, podsDir)
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nodeagent: cleanup: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		rec, err := loadRecord(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		if rec != nil {
			if err := rec.teardown(ctx, log); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("nodeagent: cleanup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// teardown kills the recorded processes, runs CNI DEL and deletes the
// namespace; each step is idempotent.
func (r *podRecord) teardown(ctx context.Context, log *slog.Logger) error {
	for name, p := range r.Processes {
		if procStartTime(p.PID) == p.StartTime {
			log.Info("cleanup: killing container", "pod", r.Namespace+"/"+r.Name, "container", name, "pid", p.PID)
		}
		killGroup(p)
	}
	waitGroupsGone(r.Processes, 5*time.Second)
	var errs []error
	if r.CNI != nil {
		if err := cniDel(ctx, r); err != nil {
			errs = append(errs, err)
		}
	}
	if r.Netns != "" {
		if err := deleteNetns(r.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// waitGroupsGone waits until no process of the recorded groups is left.
func waitGroupsGone(procs map[string]procRecord, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		alive := false
		for _, p := range procs {
			if !errors.Is(syscall.Kill(-p.PID, 0), syscall.ESRCH) {
				alive = true
			}
		}
		if !alive {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
