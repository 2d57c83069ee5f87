package gomaxprocs

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	for _, tc := range []struct {
		cur, max     int
		busy, queued float64
		want         int
	}{
		{1, 2, 0.05, 0, 1},      // idle
		{1, 2, 0.69, 0, 1},      // busy but within one P
		{1, 2, 0.75, 0, 2},      // needs more
		{1, 1, 0.99, 0.5, 1},    // at the ceiling
		{2, 8, 1.5, 0, 4},       // doubles
		{4, 6, 3.5, 0, 6},       // doubles up to the ceiling
		{2, 2, 0.5, 0, 2},       // inside the hysteresis band
		{2, 2, 0.40, 0, 1},      // fits in one P with room to spare
		{4, 8, 1.30, 0, 3},      // one fewer at a time
		{4, 8, 1.40, 0, 4},      // not below lowWater of 3 Ps
		{1, 4, 0.0, 0, 1},       // never below one
		{3, 2, 0.1, 0, 2},       // above a ceiling: only down
		{8, 16, 5.7, 0, 16},     // 5.7 > 0.7×8
		{1, 2, 0.5, 0.05, 2},    // goroutines queue for the one P
		{1, 2, 0.5, 0.02, 1},    // a little queueing is normal
		{2, 2, 0.30, 0.05, 2},   // queueing: never fewer
		{2, 4, 0.30, 0.05, 4},   // queueing even when not busy
		{4, 8, 1.30, 0.01, 3},   // calm enough to give one back
		{1, 2, 0.95, 0.00, 2},   // busy, no queueing
		{2, 2, 1.95, 0.30, 2},   // saturated at the ceiling
		{3, 16, 2.2, 0.00, 6},   // doubles from any count
		{16, 16, 0.0, 0.00, 15}, // idle: one fewer
	} {
		if got := Decide(tc.cur, tc.max, tc.busy, tc.queued); got != tc.want {
			t.Errorf("Decide(%d, %d, %.2f, %.2f) = %d, want %d", tc.cur, tc.max, tc.busy, tc.queued, got, tc.want)
		}
	}
}

// fakeProcess is a process whose CPU time the test advances.
type fakeProcess struct {
	cpu         time.Duration
	all, queued uint64 // goroutine starts
	now         time.Time
	procs       []int
}

func (f *fakeProcess) controller(max, settle int) *Controller {
	c := New(Config{Max: max, Settle: settle, CPUTime: func() (time.Duration, error) { return f.cpu, nil },
		Starts: func() (uint64, uint64) { return f.all, f.queued },
		Set:    func(n int) { f.procs = append(f.procs, n) }})
	c.apply(1, 0, 0)
	c.lastTime = f.now
	return c
}

// run spends busy cores for one second of wall time, with 1,000
// goroutine starts of which queued waited long, and samples.
func (f *fakeProcess) run(c *Controller, busy float64, queued ...uint64) {
	f.now = f.now.Add(time.Second)
	f.cpu += time.Duration(busy * float64(time.Second))
	f.all += 1000
	if len(queued) > 0 {
		f.queued += queued[0]
	}
	c.observe(f.cpu, f.all, f.queued, f.now)
}

// TestController_QueueingRaisesTheCount: goroutines waiting for the one P
// get a second although the process is not busy by CPU time (the machine
// gives it less than it could use); too few starts say nothing.
func TestController_QueueingRaisesTheCount(t *testing.T) {
	f := &fakeProcess{now: time.Unix(1000, 0)}
	c := f.controller(2, 2)
	f.run(c, 0.5, 10) // 1 % late: normal
	if c.cur != 1 {
		t.Fatalf("1 %% late: %d Ps, want 1", c.cur)
	}
	f.run(c, 0.5, 100) // 10 % late
	if c.cur != 2 {
		t.Fatalf("10 %% late: %d Ps, want 2", c.cur)
	}
	f.run(c, 0.3, 100) // still queueing: no P given back
	f.run(c, 0.3, 100)
	if c.cur != 2 {
		t.Fatalf("queueing at 2 Ps: %d Ps, want 2", c.cur)
	}
	// Nearly idle with a handful of starts, all late: not a signal.
	f.now = f.now.Add(time.Second)
	f.all += 10
	f.queued += 10
	c.observe(f.cpu, f.all, f.queued, f.now)
	f.now = f.now.Add(time.Second)
	f.all += 10
	f.queued += 10
	c.observe(f.cpu, f.all, f.queued, f.now)
	if c.cur != 1 {
		t.Fatalf("idle with %d late starts: %d Ps, want 1", 20, c.cur)
	}
}

func TestController_ScalesUpAtOnceAndDownAfterSettling(t *testing.T) {
	f := &fakeProcess{now: time.Unix(1000, 0)}
	c := f.controller(4, 3)
	f.run(c, 0.2)
	f.run(c, 0.9) // one P saturated
	if c.cur != 2 {
		t.Fatalf("after a busy second: %d Ps, want 2", c.cur)
	}
	f.run(c, 1.9)
	if c.cur != 4 {
		t.Fatalf("after a second more: %d Ps, want 4", c.cur)
	}
	// The load drops: one P fewer only after 3 calm seconds in a row.
	f.run(c, 0.5)
	f.run(c, 0.5)
	f.run(c, 2.5) // a burst resets the count
	f.run(c, 0.5)
	f.run(c, 0.5)
	if c.cur != 4 {
		t.Fatalf("before settling: %d Ps, want 4", c.cur)
	}
	f.run(c, 0.5)
	if c.cur != 3 {
		t.Fatalf("after 3 calm seconds: %d Ps, want 3", c.cur)
	}
	for range 6 {
		f.run(c, 0.1)
	}
	if c.cur != 1 {
		t.Fatalf("idle: %d Ps, want 1", c.cur)
	}
	want := []int{1, 2, 4, 3, 2, 1}
	if len(f.procs) != len(want) {
		t.Fatalf("counts set %v, want %v", f.procs, want)
	}
	for i := range want {
		if f.procs[i] != want[i] {
			t.Fatalf("counts set %v, want %v", f.procs, want)
		}
	}
}

// TestRun_RealRuntime: with the real runtime and real CPU time, two
// spinning goroutines make the controller raise GOMAXPROCS from 1 to 2;
// when ctx ends it restores the ceiling.
func TestRun_RealRuntime(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs")
	}
	orig := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(orig) })
	runtime.GOMAXPROCS(2)
	var seen atomic.Int32
	c := New(Config{Max: 2, Interval: 20 * time.Millisecond, Set: func(n int) {
		runtime.GOMAXPROCS(n)
		seen.Store(int32(n))
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	deadline := time.After(10 * time.Second)
	for seen.Load() != 1 { // Run starts at one P
		select {
		case <-deadline:
			t.Fatal("Run did not start at 1 P")
		case <-time.After(time.Millisecond):
		}
	}
	stop := make(chan struct{})
	for range 2 {
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	for seen.Load() != 2 {
		select {
		case <-deadline:
			close(stop)
			t.Fatal("GOMAXPROCS stayed at 1 under two spinning goroutines")
		case <-time.After(5 * time.Millisecond):
		}
	}
	close(stop)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Fatalf("after Run: GOMAXPROCS %d, want the ceiling 2", got)
	}
}

func TestParseFlagAndApply(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(orig) })

	for v, want := range map[string]int{"auto": 0, "1": 1, "3": 3} {
		if got, err := ParseFlag(v); err != nil || got != want {
			t.Errorf("ParseFlag(%q) = %d, %v; want %d", v, got, err, want)
		}
	}
	for _, bad := range []string{"0", "-1", "two", "", "Auto"} {
		if _, err := ParseFlag(bad); err == nil {
			t.Errorf("ParseFlag(%q) accepted", bad)
		}
	}

	t.Setenv("GOMAXPROCS", "")
	if c := Apply(0, nil); c == nil {
		t.Fatal("auto: no controller")
	}
	if c := Apply(3, nil); c != nil || runtime.GOMAXPROCS(0) != 3 {
		t.Fatalf("pin 3: controller %v, GOMAXPROCS %d; want it pinned at 3", c, runtime.GOMAXPROCS(0))
	}
	t.Setenv("GOMAXPROCS", "1")
	if c := Apply(0, nil); c != nil {
		t.Fatal("auto with GOMAXPROCS in the environment: a controller; want the pin kept")
	}
}

// TestSchedLatencies_ReadsTheRuntime: the runtime's histogram is found and
// counts goroutine starts; a goroutine kept from its P for 5 ms counts as
// late.
func TestSchedLatencies_ReadsTheRuntime(t *testing.T) {
	orig := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(orig) })
	s := newSchedLatencies()
	all0, queued0 := s.starts()
	for range 64 { // the runtime samples every 8th start
		ready := make(chan struct{})
		done := make(chan struct{})
		go func() { <-ready; close(done) }()
		close(ready) // readied, but this goroutine keeps the only P
		for end := time.Now().Add(5 * time.Millisecond); time.Now().Before(end); {
		}
		<-done
	}
	all, queued := s.starts()
	if all <= all0 || queued <= queued0 {
		t.Fatalf("starts %d -> %d, late %d -> %d; want both counted", all0, all, queued0, queued)
	}
}
