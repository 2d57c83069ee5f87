package proxies

import (
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	// Field layout from proc(5); the comm contains spaces and a ')'.
	line := "4242 (ngx: worker) x) S 4200 4200 4200 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 123 4567 89 18446744073709551615\n"
	got, err := ParseProcStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := ProcStat{Pid: 4242, PGrp: 4200, Utime: 250, Stime: 75}
	if got != want {
		t.Errorf("ParseProcStat = %+v, want %+v", got, want)
	}
	if got.CPU() != 3250*time.Millisecond {
		t.Errorf("CPU = %v, want 3.25s", got.CPU())
	}
	for _, bad := range []string{"", "12 no-parens S 1", "x (a) S 1 2", "1 (a) S 1 2 3"} {
		if _, err := ParseProcStat([]byte(bad)); err == nil {
			t.Errorf("ParseProcStat(%q) succeeded", bad)
		}
	}
}

func TestParseProcStat_OwnProcess(t *testing.T) {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip("no /proc:", err)
	}
	s, err := ParseProcStat(data)
	if err != nil {
		t.Fatal(err)
	}
	if s.Pid != os.Getpid() || s.PGrp != syscall.Getpgrp() {
		t.Errorf("pid %d pgrp %d, want %d %d", s.Pid, s.PGrp, os.Getpid(), syscall.Getpgrp())
	}
}

func TestTailLines(t *testing.T) {
	got := TailLines([]byte("a\n\nb\nc\n  \nd\n"), 2)
	if strings.Join(got, "|") != "c|d" {
		t.Errorf("TailLines = %q", got)
	}
	if got := TailLines(nil, 3); len(got) != 0 {
		t.Errorf("TailLines(nil) = %q", got)
	}
}

func TestParseVmRSSKiB(t *testing.T) {
	status := []byte("Name:\tnginx\nVmPeak:\t  20000 kB\nVmRSS:\t   15872 kB\nThreads:\t1\n")
	if kb, ok := ParseVmRSSKiB(status); !ok || kb != 15872 {
		t.Errorf("ParseVmRSSKiB = %v, %v; want 15872", kb, ok)
	}
	if _, ok := ParseVmRSSKiB([]byte("Name:\tzombie\nState:\tZ (zombie)\n")); ok {
		t.Error("a status without VmRSS parsed")
	}
}

func TestGroupRSSMiBAndBusyBetween_OwnProcess(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc:", err)
	}
	if pids, err := GroupPids(syscall.Getpgrp()); err != nil || !slices.Contains(pids, os.Getpid()) {
		t.Errorf("GroupPids(own group) = %v, %v; want this process among them", pids, err)
	}
	rss, err := GroupRSSMiB(syscall.Getpgrp())
	if err != nil || rss <= 0 {
		t.Fatalf("GroupRSSMiB(own group) = %v, %v", rss, err)
	}
	before := CPUByProcess()
	for deadline := time.Now().Add(30 * time.Millisecond); time.Now().Before(deadline); {
	}
	after := CPUByProcess()
	if _, ok := after[os.Getpid()]; !ok {
		t.Fatal("CPUByProcess lacks this process")
	}
	if busy := BusyBetween(before, after); busy < 0 {
		t.Errorf("BusyBetween = %v", busy)
	}
	if d := BusyBetween(map[int]time.Duration{1: time.Second, 2: time.Second}, map[int]time.Duration{1: 3 * time.Second, 3: time.Hour}); d != 2*time.Second {
		t.Errorf("BusyBetween counts only processes alive at both: %v, want 2s", d)
	}
}
