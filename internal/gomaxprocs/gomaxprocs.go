// Package gomaxprocs sizes the Go scheduler to a proxy's load.
//
// A proxy at a moderate request rate is idle between requests. Each request
// readies a goroutine or two, and with more than one P the runtime wakes an
// idle thread to look for that work. The thread finds nothing and sleeps
// again: two context switches and a futex per wake-up. On a small VM that is
// about a third of a proxy's CPU per request (docs/benchmarks.md). With one
// P none of it happens, but one P caps the proxy at one core. The
// Controller starts at one P and doubles the count while the process is
// busier than highWater of its Ps. It takes one P away after Settle
// intervals below lowWater of one P fewer, never going past Max, the count
// Go chose at start from the CPUs and the cgroup CPU limit.
//
// Istio's ztunnel and waypoint instead run a fixed number of worker threads
// (2 by default). Linkerd's proxy runs one unless it is given a CPU limit.
// A GOMAXPROCS set in the environment pins the count, and the Controller is
// then not used (see Auto).
package gomaxprocs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

const (
	// highWater: above this share of its Ps busy, the process gets more.
	highWater = 0.7
	// lowWater: below this share of one P fewer, the process gives one back.
	lowWater = 0.45
)

// Decide is the controller's rule. cur is the current P count, max the
// ceiling, busy the CPU the process used in the last interval, in cores.
// It returns the count the load asks for: double when busy > highWater×cur,
// one fewer when busy < lowWater×(cur−1), else cur.
func Decide(cur, max int, busy float64) int {
	switch {
	case busy > highWater*float64(cur) && cur < max:
		return min(max, 2*cur)
	case cur > 1 && busy < lowWater*float64(cur-1):
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
	// Set applies a P count; default runtime.GOMAXPROCS.
	Set func(n int)
	// Logger gets a debug line per change; default slog.Default().
	Logger *slog.Logger
}

// Controller adjusts GOMAXPROCS to the load; see the package comment.
type Controller struct {
	cfg      Config
	cur      int
	fewer    int // consecutive intervals that asked for fewer Ps
	lastCPU  time.Duration
	lastTime time.Time
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
		cfg.CPUTime = processCPUTime
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
	defer c.apply(c.cfg.Max)
	cpu, err := c.cfg.CPUTime()
	if err != nil {
		c.cfg.Logger.Warn("GOMAXPROCS left at its default: the process's CPU time cannot be read", "err", err)
		return nil
	}
	c.lastCPU, c.lastTime = cpu, time.Now()
	c.apply(1)
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
			c.observe(cpu, now)
		}
	}
}

// observe takes one sample: cpu is the process's CPU time at now.
func (c *Controller) observe(cpu time.Duration, now time.Time) {
	wall := now.Sub(c.lastTime)
	if wall <= 0 {
		return
	}
	busy := float64(cpu-c.lastCPU) / float64(wall)
	c.lastCPU, c.lastTime = cpu, now
	next := Decide(c.cur, c.cfg.Max, busy)
	switch {
	case next > c.cur:
		c.fewer = 0
		c.apply(next)
	case next < c.cur:
		if c.fewer++; c.fewer >= c.cfg.Settle {
			c.fewer = 0
			c.apply(next)
		}
	default:
		c.fewer = 0
	}
}

func (c *Controller) apply(n int) {
	if n == c.cur || n < 1 {
		return
	}
	c.cfg.Logger.Debug("GOMAXPROCS changed", "from", c.cur, "to", n)
	c.cur = n
	c.cfg.Set(n)
}

// processCPUTime is the user+system CPU time of the whole process.
func processCPUTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
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
