// Package gomaxprocs sizes the Go scheduler to a proxy's load.
//
// A proxy at a moderate request rate is idle between requests. Each request
// readies a goroutine or two, and with more than one P the runtime wakes an
// idle thread to look for that work. The thread finds nothing and sleeps
// again: two context switches and a futex per wake-up. On a small VM that is
// about a third of a proxy's CPU per request (docs/benchmarks.md). With one
// P none of it happens, but one P caps the proxy at one core.
//
// The Controller starts at one P and doubles the count while the process
// is busier than highWater of its Ps, or while goroutines queue for a P
// (more than queuedShare of them waited queuedWait or more to run: a burst
// of CPU-heavy work, or a machine so loaded that the process gets less CPU
// than it could use). It takes one P away after Settle intervals below
// lowWater of one P fewer without queueing, never going past Max, the
// count Go chose at start from the CPUs and the cgroup CPU limit.
//
// Istio's ztunnel and waypoint instead run a fixed number of worker threads
// (2 by default). Linkerd's proxy runs one unless it is given a CPU limit.
// A GOMAXPROCS set in the environment pins the count, and the Controller is
// then not used (see Apply).
package gomaxprocs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"time"

	"github.com/ambientmesh/ambient/internal/cputime"
)

const (
	// highWater: above this share of its Ps busy, the process gets more.
	highWater = 0.7
	// lowWater: below this share of one P fewer, the process gives one back.
	lowWater = 0.45
	// queuedShare: above this share of goroutine starts that waited
	// queuedWait or more for a P, the process gets more Ps.
	queuedShare = 0.02
	queuedWait  = time.Millisecond
	// minStarts: fewer goroutine starts in an interval say nothing about
	// queueing.
	minStarts = 64
)

// Decide is the controller's rule. cur is the current P count, max the
// ceiling, busy the CPU the process used in the last interval, in cores,
// and queued the share of goroutine starts in it that waited queuedWait
// or more. It returns the count the load asks for: double when busy >
// highWater×cur or queued > queuedShare, one fewer when busy <
// lowWater×(cur−1) and queued ≤ queuedShare, else cur.
func Decide(cur, max int, busy, queued float64) int {
	switch {
	case (busy > highWater*float64(cur) || queued > queuedShare) && cur < max:
		return min(max, 2*cur)
	case cur > 1 && busy < lowWater*float64(cur-1) && queued <= queuedShare:
		return cur - 1
	}
	return cur
}

// Config sets up a Controller. Zero fields take the defaults.
type Config struct {
	// Max is the ceiling; default runtime.GOMAXPROCS(0) when New runs.
	Max int
	// Interval between samples of the process's CPU time; default 250 ms.
	Interval time.Duration
	// Settle is how many intervals in a row must ask for fewer Ps before
	// one is taken away; default 8 (2 s at the default interval).
	Settle int
	// CPUTime returns the process's user+system CPU time so far; default
	// getrusage(RUSAGE_SELF).
	CPUTime func() (time.Duration, error)
	// Starts returns how many goroutine starts so far waited how long for
	// a P: all of them, and those that waited queuedWait or more; default
	// the runtime's /sched/latencies:seconds histogram (which samples).
	Starts func() (all, queued uint64)
	// Set applies a P count; default runtime.GOMAXPROCS.
	Set func(n int)
	// Logger gets a debug line per change; default slog.Default().
	Logger *slog.Logger
}

// Controller adjusts GOMAXPROCS to the load; see the package comment.
type Controller struct {
	cfg        Config
	cur        int
	fewer      int // consecutive intervals that asked for fewer Ps
	lastCPU    time.Duration
	lastTime   time.Time
	lastStarts [2]uint64 // all, queued
}

// New returns a Controller with cfg's defaults filled in.
func New(cfg Config) *Controller {
	if cfg.Max <= 0 {
		cfg.Max = runtime.GOMAXPROCS(0)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 250 * time.Millisecond
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 8
	}
	if cfg.CPUTime == nil {
		cfg.CPUTime = cputime.Self
	}
	if cfg.Starts == nil {
		cfg.Starts = newSchedLatencies().starts
	}
	if cfg.Set == nil {
		cfg.Set = func(n int) { runtime.GOMAXPROCS(n) }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Controller{cfg: cfg}
}

// Run starts at one P and adjusts the count every Interval until ctx ends;
// then it restores Max. Should the process's CPU time become unreadable,
// it logs a warning and leaves the count at Max. It always returns nil.
func (c *Controller) Run(ctx context.Context) error {
	defer c.apply(c.cfg.Max, 0, 0)
	cpu, err := c.cfg.CPUTime()
	if err != nil {
		c.cfg.Logger.Warn("GOMAXPROCS left at its default: the process's CPU time cannot be read", "err", err)
		return nil
	}
	c.lastCPU, c.lastTime = cpu, time.Now()
	c.lastStarts[0], c.lastStarts[1] = c.cfg.Starts()
	c.apply(1, 0, 0)
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			cpu, err := c.cfg.CPUTime()
			if err != nil {
				c.cfg.Logger.Warn("GOMAXPROCS back at its default: the process's CPU time cannot be read", "err", err)
				return nil
			}
			all, queued := c.cfg.Starts()
			c.observe(cpu, all, queued, now)
		}
	}
}

// observe takes one sample: at now, the process's CPU time is cpu and
// all goroutine starts so far number all, queued of them late.
func (c *Controller) observe(cpu time.Duration, all, queued uint64, now time.Time) {
	wall := now.Sub(c.lastTime)
	if wall <= 0 {
		return
	}
	busy := float64(cpu-c.lastCPU) / float64(wall)
	var late float64
	if n := all - c.lastStarts[0]; n >= minStarts {
		late = float64(queued-c.lastStarts[1]) / float64(n)
	}
	c.lastCPU, c.lastTime, c.lastStarts = cpu, now, [2]uint64{all, queued}
	next := Decide(c.cur, c.cfg.Max, busy, late)
	switch {
	case next > c.cur:
		c.fewer = 0
		c.apply(next, busy, late)
	case next < c.cur:
		if c.fewer++; c.fewer >= c.cfg.Settle {
			c.fewer = 0
			c.apply(next, busy, late)
		}
	default:
		c.fewer = 0
	}
}

// apply sets n Ps; busy and late are the last interval's measures that
// asked for them, logged.
func (c *Controller) apply(n int, busy, late float64) {
	if n == c.cur || n < 1 {
		return
	}
	c.cfg.Logger.Debug("GOMAXPROCS changed", "from", c.cur, "to", n, "busy", busy, "late", late)
	c.cur = n
	c.cfg.Set(n)
}

// schedLatencies reads the runtime's goroutine scheduling latencies.
type schedLatencies struct {
	sample []metrics.Sample
	from   int // first bucket at or above queuedWait
}

func newSchedLatencies() *schedLatencies {
	s := &schedLatencies{sample: []metrics.Sample{{Name: "/sched/latencies:seconds"}}}
	metrics.Read(s.sample)
	if s.sample[0].Value.Kind() == metrics.KindFloat64Histogram {
		h := s.sample[0].Value.Float64Histogram()
		s.from = len(h.Counts)
		for i := range h.Counts {
			if h.Buckets[i] >= queuedWait.Seconds() {
				s.from = i
				break
			}
		}
	}
	return s
}

// starts returns the goroutine starts sampled so far, and those that
// waited queuedWait or more.
func (s *schedLatencies) starts() (all, queued uint64) {
	metrics.Read(s.sample)
	if s.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0, 0 // not in this runtime: queueing is not seen
	}
	for i, n := range s.sample[0].Value.Float64Histogram().Counts {
		all += n
		if i >= s.from {
			queued += n
		}
	}
	return all, queued
}

// FlagHelp describes a --gomaxprocs flag for the commands that take one.
const FlagHelp = "Go Ps (threads running Go code): auto sizes them to the load, from 1 up to Go's default (the CPUs, or the cgroup CPU limit); a number pins them. A GOMAXPROCS environment variable pins them too"

// ParseFlag reads a --gomaxprocs value: 0 for "auto", else the count to
// pin.
func ParseFlag(v string) (int, error) {
	if v == "auto" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("--gomaxprocs %q: want auto or a positive number", v)
	}
	return n, nil
}

// Apply carries out a parsed --gomaxprocs. A pin is set at once and nil
// returned. Auto returns a Controller to Run, or nil when GOMAXPROCS is set
// in the environment (the user's pin, which Go has already applied).
func Apply(pin int, logger *slog.Logger) *Controller {
	if pin > 0 {
		runtime.GOMAXPROCS(pin)
		return nil
	}
	if os.Getenv("GOMAXPROCS") != "" {
		return nil
	}
	return New(Config{Logger: logger})
}
