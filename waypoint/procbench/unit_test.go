package procbench

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/waypoint/wpconfig"
	"github.com/ambientmesh/ambient/ztunnel/localconfig"
	"github.com/ambientmesh/ambient/ztunnel/outbound"
)

// These run without root in `go test`: the pure parts of the benchmark.

func TestConfigFromEnv_DefaultsAndKnobs(t *testing.T) {
	cfg, err := configFromEnv(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rounds != 3 || !slices.Equal(cfg.Rates, []float64{500, 1000, 2000}) || !slices.Equal(cfg.Paths, allPaths) || cfg.Size != 1024 {
		t.Errorf("defaults = %+v", cfg)
	}
	env := map[string]string{
		"PROCBENCH_ROUNDS": "1", "PROCBENCH_RATES": "250, 750", "PROCBENCH_PATHS": "nginx,mesh,nginx",
		"PROCBENCH_LATENCY_SECONDS": "2", "PROCBENCH_WARMUP_SECONDS": "0", "PROCBENCH_MAX_CONNS": "2",
		"PROCBENCH_WAYPOINT_PROCS": "1",
	}
	cfg, err = configFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rounds != 1 || !slices.Equal(cfg.Rates, []float64{250, 750}) || !slices.Equal(cfg.Paths, []string{pathMesh, pathNginx}) ||
		cfg.Duration != 2*time.Second || cfg.WarmupRun != 0 || cfg.MaxLadder.Limit != 2 || cfg.MaxLadder.Start != 2 || cfg.MaxLadder.Min != 2 || cfg.WaypointGo != 1 {
		t.Errorf("with knobs = %+v", cfg)
	}
	for k, v := range map[string]string{"PROCBENCH_ROUNDS": "0", "PROCBENCH_RATES": "fast", "PROCBENCH_PATHS": "envoy", "PROCBENCH_CONNS": "x"} {
		if _, err := configFromEnv(func(key string) string {
			if key == k {
				return v
			}
			return ""
		}); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: err = %v, want one naming the variable", k, v, err)
		}
	}
}

func testAddrs() meshAddrs {
	return meshAddrs{
		Client: netip.MustParseAddr("10.244.1.2"), Server: netip.MustParseAddr("10.244.2.2"), Waypoint: netip.MustParseAddr("10.244.3.2"),
		ClientNode: 1, ServerNode: 2, WaypointNode: 3,
	}
}

// The shared local config parses for both binaries, and the client's
// ztunnel routes the server's VIP through the waypoint pod with the VIP as
// the tunnel's :authority.
func TestMeshYAML_ServiceVIPGoesThroughTheWaypoint(t *testing.T) {
	doc := []byte(meshYAML(testAddrs()))
	snap, err := localconfig.Parse(doc)
	if err != nil {
		t.Fatalf("ztunnel cannot read it: %v\n%s", err, doc)
	}
	if _, l7, err := wpconfig.Parse(doc); err != nil || len(l7.Routes) != 0 {
		t.Fatalf("waypoint cannot read it (or has routes): %v", err)
	}
	v, err := state.NewView(snap, 1)
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddrPort(serverVIP + ":80")
	rt, err := outbound.Plan(v, "", vip, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	if rt.Kind != outbound.Tunnel || rt.Waypoint.GetUid() != uidWaypoint || rt.TunnelAddr.String() != "10.244.3.2:15008" ||
		rt.Target != vip || rt.Identity.String() != "spiffe://cluster.local/ns/bench/sa/waypoint" {
		t.Errorf("route to the server VIP = %+v, want a tunnel to the waypoint pod for %s", rt, vip)
	}
	// The server pod itself (the plain path's address) has no waypoint.
	direct := netip.MustParseAddrPort("10.244.2.2:9080")
	if rt, err := outbound.Plan(v, "", direct, rand.New(rand.NewPCG(1, 2))); err != nil || rt.Waypoint != nil || rt.TunnelAddr.String() != "10.244.2.2:15008" {
		t.Errorf("route to the server pod = %+v, %v; want straight to its ztunnel", rt, err)
	}
}

func TestLadder_DoublesUntilThroughputStopsRising(t *testing.T) {
	l := ladder{Start: 4, Limit: 256, Patience: 2, MinGain: 0.03}
	rps := map[int]float64{4: 1000, 8: 1800, 16: 2000, 32: 2020, 64: 1990, 128: 5000}
	var hist []step
	for n, ok := l.next(hist); ok; n, ok = l.next(hist) {
		hist = append(hist, step{Conns: n, RPS: rps[n]})
	}
	var got []int
	for _, s := range hist {
		got = append(got, s.Conns)
	}
	if !slices.Equal(got, []int{4, 8, 16, 32, 64}) {
		t.Errorf("ladder = %v, want 4..64 (two steps within 3%% of the best end it)", got)
	}
	if b := best(hist); b.Conns != 32 || b.RPS != 2020 {
		t.Errorf("best = %+v, want the 32-connection step", b)
	}
	// Min: a dip before it does not end the search.
	hist = nil
	dip := map[int]float64{8: 3000, 16: 2900, 32: 3500, 64: 3700, 128: 3710}
	withMin := ladder{Start: 8, Min: 64, Limit: 256, Patience: 1, MinGain: 0.03}
	for n, ok := withMin.next(hist); ok; n, ok = withMin.next(hist) {
		hist = append(hist, step{Conns: n, RPS: dip[n]})
	}
	if len(hist) != 5 || best(hist).Conns != 128 {
		t.Errorf("ladder with Min 64 = %+v, want 8..128 (stopping after 128's gain under 3%%)", hist)
	}
	hist = nil
	short := ladder{Start: 4, Limit: 10, Patience: 2, MinGain: 0.03}
	for n, ok := short.next(hist); ok; n, ok = short.next(hist) {
		hist = append(hist, step{Conns: n, RPS: float64(n)})
	}
	if len(hist) != 2 || hist[1].Conns != 8 {
		t.Errorf("ladder capped at 10 = %+v, want 4 and 8", hist)
	}
}

func mkSample(p50, p99 time.Duration, mid float64, maxRPS float64) sample {
	rs := rateSample{P50: p50, P99: p99, MiddleVCPU: mid, PathVCPU: 3 * mid, MiddleRSSMiB: 20, MachineBusy: 0.5}
	return sample{Rates: []rateSample{rs, rs}, Steps: []step{{Conns: 4, RPS: maxRPS / 2}, {Conns: 8, RPS: maxRPS, MiddleCores: 0.9}}}
}

func TestSummarize_MediansPerRateAndBestStep(t *testing.T) {
	us := time.Microsecond
	r := summarize(pathMesh, []float64{500, 1000}, []sample{
		mkSample(300*us, 900*us, 0.12, 4000), mkSample(100*us, 700*us, 0.10, 5000), mkSample(200*us, 800*us, 0.20, 3000),
	})
	if len(r.Rates) != 2 || r.Rates[1].Rate != 1000 || r.Rates[0].P50us != 200 || r.Rates[0].P99us != 800 ||
		r.Rates[0].MiddleVCPU != 0.12 || math.Abs(r.Rates[0].PathVCPU-0.36) > 1e-9 {
		t.Errorf("rates = %+v", r.Rates)
	}
	if r.MaxRPS != 4000 || r.MaxConns != 8 || r.MiddleCoresAtMax != 0.9 {
		t.Errorf("max = %.0f at %.0f conns, %.2f cores; want 4000 at 8, 0.9", r.MaxRPS, r.MaxConns, r.MiddleCoresAtMax)
	}
}

func TestJudgeAndTable_TargetsAndAddedLatency(t *testing.T) {
	us := time.Microsecond
	rates := []float64{500, 1000}
	rows := []row{
		summarize(pathPlain, rates, []sample{mkSample(150*us, 300*us, 0, 9000)}),
		summarize(pathMesh, rates, []sample{mkSample(450*us, 1000*us, 0.12, 4400)}),
		summarize(pathNginx, rates, []sample{mkSample(400*us, 800*us, 0.08, 4000)}),
	}
	v := judge(rows)
	if !v.CPUMet || !v.MaxMet || math.Abs(v.MaxRatio-1.1) > 1e-9 {
		t.Errorf("verdict = %+v, want both targets met, ratio 1.1", v)
	}
	var sb strings.Builder
	writeTable(&sb, rows, v)
	out := sb.String()
	for _, want := range []string{
		"| 500   | mesh  | 450", "| 300 ", "| 700 ", // mesh p50 and added p50/p99 over plain
		"0.120 (waypoint)", "0.080 (nginx http)", "| 4400 ",
		"[target ≤ 0.15 at every rate: met]", "4400 ÷ 4000 = 1.10× [target ≥ 1.0: met]",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	rows[1] = summarize(pathMesh, rates, []sample{mkSample(450*us, 1000*us, 0.16, 3000)})
	v = judge(rows)
	sb.Reset()
	writeTable(&sb, rows, v)
	if v.CPUMet || v.MaxMet || !strings.Contains(sb.String(), "NOT met") {
		t.Errorf("a waypoint over both targets passed: %+v\n%s", v, sb.String())
	}
	if v := judge(rows[:1]); v.HaveMesh {
		t.Errorf("verdict without a mesh row: %+v", v)
	}
}
