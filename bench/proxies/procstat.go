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
