package proxies

import (
	"os"
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
