package localcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// RecordFile is the name of the resource record in the state directory.
const RecordFile = "resources.json"

// Record lists everything a cluster created, in creation order per kind.
// Each entry is written (and synced) before the resource is created.
type Record struct {
	Name    string      `json:"name"`
	Server  string      `json:"server,omitempty"`
	NodeBin string      `json:"nodeagentBinary,omitempty"`
	Procs   []ProcEntry `json:"processes,omitempty"`
	Netns   []string    `json:"netns,omitempty"`
	Links   []string    `json:"rootLinks,omitempty"`
	Routes  []Route     `json:"rootRoutes,omitempty"`
	// AgentDirs are node agents' state directories (`nodeagent cleanup`).
	AgentDirs []string `json:"nodeagentStateDirs,omitempty"`
	// Files outside the state directory.
	Files []string `json:"files,omitempty"`
}

// ProcEntry is one process group the cluster started.
type ProcEntry struct {
	Name  string `json:"name"`
	Pid   int    `json:"pid"`   // also the process group id
	Start uint64 `json:"start"` // /proc/<pid>/stat starttime: a reused pid is not ours
	Node  string `json:"node,omitempty"`
}

// Route is a root-namespace route, as `ip route` arguments.
type Route struct {
	Type   string `json:"type"` // unreachable
	Dst    string `json:"dst"`
	Proto  string `json:"proto"`
	Metric int    `json:"metric"`
}

// Args are the `ip route add|del` arguments after the verb.
func (r Route) Args() []string {
	return []string{r.Type, r.Dst, "proto", r.Proto, "metric", strconv.Itoa(r.Metric)}
}

// recorder persists a Record; mu guards rec and the file.
type recorder struct {
	path string
	mu   sync.Mutex
	rec  Record
}

func loadRecord(stateDir string) (*Record, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, RecordFile))
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("localcluster: %s: %w", filepath.Join(stateDir, RecordFile), err)
	}
	return &r, nil
}

// update applies fn to the record and writes it durably.
func (r *recorder) update(fn func(*Record)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(&r.rec)
	b, err := json.MarshalIndent(&r.rec, "", "  ")
	if err != nil {
		return err
	}
	tmp := r.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("localcluster: record: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("localcluster: record: %w", err)
	}
	return os.Rename(tmp, r.path)
}

// procStart reads the start time (clock ticks since boot) of pid.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after ')' are fixed.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, errors.New("short stat")
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 overall
}

// alive reports whether the recorded process still runs (not a zombie, not
// a reused pid).
func (p ProcEntry) alive() bool {
	st, err := procStart(p.Pid)
	if err != nil || st != p.Start {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || len(s) < i+3 || s[i+2] != 'Z'
}
