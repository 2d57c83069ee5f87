package report

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/bench/tlscheck"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update to accept):\n--- got ---\n%s--- want ---\n%s", path, got, want)
	}
}

func okChecks(n int) []tlscheck.Check {
	cs := make([]tlscheck.Check, n)
	for i := range cs {
		cs[i] = tlscheck.Check{Name: "check", OK: true}
	}
	return cs
}

func path(name string, up, down, cpu, p50, p99 float64) Path {
	p := Path{
		Name: name, Status: StatusOK,
		Upload:   &Bulk{Bytes: 1e9, RunsMBps: []float64{up}, MedianMBps: up},
		Download: &Bulk{Bytes: 1e9, RunsMBps: []float64{down}, MedianMBps: down},
		Latency:  &Latency{Count: 10000, P50Us: p50, P90Us: p50 + 10, P99Us: p99, P999Us: p99 * 2, MaxUs: p99 * 3},
	}
	if cpu > 0 {
		p.CPU = &CPU{UploadSeconds: cpu, DownloadSeconds: cpu, Bytes: 2e9, SecondsPerGB: cpu}
		p.Checks = okChecks(6)
	}
	return p
}

func sampleReport() *Report {
	r := &Report{
		Meta: Meta{Started: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), GoVersion: "go1.26.8", NumCPU: 2, GOMAXPROCS: 2},
		Paths: []Path{
			path("direct", 3000, 3200, 0, 120, 210),
			path("stunnel", 530, 480, 2.80, 340, 520),
			{Name: "haproxy", Status: StatusFailed, Error: "proxies: haproxy-server exited before listening on 127.0.0.1:1234: exit status 1",
				LogTail: "==> /tmp/x/haproxy-server.out <==\n[ALERT] parsing [haproxy-server.cfg:3]: unknown keyword 'tune.bufsize'"},
			path("nginx", 760, 790, 1.95, 290, 450),
			path("hbone", 700, 820, 1.90, 300, 430),
		},
	}
	r.Paths[4].Checks[2] = tlscheck.Check{Name: "server refuses TLS 1.2", Detail: "ACCEPTED: TLS 1.2"}
	r.Ratios = ComputeRatios(r.Paths)
	return r
}

func TestWriteTable_Golden(t *testing.T) {
	var b bytes.Buffer
	if err := WriteTable(&b, sampleReport()); err != nil {
		t.Fatal(err)
	}
	golden(t, "table.golden", b.Bytes())
}

func TestWriteChecks_Golden(t *testing.T) {
	var b bytes.Buffer
	r := sampleReport()
	r.Paths = r.Paths[2:4]
	r.Paths[1].Checks = []tlscheck.Check{{Name: "server refuses a client without a certificate", OK: true, Detail: "refused: EOF"}}
	WriteChecks(&b, r)
	golden(t, "checks.golden", b.Bytes())
}

func TestComputeRatios_BestCPairPerMetric(t *testing.T) {
	r := sampleReport()
	want := map[string]struct {
		best  string
		ratio float64
	}{
		"upload_mbps":        {"nginx", 700.0 / 760},
		"download_mbps":      {"nginx", 820.0 / 790},
		"cpu_seconds_per_gb": {"nginx", 1.90 / 1.95},
		"p50_us":             {"nginx", 300.0 / 290},
		"p99_us":             {"nginx", 430.0 / 450},
	}
	if len(r.Ratios) != len(want) {
		t.Fatalf("got %d ratios, want %d: %+v", len(r.Ratios), len(want), r.Ratios)
	}
	for _, got := range r.Ratios {
		w := want[got.Metric]
		if got.BestPath != w.best || math.Abs(got.Ratio-w.ratio) > 1e-9 {
			t.Errorf("%s: best %s ratio %v, want %s %v", got.Metric, got.BestPath, got.Ratio, w.best, w.ratio)
		}
	}
}

func TestComputeRatios_IgnoresDirectAndFailedPairs(t *testing.T) {
	paths := []Path{
		path("direct", 9000, 9000, 0, 10, 20), // better than anything, but not a C pair
		path("stunnel", 500, 500, 3, 400, 600),
		path("hbone", 600, 600, 2, 300, 500),
	}
	failed := path("nginx", 5000, 5000, 0.1, 1, 2)
	failed.Status = StatusFailed
	paths = append(paths, failed)
	for _, r := range ComputeRatios(paths) {
		if r.BestPath != "stunnel" {
			t.Errorf("%s compared with %s, want stunnel", r.Metric, r.BestPath)
		}
	}
}

func TestComputeRatios_NoHBONE(t *testing.T) {
	paths := []Path{path("stunnel", 500, 500, 3, 400, 600)}
	if got := ComputeRatios(paths); got != nil {
		t.Errorf("ratios without hbone: %+v", got)
	}
	hb := path("hbone", 1, 1, 1, 1, 1)
	hb.Status = StatusFailed
	if got := ComputeRatios(append(paths, hb)); got != nil {
		t.Errorf("ratios with failed hbone: %+v", got)
	}
}

func TestWriteJSON_RoundTrips(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	if err := WriteJSON(&b, r); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Paths) != 5 || back.Paths[3].Upload.MedianMBps != 760 || back.Paths[2].Status != StatusFailed ||
		len(back.Ratios) != 5 || back.Paths[4].Checks[2].OK {
		t.Errorf("round trip lost data: %+v", back)
	}
}

func TestMerge_PoolsRoundsAndKeepsFailure(t *testing.T) {
	ok := func(up, p99 float64, cpu float64) Path {
		return Path{Name: "hbone", Status: StatusOK,
			Upload:  &Bulk{Bytes: 100, RunsMBps: []float64{up}, MedianMBps: up},
			CPU:     &CPU{UploadSeconds: cpu, Bytes: 1e9},
			Latency: &Latency{Count: 10, P50Us: p99 / 2, P99Us: p99}}
	}
	m := Merge([]Path{ok(700, 500, 1), ok(900, 400, 2), ok(800, 600, 3)})
	if m.Upload.MedianMBps != 800 || len(m.Upload.RunsMBps) != 3 {
		t.Errorf("upload = %+v, want median 800 of 3 runs", m.Upload)
	}
	if m.CPU.SecondsPerGB != 2 {
		t.Errorf("cpu = %+v, want 2 s/GB", m.CPU)
	}
	if m.Latency.P99Us != 500 || m.Latency.Count != 30 {
		t.Errorf("latency = %+v, want median p99 500 over 30 requests", m.Latency)
	}
	failed := Merge([]Path{ok(700, 500, 1), {Name: "hbone", Status: "failed", Error: "boom"}})
	if failed.Status != "failed" || failed.Error != "boom" {
		t.Errorf("merged = %s %q, want the failure kept", failed.Status, failed.Error)
	}
}
