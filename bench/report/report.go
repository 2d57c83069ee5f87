// Package report holds the results of a tunnel benchmark run and renders
// them: one plain-text table for people and JSON for docs and tooling.
//
// Units: throughput in MB/s (10^6 bytes per second), CPU in CPU-seconds per
// GB (10^9 bytes) moved through the pair (user+system of both proxy
// processes, summed over upload and download runs), latency in
// microseconds. The last row compares hbone with the best C pair per column
// (hbone ÷ best): above 1 is better for throughput, below 1 is better for
// CPU and latency.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ambientmesh/ambient/bench/tlscheck"
)

// Status of a path.
const (
	StatusOK     = "ok"
	StatusFailed = "failed"
)

// Report is everything one run measured.
type Report struct {
	Meta   Meta    `json:"meta"`
	Paths  []Path  `json:"paths"`
	Ratios []Ratio `json:"ratios_hbone_vs_best_c,omitempty"`
}

// Meta describes the run.
type Meta struct {
	Started    time.Time         `json:"started"`
	GoVersion  string            `json:"go_version"`
	NumCPU     int               `json:"num_cpu"`
	GOMAXPROCS int               `json:"gomaxprocs"`
	Params     Params            `json:"params"`
	Tools      map[string]string `json:"tools,omitempty"`  // executable → version line
	Tuning     map[string]string `json:"tuning,omitempty"` // knob → value
	Dir        string            `json:"dir,omitempty"`    // kept work dir, if any
}

// Params are the load parameters.
type Params struct {
	BulkBytes       int64   `json:"bulk_bytes"`
	Repeats         int     `json:"repeats"`
	Rounds          int     `json:"rounds"`
	WriteSize       int     `json:"write_size"`
	RateRPS         float64 `json:"rate_rps"`
	LatencySeconds  float64 `json:"latency_seconds"`
	Conns           int     `json:"conns"`
	MessageSize     int     `json:"message_size"`
	WarmupPerConn   int     `json:"warmup_per_conn"`
	CipherSuite     string  `json:"cipher_suite"`
	TransferTimeout float64 `json:"transfer_timeout_seconds"`
}

// Path is the result for one row.
type Path struct {
	Name     string           `json:"name"`
	Status   string           `json:"status"`
	Error    string           `json:"error,omitempty"`
	LogTail  string           `json:"log_tail,omitempty"`
	Upload   *Bulk            `json:"upload,omitempty"`
	Download *Bulk            `json:"download,omitempty"`
	CPU      *CPU             `json:"cpu,omitempty"`
	Latency  *Latency         `json:"latency,omitempty"`
	Checks   []tlscheck.Check `json:"tls_checks,omitempty"`
}

// Bulk is a set of repeated single-stream transfers in one direction.
type Bulk struct {
	Bytes      int64     `json:"bytes_per_run"`
	RunsMBps   []float64 `json:"runs_mbps"`
	MedianMBps float64   `json:"median_mbps"`
}

// CPU is the proxy pair's CPU time over the bulk transfers.
type CPU struct {
	UploadSeconds   float64 `json:"upload_seconds"`
	DownloadSeconds float64 `json:"download_seconds"`
	Bytes           int64   `json:"bytes"`
	SecondsPerGB    float64 `json:"seconds_per_gb"`
}

// Latency is an open-loop request/response run.
type Latency struct {
	Count        int     `json:"count"`
	Errors       int     `json:"errors"`
	MeanUs       float64 `json:"mean_us"`
	P50Us        float64 `json:"p50_us"`
	P90Us        float64 `json:"p90_us"`
	P99Us        float64 `json:"p99_us"`
	P999Us       float64 `json:"p999_us"`
	MaxUs        float64 `json:"max_us"`
	MaxSendLagUs float64 `json:"max_send_lag_us"`
}

// Ratio compares hbone with the best C pair for one metric.
type Ratio struct {
	Metric       string  `json:"metric"`
	HigherBetter bool    `json:"higher_is_better"`
	HBONE        float64 `json:"hbone"`
	Best         float64 `json:"best_c"`
	BestPath     string  `json:"best_c_path"`
	Ratio        float64 `json:"ratio"`
}

const ratioRow = "hbone/best C"

// CPairs are the rows hbone is compared with.
var CPairs = []string{"stunnel", "haproxy", "nginx"}

// metric is one table column.
type metric struct {
	name         string
	header       string
	higherBetter bool
	get          func(Path) (float64, bool)
	format       string
}

var metrics = []metric{
	{"upload_mbps", "upload MB/s", true, func(p Path) (float64, bool) {
		return val(p.Upload != nil, func() float64 { return p.Upload.MedianMBps })
	}, "%.0f"},
	{"download_mbps", "download MB/s", true, func(p Path) (float64, bool) {
		return val(p.Download != nil, func() float64 { return p.Download.MedianMBps })
	}, "%.0f"},
	{"cpu_seconds_per_gb", "CPU s/GB", false, func(p Path) (float64, bool) {
		return val(p.CPU != nil && p.CPU.Bytes > 0, func() float64 { return p.CPU.SecondsPerGB })
	}, "%.2f"},
	{"p50_us", "p50 µs", false, func(p Path) (float64, bool) {
		return val(p.Latency != nil && p.Latency.Count > 0, func() float64 { return p.Latency.P50Us })
	}, "%.0f"},
	{"p99_us", "p99 µs", false, func(p Path) (float64, bool) {
		return val(p.Latency != nil && p.Latency.Count > 0, func() float64 { return p.Latency.P99Us })
	}, "%.0f"},
}

func val(ok bool, f func() float64) (float64, bool) {
	if !ok {
		return 0, false
	}
	return f(), true
}

// ComputeRatios compares the "hbone" row with the best successful C pair for
// each metric. It returns nil when hbone has no results.
func ComputeRatios(paths []Path) []Ratio {
	i := slices.IndexFunc(paths, func(p Path) bool { return p.Name == "hbone" })
	if i < 0 || paths[i].Status != StatusOK {
		return nil
	}
	hb := paths[i]
	var out []Ratio
	for _, m := range metrics {
		h, ok := m.get(hb)
		if !ok {
			continue
		}
		r := Ratio{Metric: m.name, HigherBetter: m.higherBetter, HBONE: h}
		for _, p := range paths {
			v, ok := m.get(p)
			if !ok || p.Status != StatusOK || !slices.Contains(CPairs, p.Name) {
				continue
			}
			if r.BestPath == "" || (m.higherBetter && v > r.Best) || (!m.higherBetter && v < r.Best) {
				r.Best, r.BestPath = v, p.Name
			}
		}
		if r.BestPath == "" || r.Best == 0 {
			continue
		}
		r.Ratio = h / r.Best
		out = append(out, r)
	}
	return out
}

// WriteTable renders r as the benchmark's one table, followed by failures
// and failed TLS checks.
func WriteTable(w io.Writer, r *Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	// Left-align the path column (tabwriter aligns every cell right).
	width := len(ratioRow)
	for _, p := range r.Paths {
		width = max(width, len(p.Name))
	}
	left := func(s string) string { return fmt.Sprintf("%-*s", width, s) }
	header := []string{left("path")}
	for _, m := range metrics {
		header = append(header, m.header)
	}
	header = append(header, "mTLS 1.3 checks")
	fmt.Fprintln(tw, strings.Join(header, "\t")+"\t")
	for _, p := range r.Paths {
		row := []string{left(p.Name)}
		for k, m := range metrics {
			switch v, ok := m.get(p); {
			case p.Status != StatusOK && k == 0:
				row = append(row, "FAILED")
			case ok:
				row = append(row, fmt.Sprintf(m.format, v))
			default:
				row = append(row, "-")
			}
		}
		row = append(row, checksCell(p))
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	if len(r.Ratios) > 0 {
		row := []string{left(ratioRow)}
		for _, m := range metrics {
			k := slices.IndexFunc(r.Ratios, func(x Ratio) bool { return x.Metric == m.name })
			if k < 0 {
				row = append(row, "-")
				continue
			}
			row = append(row, fmt.Sprintf("%.2fx %s", r.Ratios[k].Ratio, r.Ratios[k].BestPath))
		}
		fmt.Fprintln(tw, strings.Join(append(row, ""), "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Ratios) > 0 {
		fmt.Fprintln(w, "hbone/best C: hbone ÷ best C pair; throughput: higher is better; CPU and latency: lower is better.")
	}
	for _, p := range r.Paths {
		if p.Status != StatusOK {
			fmt.Fprintf(w, "\n%s FAILED: %s\n", p.Name, p.Error)
			if p.LogTail != "" {
				fmt.Fprintf(w, "%s", indent(p.LogTail))
			}
		}
		for _, c := range p.Checks {
			if !c.OK {
				fmt.Fprintf(w, "\n%s: TLS check failed: %s\n    %s\n", p.Name, c.Name, c.Detail)
			}
		}
	}
	return nil
}

func checksCell(p Path) string {
	if len(p.Checks) == 0 {
		return "-"
	}
	ok := 0
	for _, c := range p.Checks {
		if c.OK {
			ok++
		}
	}
	if ok == len(p.Checks) {
		return fmt.Sprintf("ok %d/%d", ok, len(p.Checks))
	}
	return fmt.Sprintf("FAIL %d/%d", ok, len(p.Checks))
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}

// WriteChecks lists every TLS check of every path.
func WriteChecks(w io.Writer, r *Report) {
	for _, p := range r.Paths {
		if p.Status != StatusOK && len(p.Checks) == 0 {
			fmt.Fprintf(w, "%s: FAILED: %s\n", p.Name, p.Error)
			continue
		}
		for _, c := range p.Checks {
			mark := "ok  "
			if !c.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(w, "%s %-8s %s\n         %s\n", mark, p.Name, c.Name, c.Detail)
		}
	}
}

// WriteJSON writes r as indented JSON.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Merge combines the runs of one path from several rounds: bulk runs are
// pooled (median of all), CPU time and bytes are summed, latency figures
// are the median of the rounds' figures. The first failed round makes the
// merged path failed.
func Merge(runs []Path) Path {
	out := Path{Name: runs[0].Name, Status: StatusOK, Checks: runs[0].Checks}
	var lat []*Latency
	for _, r := range runs {
		if r.Status != StatusOK && out.Status == StatusOK {
			out.Status, out.Error, out.LogTail = r.Status, r.Error, r.LogTail
		}
		out.Upload = mergeBulk(out.Upload, r.Upload)
		out.Download = mergeBulk(out.Download, r.Download)
		if r.CPU != nil {
			if out.CPU == nil {
				out.CPU = &CPU{}
			}
			out.CPU.UploadSeconds += r.CPU.UploadSeconds
			out.CPU.DownloadSeconds += r.CPU.DownloadSeconds
			out.CPU.Bytes += r.CPU.Bytes
		}
		if r.Latency != nil {
			lat = append(lat, r.Latency)
		}
	}
	if out.CPU != nil && out.CPU.Bytes > 0 {
		out.CPU.SecondsPerGB = (out.CPU.UploadSeconds + out.CPU.DownloadSeconds) / (float64(out.CPU.Bytes) / 1e9)
	}
	if len(lat) > 0 {
		m := *lat[0]
		pick := func(f func(*Latency) float64) float64 {
			v := make([]float64, len(lat))
			for i, l := range lat {
				v[i] = f(l)
			}
			return median(v)
		}
		m.Count, m.Errors = 0, 0
		for _, l := range lat {
			m.Count += l.Count
			m.Errors += l.Errors
		}
		m.MeanUs = pick(func(l *Latency) float64 { return l.MeanUs })
		m.P50Us = pick(func(l *Latency) float64 { return l.P50Us })
		m.P90Us = pick(func(l *Latency) float64 { return l.P90Us })
		m.P99Us = pick(func(l *Latency) float64 { return l.P99Us })
		m.P999Us = pick(func(l *Latency) float64 { return l.P999Us })
		m.MaxUs = pick(func(l *Latency) float64 { return l.MaxUs })
		out.Latency = &m
	}
	return out
}

func mergeBulk(acc, b *Bulk) *Bulk {
	if b == nil {
		return acc
	}
	if acc == nil {
		acc = &Bulk{Bytes: b.Bytes}
	}
	acc.RunsMBps = append(acc.RunsMBps, b.RunsMBps...)
	acc.MedianMBps = median(acc.RunsMBps)
	return acc
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
