package proxies

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat. It is
// 100 on every Linux architecture Go supports (the kernel's CONFIG_HZ is not
// exposed there).
const clockTicks = 100

// ProcStat is the part of /proc/<pid>/stat the benchmark uses.
type ProcStat struct {
	Pid   int
	PGrp  int
	Utime uint64 // clock ticks
	Stime uint64 // clock ticks
}

// CPU is user+system time.
func (s ProcStat) CPU() time.Duration {
	return time.Duration(s.Utime+s.Stime) * time.Second / clockTicks
}

// ParseProcStat parses the contents of /proc/<pid>/stat. The command name
// (field 2) is in parentheses and may itself contain spaces and ')', so
// fields are counted from the last ')'.
func ParseProcStat(data []byte) (ProcStat, error) {
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return ProcStat{}, errors.New("proxies: malformed /proc stat: no (comm)")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(data[:open])))
	if err != nil {
		return ProcStat{}, fmt.Errorf("proxies: malformed /proc stat pid: %w", err)
	}
	// After ") ": state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8)
	// flags(9) minflt(10) cminflt(11) majflt(12) cmajflt(13) utime(14) stime(15).
	f := bytes.Fields(data[end+1:])
	if len(f) < 13 {
		return ProcStat{}, fmt.Errorf("proxies: malformed /proc stat: %d fields after comm", len(f))
	}
	field := func(n int) (uint64, error) { return strconv.ParseUint(string(f[n-3]), 10, 64) }
	pgrp, err1 := field(5)
	ut, err2 := field(14)
	st, err3 := field(15)
	if err := errors.Join(err1, err2, err3); err != nil {
		return ProcStat{}, fmt.Errorf("proxies: malformed /proc stat: %w", err)
	}
	return ProcStat{Pid: pid, PGrp: int(pgrp), Utime: ut, Stime: st}, nil
}

// GroupCPU sums the CPU time of every live process in process group pgid.
// A process that exits between listing and reading is skipped.
func GroupCPU(pgid int) (time.Duration, error) {
	paths, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return 0, err
	}
	var total time.Duration
	found := false
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s, err := ParseProcStat(data)
		if err != nil || s.PGrp != pgid {
			continue
		}
		found = true
		total += s.CPU()
	}
	if !found {
		return 0, fmt.Errorf("proxies: no live process in group %d", pgid)
	}
	return total, nil
}

// GroupPids lists the live processes of process group pgid (nginx: the
// master and its workers).
func GroupPids(pgid int) ([]int, error) {
	paths, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if st, err := ParseProcStat(data); err == nil && st.PGrp == pgid {
			pids = append(pids, st.Pid)
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("proxies: no live process in group %d", pgid)
	}
	return pids, nil
}

// GroupRSSMiB sums VmRSS over the live processes of process group pgid
// (nginx: master and workers), in MiB.
func GroupRSSMiB(pgid int) (float64, error) {
	paths, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return 0, err
	}
	var kb float64
	found := false
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		st, err := ParseProcStat(data)
		if err != nil || st.PGrp != pgid {
			continue
		}
		status, err := os.ReadFile(filepath.Join(filepath.Dir(p), "status"))
		if err != nil {
			continue
		}
		if v, ok := ParseVmRSSKiB(status); ok {
			kb += v
			found = true
		}
	}
	if !found {
		return 0, fmt.Errorf("proxies: no live process in group %d", pgid)
	}
	return kb / 1024, nil
}

// ParseVmRSSKiB returns the VmRSS line of /proc/<pid>/status in KiB (false
// for a process without one, such as a zombie).
func ParseVmRSSKiB(status []byte) (float64, bool) {
	for _, line := range bytes.Split(status, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			n, err := strconv.ParseFloat(string(bytes.TrimSuffix(bytes.TrimSpace(v), []byte(" kB"))), 64)
			return n, err == nil
		}
	}
	return 0, false
}

// CPUByProcess is every process's user+system time so far
// (/proc/<pid>/stat, which the kernel scales to the precise run time; the
// machine-wide /proc/stat counters are sampled at timer ticks, which a load
// paced at exactly 1,000 req/s aliases with).
func CPUByProcess() map[int]time.Duration {
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	out := make(map[int]time.Duration, len(paths))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if st, err := ParseProcStat(data); err == nil {
			out[st.Pid] = st.CPU()
		}
	}
	return out
}

// BusyBetween is the CPU time used between two CPUByProcess snapshots by
// the processes alive at both: the path, the load client, the backend and
// any other long-running work on the machine (short-lived processes, such
// as compilers, are missed).
func BusyBetween(before, after map[int]time.Duration) time.Duration {
	var d time.Duration
	for pid, a := range after {
		if b, ok := before[pid]; ok && a >= b {
			d += a - b
		}
	}
	return d
}
