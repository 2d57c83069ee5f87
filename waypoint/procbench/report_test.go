package procbench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ambientmesh/ambient/bench/stats"
)

// waypointVCPUTarget is the bound on the waypoint's CPU per 1,000
// req/s, at every fixed rate.
const waypointVCPUTarget = 0.15

// rateSample is one path at one fixed rate, measured once.
type rateSample struct {
	P50, P99 time.Duration
	// CPU-seconds per 1,000 requests (= vCPU per 1,000 req/s) of the middle
	// proxy (waypoint, nginx http) and of every proxy on the path; 0 for
	// plain.
	MiddleVCPU, PathVCPU float64
	MiddleRSSMiB         float64 // VmRSS of the middle proxy after the run
	// MachineBusy is the CPU of every process on the machine during the
	// run, in vCPU: the path, the load client, the backend and whatever
	// else runs (a noise indicator).
	MachineBusy float64
}

// step is one closed-loop run of the maximum-throughput search.
type step struct {
	Conns       int
	RPS         float64
	MiddleCores float64   // vCPU used by the middle proxy during the step
	ProcCores   []float64 // vCPU used by each of the path's proxies, in path order
	MachineBusy float64   // vCPU used by every process
}

// sample is one path measured once: each fixed rate, in config order, and
// the closed-loop search.
type sample struct {
	Rates []rateSample
	Steps []step
}

// ladder is the closed-loop search for a path's maximum req/s: Start
// connections, doubled each step, always up to Min, then on up to Limit
// until Patience steps in a row have not beaten the best so far by more
// than MinGain (a fraction). Min keeps one noisy step on a shared machine
// from ending the search early.
type ladder struct {
	Start, Min, Limit int
	Patience          int
	MinGain           float64
}

// next is the connection count of the step after history, or false when
// the search is over.
func (l ladder) next(history []step) (int, bool) {
	if len(history) == 0 {
		return l.Start, l.Start > 0
	}
	last := history[len(history)-1].Conns
	if last*2 > l.Limit {
		return 0, false
	}
	if last < l.Min {
		return last * 2, true
	}
	bestRPS, stale := 0.0, 0
	for _, s := range history {
		if s.RPS > bestRPS*(1+l.MinGain) {
			bestRPS, stale = s.RPS, 0
			continue
		}
		bestRPS = max(bestRPS, s.RPS)
		stale++
	}
	if stale >= l.Patience {
		return 0, false
	}
	return last * 2, true
}

// best is the step with the highest req/s (the zero step for none).
func best(steps []step) step {
	var b step
	for _, s := range steps {
		if s.RPS > b.RPS {
			b = s
		}
	}
	return b
}

// rateRow is one path at one rate: medians over the rounds.
type rateRow struct {
	Rate                 float64
	P50us, P99us         float64
	MiddleVCPU, PathVCPU float64
	MiddleRSSMiB         float64
	MachineBusy          float64
}

// row is one path's medians over the rounds.
type row struct {
	Path  string
	Rates []rateRow
	// The closed-loop search: median over the rounds of each round's best
	// step's figures.
	MaxRPS, MaxConns, MiddleCoresAtMax, BusyAtMax float64
}

// summarize takes the median of every figure over the rounds.
func summarize(path string, rates []float64, ss []sample) row {
	r := row{Path: path}
	med := func(f func(sample) float64) float64 {
		xs := make([]float64, 0, len(ss))
		for _, s := range ss {
			xs = append(xs, f(s))
		}
		return stats.Median(xs)
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	for i, rate := range rates {
		at := func(f func(rateSample) float64) float64 {
			return med(func(s sample) float64 { return f(s.Rates[i]) })
		}
		r.Rates = append(r.Rates, rateRow{
			Rate:         rate,
			P50us:        at(func(s rateSample) float64 { return us(s.P50) }),
			P99us:        at(func(s rateSample) float64 { return us(s.P99) }),
			MiddleVCPU:   at(func(s rateSample) float64 { return s.MiddleVCPU }),
			PathVCPU:     at(func(s rateSample) float64 { return s.PathVCPU }),
			MiddleRSSMiB: at(func(s rateSample) float64 { return s.MiddleRSSMiB }),
			MachineBusy:  at(func(s rateSample) float64 { return s.MachineBusy }),
		})
	}
	r.MaxRPS = med(func(s sample) float64 { return best(s.Steps).RPS })
	r.MaxConns = med(func(s sample) float64 { return float64(best(s.Steps).Conns) })
	r.MiddleCoresAtMax = med(func(s sample) float64 { return best(s.Steps).MiddleCores })
	r.BusyAtMax = med(func(s sample) float64 { return best(s.Steps).MachineBusy })
	return r
}

// verdict is the mesh against the two targets.
type verdict struct {
	// WaypointVCPU is the waypoint's vCPU per 1,000 req/s at each rate;
	// CPUMet: every one is within waypointVCPUTarget.
	WaypointVCPU []float64
	CPUMet       bool
	// MaxRatio is the mesh's maximum req/s ÷ the nginx path's (NaN
	// without both); MaxMet: at least 1.
	MaxRatio float64
	MaxMet   bool
	HaveMesh bool
}

func findRow(rows []row, path string) *row {
	for i := range rows {
		if rows[i].Path == path {
			return &rows[i]
		}
	}
	return nil
}

// judge rates the mesh row against the targets.
func judge(rows []row) verdict {
	v := verdict{MaxRatio: math.NaN()}
	mesh := findRow(rows, pathMesh)
	if mesh == nil {
		return v
	}
	v.HaveMesh, v.CPUMet = true, len(mesh.Rates) > 0
	for _, rr := range mesh.Rates {
		v.WaypointVCPU = append(v.WaypointVCPU, rr.MiddleVCPU)
		if rr.MiddleVCPU > waypointVCPUTarget {
			v.CPUMet = false
		}
	}
	if ng := findRow(rows, pathNginx); ng != nil && ng.MaxRPS > 0 {
		v.MaxRatio = mesh.MaxRPS / ng.MaxRPS
		v.MaxMet = v.MaxRatio >= 1
	}
	return v
}

// middleName is the middle proxy of a path, for the table.
func middleName(path string) string {
	switch path {
	case pathMesh:
		return "waypoint"
	case pathNginx:
		return "nginx http"
	}
	return "–"
}

// writeTable renders rows and v as Markdown (for the log, and to paste into
// docs/benchmarks.md).
func writeTable(w io.Writer, rows []row, v verdict) {
	plain := findRow(rows, pathPlain)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "| req/s\t| path\t| p50 µs\t| p99 µs\t| added p50 µs\t| added p99 µs\t| middle proxy vCPU per 1k req/s\t| path vCPU per 1k req/s\t| middle RSS MiB\t| machine busy, vCPU\t|")
	fmt.Fprintln(tw, "|---\t|---\t|---\t|---\t|---\t|---\t|---\t|---\t|---\t|---\t|")
	var rates []float64
	for _, r := range rows {
		for _, rr := range r.Rates {
			if !slices.Contains(rates, rr.Rate) {
				rates = append(rates, rr.Rate)
			}
		}
	}
	for _, rate := range rates {
		var base *rateRow
		if plain != nil {
			for i := range plain.Rates {
				if plain.Rates[i].Rate == rate {
					base = &plain.Rates[i]
				}
			}
		}
		for _, r := range rows {
			for _, rr := range r.Rates {
				if rr.Rate != rate {
					continue
				}
				added50, added99, mid, path, rss := "–", "–", "–", "–", "–"
				if r.Path != pathPlain {
					if base != nil {
						added50, added99 = fmt.Sprintf("%.0f", rr.P50us-base.P50us), fmt.Sprintf("%.0f", rr.P99us-base.P99us)
					}
					mid = fmt.Sprintf("%.3f (%s)", rr.MiddleVCPU, middleName(r.Path))
					path, rss = fmt.Sprintf("%.3f", rr.PathVCPU), fmt.Sprintf("%.1f", rr.MiddleRSSMiB)
				}
				fmt.Fprintf(tw, "| %.0f\t| %s\t| %.0f\t| %.0f\t| %s\t| %s\t| %s\t| %s\t| %s\t| %.2f\t|\n",
					rate, r.Path, rr.P50us, rr.P99us, added50, added99, mid, path, rss, rr.MachineBusy)
			}
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "| path\t| max req/s (closed loop)\t| at conns\t| middle proxy vCPU at max\t| machine busy at max, vCPU\t|")
	fmt.Fprintln(tw, "|---\t|---\t|---\t|---\t|---\t|")
	for _, r := range rows {
		mid := "–"
		if r.Path != pathPlain {
			mid = fmt.Sprintf("%.2f (%s)", r.MiddleCoresAtMax, middleName(r.Path))
		}
		fmt.Fprintf(tw, "| %s\t| %.0f\t| %.0f\t| %s\t| %.2f\t|\n", r.Path, r.MaxRPS, r.MaxConns, mid, r.BusyAtMax)
	}
	tw.Flush()
	if !v.HaveMesh {
		return
	}
	mesh := findRow(rows, pathMesh)
	var at []string
	for i, c := range v.WaypointVCPU {
		at = append(at, fmt.Sprintf("%.3f at %.0f req/s", c, mesh.Rates[i].Rate))
	}
	fmt.Fprintf(w, "\nwaypoint vCPU per 1,000 req/s: %s [target ≤ %.2f at every rate: %s]\n",
		strings.Join(at, ", "), waypointVCPUTarget, metStr(v.CPUMet))
	if math.IsNaN(v.MaxRatio) {
		fmt.Fprintln(w, "max req/s mesh ÷ nginx: no nginx row [target ≥ 1.0: not judged]")
		return
	}
	fmt.Fprintf(w, "max req/s mesh ÷ nginx: %.0f ÷ %.0f = %.2f× [target ≥ 1.0: %s]\n",
		mesh.MaxRPS, findRow(rows, pathNginx).MaxRPS, v.MaxRatio, metStr(v.MaxMet))
}

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
