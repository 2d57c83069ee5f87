package procbench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/ambientmesh/ambient/bench/stats"
)

// sample is one path measured once.
type sample struct {
	UpMBps, DownMBps float64
	P50, P99         time.Duration
	// Per proxy process group on the path, node 1's first (none for plain):
	VCPU   []float64 // CPU-seconds per 1,000 requests = vCPU per 1,000 req/s
	RSSMiB []float64 // VmRSS after the latency run
	// MachineBusy is the CPU of every process on the machine during the
	// latency run, in vCPU: the path, the load client, the backend and any
	// other work (a noise indicator; see busyBetween).
	MachineBusy float64
}

// row is one path's medians over the rounds.
type row struct {
	Path             string
	UpMBps, DownMBps float64
	P50us, P99us     float64
	VCPU, RSSMiB     []float64 // per side, node 1's first
	MachineBusy      float64   // vCPU, during the latency run
}

// VCPUTotal is the CPU of both sides.
func (r row) VCPUTotal() float64 {
	var t float64
	for _, c := range r.VCPU {
		t += c
	}
	return t
}

// summarize takes the median of every figure over the rounds (per side for
// CPU and RSS).
func summarize(path string, ss []sample) row {
	r := row{Path: path}
	col := func(f func(sample) float64) float64 {
		var xs []float64
		for _, s := range ss {
			xs = append(xs, f(s))
		}
		return stats.Median(xs)
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	r.UpMBps = col(func(s sample) float64 { return s.UpMBps })
	r.DownMBps = col(func(s sample) float64 { return s.DownMBps })
	r.P50us = col(func(s sample) float64 { return us(s.P50) })
	r.P99us = col(func(s sample) float64 { return us(s.P99) })
	r.MachineBusy = col(func(s sample) float64 { return s.MachineBusy })
	if len(ss) > 0 {
		for i := range ss[0].VCPU {
			r.VCPU = append(r.VCPU, col(func(s sample) float64 { return s.VCPU[i] }))
			r.RSSMiB = append(r.RSSMiB, col(func(s sample) float64 { return s.RSSMiB[i] }))
		}
	}
	return r
}

// ztunnelVCPUTarget is the bound on each ztunnel's CPU per 1,000 req/s.
const ztunnelVCPUTarget = 0.06

// verdict is mesh ÷ the best C pair per column, and ztunnel against the
// issue's targets.
type verdict struct {
	BestUp, BestDown, BestP99 string  // the best C pair of each column
	Up, Down                  float64 // mesh ÷ best C throughput (≥ 1 is the target)
	P99                       float64 // mesh p99 ÷ best C p99
	// AddedP99 is (mesh p99 − plain p99) ÷ (best C p99 − plain p99): the
	// latency each adds to the pod-to-pod path (≤ 1.2 is the target).
	AddedP99      float64
	ZtunnelVCPU   []float64 // per node
	ZtunnelRSSMiB []float64 // per node
}

// compare finds the best C pair per column (highest throughput, lowest p99)
// among rows other than plain and mesh, and rates mesh against it.
func compare(rows []row) verdict {
	var v verdict
	var plain, mesh *row
	var cs []row
	for i := range rows {
		switch rows[i].Path {
		case pathPlain:
			plain = &rows[i]
		case pathMesh:
			mesh = &rows[i]
		default:
			cs = append(cs, rows[i])
		}
	}
	if mesh == nil || len(cs) == 0 {
		return v
	}
	best := func(better func(a, b row) bool) row {
		b := cs[0]
		for _, r := range cs[1:] {
			if better(r, b) {
				b = r
			}
		}
		return b
	}
	up := best(func(a, b row) bool { return a.UpMBps > b.UpMBps })
	down := best(func(a, b row) bool { return a.DownMBps > b.DownMBps })
	p99 := best(func(a, b row) bool { return a.P99us < b.P99us })
	v.BestUp, v.BestDown, v.BestP99 = up.Path, down.Path, p99.Path
	v.Up, v.Down, v.P99 = ratio(mesh.UpMBps, up.UpMBps), ratio(mesh.DownMBps, down.DownMBps), ratio(mesh.P99us, p99.P99us)
	v.AddedP99 = math.NaN()
	if plain != nil {
		v.AddedP99 = ratio(mesh.P99us-plain.P99us, p99.P99us-plain.P99us)
	}
	v.ZtunnelVCPU, v.ZtunnelRSSMiB = slices.Clone(mesh.VCPU), slices.Clone(mesh.RSSMiB)
	return v
}

// ratio is a ÷ b, or NaN when b is not positive (e.g. a C pair that added
// no latency over plain).
func ratio(a, b float64) float64 {
	if b <= 0 {
		return math.NaN()
	}
	return a / b
}

// writeTable renders rows and v for the benchmark log (and, pasted, for
// docs/benchmarks.md: the rows are Markdown).
func writeTable(w io.Writer, rows []row, v verdict) {
	var plainP99 float64
	for _, r := range rows {
		if r.Path == pathPlain {
			plainP99 = r.P99us
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "| path\t| up MB/s\t| down MB/s\t| p50 µs\t| p99 µs\t| added p99 µs\t| vCPU per 1k req/s (node 1 + node 2)\t| RSS MiB (node 1 / node 2)\t| machine busy, vCPU\t|")
	fmt.Fprintln(tw, "|---\t|---\t|---\t|---\t|---\t|---\t|---\t|---\t|---\t|")
	for _, r := range rows {
		cpu, rss, added := "–", "–", "–"
		if len(r.VCPU) > 0 {
			cpu = fmt.Sprintf("%.3f (%s)", r.VCPUTotal(), strings.Join(fmtFloats(r.VCPU, 3), " + "))
			rss = strings.Join(fmtFloats(r.RSSMiB, 1), " / ")
		}
		if r.Path != pathPlain {
			added = fmt.Sprintf("%.0f", r.P99us-plainP99)
		}
		fmt.Fprintf(tw, "| %s\t| %.0f\t| %.0f\t| %.0f\t| %.0f\t| %s\t| %s\t| %s\t| %.2f\t|\n",
			r.Path, r.UpMBps, r.DownMBps, r.P50us, r.P99us, added, cpu, rss, r.MachineBusy)
	}
	tw.Flush()
	if v.BestUp == "" {
		return
	}
	fmt.Fprintf(w, "mesh ÷ best C: upload %.2f× (%s), download %.2f× (%s) [target ≥ 1.0]; p99 %.2f×, added p99 %.2f× (%s) [target ≤ 1.2]\n",
		v.Up, v.BestUp, v.Down, v.BestDown, v.P99, v.AddedP99, v.BestP99)
	met := "met"
	for _, c := range v.ZtunnelVCPU {
		if c > ztunnelVCPUTarget {
			met = "NOT met"
		}
	}
	fmt.Fprintf(w, "ztunnel vCPU per 1,000 req/s: %s (node 1 / node 2) [target ≤ %.2f each: %s]; RSS %s MiB\n",
		strings.Join(fmtFloats(v.ZtunnelVCPU, 3), " / "), ztunnelVCPUTarget, met, strings.Join(fmtFloats(v.ZtunnelRSSMiB, 1), " / "))
}

func fmtFloats(xs []float64, prec int) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = fmt.Sprintf("%.*f", prec, x)
	}
	return out
}

func TestCompare_RatesMeshAgainstTheBestCPairPerColumn(t *testing.T) {
	rows := []row{
		{Path: pathPlain, UpMBps: 3000, DownMBps: 3000, P50us: 100, P99us: 200},
		{Path: pathMesh, UpMBps: 800, DownMBps: 600, P50us: 200, P99us: 350, VCPU: []float64{0.05, 0.07}, RSSMiB: []float64{14, 15}},
		{Path: "stunnel", UpMBps: 500, DownMBps: 700, P50us: 300, P99us: 500, VCPU: []float64{0.1, 0.1}, RSSMiB: []float64{5, 5}},
		{Path: "haproxy", UpMBps: 640, DownMBps: 500, P50us: 250, P99us: 320, VCPU: []float64{0.1, 0.1}, RSSMiB: []float64{5, 5}},
	}
	v := compare(rows)
	if v.BestUp != "haproxy" || v.BestDown != "stunnel" || v.BestP99 != "haproxy" {
		t.Errorf("best = %s/%s/%s, want haproxy/stunnel/haproxy", v.BestUp, v.BestDown, v.BestP99)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	if !near(v.Up, 1.25) || !near(v.Down, 600.0/700) || !near(v.P99, 350.0/320) || !near(v.AddedP99, 150.0/120) {
		t.Errorf("ratios = %+v", v)
	}
	if !slices.Equal(v.ZtunnelVCPU, []float64{0.05, 0.07}) {
		t.Errorf("ztunnel vCPU = %v", v.ZtunnelVCPU)
	}
	var sb strings.Builder
	writeTable(&sb, rows, v)
	for _, want := range []string{"| mesh ", "0.120 (0.050 + 0.070)", "added p99 1.25× (haproxy)", "NOT met"} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, sb.String())
		}
	}
}

func TestCompare_NoCPairNoVerdict(t *testing.T) {
	if v := compare([]row{{Path: pathPlain}, {Path: pathMesh}}); v.BestUp != "" {
		t.Errorf("verdict without C pairs: %+v", v)
	}
}

func TestSummarize_MediansPerColumnAndSide(t *testing.T) {
	ss := []sample{
		{UpMBps: 1, DownMBps: 9, P50: 100 * time.Microsecond, P99: 900 * time.Microsecond, VCPU: []float64{1, 5}, RSSMiB: []float64{10, 50}},
		{UpMBps: 3, DownMBps: 7, P50: 300 * time.Microsecond, P99: 700 * time.Microsecond, VCPU: []float64{3, 7}, RSSMiB: []float64{30, 70}},
		{UpMBps: 2, DownMBps: 8, P50: 200 * time.Microsecond, P99: 800 * time.Microsecond, VCPU: []float64{2, 6}, RSSMiB: []float64{20, 60}},
	}
	r := summarize(pathMesh, ss)
	if r.UpMBps != 2 || r.DownMBps != 8 || r.P50us != 200 || r.P99us != 800 ||
		!slices.Equal(r.VCPU, []float64{2, 6}) || !slices.Equal(r.RSSMiB, []float64{20, 60}) {
		t.Errorf("summarize = %+v", r)
	}
}
