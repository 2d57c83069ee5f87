package procbench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/bench/certdir"
	"github.com/ambientmesh/ambient/bench/load"
	"github.com/ambientmesh/ambient/bench/nsproc"
	"github.com/ambientmesh/ambient/bench/proxies"
	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/testenv"
)

// backendEnv makes the test binary, re-executed in the server pod, the
// HTTP backend listening on the variable's address.
const backendEnv = "PROCBENCH_HTTP_BACKEND"

// TestMain doubles as the server pod's app.
func TestMain(m *testing.M) {
	if addr := os.Getenv(backendEnv); addr != "" {
		runBackend(addr)
		return
	}
	os.Exit(m.Run())
}

// runBackend serves bench/load's HTTP/1.1 echo backend until SIGTERM.
func runBackend(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
	be, err := load.NewHTTPBackend(load.HTTPBackendConfig{Listener: ln})
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := be.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
}

// wpBench is the state of one benchmark run.
type wpBench struct {
	cfg                  config
	topo                 *testenv.Topology
	client, server, wpod *testenv.Pod
	dir                  string
	caCert, caKey        string // the mesh CA, for the ztunnels' and the waypoint's in-process signers
	meshCfg              string // meshYAML, the --local-config of all three
	certs, foreign       string // bench/certdir layouts from the mesh CA and from a foreign one
	ztunnelBin, wpBin    string
	backend              string // the HTTP backend in the server pod
}

// requireNginx fails (CI=true) or skips the benchmark without nginx and its
// stream module.
func requireNginx(b *testing.B) {
	_, err := exec.LookPath(proxies.DefaultTools().Nginx)
	if err == nil {
		_, err = os.Stat(proxies.NginxStreamModule)
	}
	if err != nil {
		msg := fmt.Sprintf("nginx is not available (%v): install the Debian packages with `hack/install-deps.sh bench`", err)
		if os.Getenv("CI") == "true" {
			b.Fatal(msg + "; CI=true forbids skipping")
		}
		b.Skip(msg)
	}
}

// setup builds the topology (3 nodes, one pod each: client on node 1,
// server on node 2, the waypoint's pod on node 3), the certificates, the
// binaries and the mesh config, and starts the backend.
func setup(b *testing.B, cfg config) *wpBench {
	testenv.RequireRoot(b)
	wb := &wpBench{cfg: cfg, dir: b.TempDir()}
	if cfg.Keep != "" {
		// Configs, logs and flow logs stay for a look afterwards.
		wb.dir = filepath.Join(cfg.Keep, time.Now().Format("20060102-150405"))
		if err := os.MkdirAll(wb.dir, 0o755); err != nil {
			b.Fatal(err)
		}
		progress("keeping configs and logs in %s", wb.dir)
	}
	wb.topo = testenv.NewTopology(b, testenv.Spec{Nodes: 3, PodsPerNode: 1})
	wb.client, wb.server, wb.wpod = wb.topo.Pod(1, 1), wb.topo.Pod(2, 1), wb.topo.Pod(3, 1)

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		b.Fatal(err)
	}
	certPEM, keyPEM, err := authority.MarshalPEM()
	if err != nil {
		b.Fatal(err)
	}
	wb.caCert, wb.caKey, wb.meshCfg = filepath.Join(wb.dir, "ca.pem"), filepath.Join(wb.dir, "ca-key.pem"), filepath.Join(wb.dir, "mesh.yaml")
	mesh := meshYAML(meshAddrs{Client: wb.client.IP, Server: wb.server.IP, Waypoint: wb.wpod.IP,
		ClientNode: wb.client.Node.Index, ServerNode: wb.server.Node.Index, WaypointNode: wb.wpod.Node.Index})
	for path, data := range map[string][]byte{wb.caCert: certPEM, wb.caKey: keyPEM, wb.meshCfg: []byte(mesh)} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	wb.certs, wb.foreign = filepath.Join(wb.dir, "certs"), filepath.Join(wb.dir, "foreign-certs")
	if err := certdir.Write(wb.certs, authority, td, 24*time.Hour); err != nil {
		b.Fatal(err)
	}
	foreignTD := spiffeid.RequireTrustDomainFromString("impostor.example")
	foreign, err := ca.NewSelfSigned(foreignTD, ca.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := certdir.Write(wb.foreign, foreign, foreignTD, 24*time.Hour); err != nil {
		b.Fatal(err)
	}

	start := time.Now()
	wb.ztunnelBin, wb.wpBin = filepath.Join(wb.dir, "ztunnel"), filepath.Join(wb.dir, "waypoint")
	for pkg, out := range map[string]string{"./cmd/ztunnel": wb.ztunnelBin, "./cmd/waypoint": wb.wpBin} {
		if err := nsproc.GoBuild(pkg, out); err != nil {
			b.Fatal(err)
		}
	}
	progress("built cmd/ztunnel and cmd/waypoint (%.0fs)", time.Since(start).Seconds())

	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	wb.backend = netip.AddrPortFrom(wb.server.IP, backendPort).String()
	be, err := proxies.Start(context.Background(), nsproc.InNS(proxies.Proc{
		Name: "backend", Argv: []string{self, "-test.run=^$"},
		Env:   []string{backendEnv + "=0.0.0.0:" + strconv.Itoa(backendPort)},
		Ready: wb.backend, Log: filepath.Join(wb.dir, "backend.out"),
	}, wb.server.NS), 30*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(be.Stop)
	return wb
}

// progress prints a line as the benchmark runs (on stdout: the testing
// package trims a benchmark's log).
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// BenchmarkWaypoint_MeshVsNginx: HTTP/1.1, 1 KB request and response, from
// the client pod on node 1 to the server pod on node 2, on three paths —
// plain, mesh (ztunnel → waypoint on node 3 → ztunnel) and nginx (stream
// TLS → http reverse proxy on node 3 → stream TLS) — at fixed rates (p50,
// p99, the middle proxy's and the path's CPU per 1,000 req/s, the middle
// proxy's RSS) and closed loop (maximum req/s). Paths are interleaved over
// rounds; medians are reported, with the verdict against the issue's
// targets. See docs/benchmarks.md.
func BenchmarkWaypoint_MeshVsNginx(b *testing.B) {
	cfg, err := configFromEnv(os.Getenv)
	if err != nil {
		b.Fatal(err)
	}
	testenv.RequireRoot(b)
	requireNginx(b)
	wb := setup(b, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	samples := map[string][]sample{}
	for round := range cfg.Rounds {
		for _, path := range cfg.Paths {
			start := time.Now()
			s, err := wb.runPath(ctx, path, round)
			if err != nil {
				b.Fatalf("round %d, %s: %v", round+1, path, err)
			}
			samples[path] = append(samples[path], s)
			progress("round %d/%d %-5s %s (%.0fs)", round+1, cfg.Rounds, path, describe(cfg, s), time.Since(start).Seconds())
		}
	}
	var rows []row
	for _, path := range cfg.Paths {
		rows = append(rows, summarize(path, cfg.Rates, samples[path]))
	}
	v := judge(rows)
	var sb strings.Builder
	writeTable(&sb, rows, v)
	progress("\nclient pod (node 1) → server pod (node 2), HTTP/1.1 keep-alive, %d B request and response; medians of %d interleaved rounds; "+
		"fixed rates %s over %d connections, %d s each; closed loop %d s per step; waypoint GOMAXPROCS %s = middle nginx workers %s, "+
		"ztunnel GOMAXPROCS %s = edge nginx workers %s:\n\n%s",
		cfg.Size, cfg.Rounds, ratesStr(cfg.Rates), cfg.Conns, int(cfg.Duration.Seconds()), int(cfg.MaxStep.Seconds()),
		goProcs(cfg.WaypointGo), nginxWorkers(cfg.WaypointGo), goProcs(cfg.ZtunnelGo), nginxWorkers(cfg.ZtunnelGo), sb.String())
	for _, r := range rows {
		for _, rr := range r.Rates {
			b.ReportMetric(rr.P99us, fmt.Sprintf("%s-p99-µs@%.0f", r.Path, rr.Rate))
			if r.Path != pathPlain {
				b.ReportMetric(rr.MiddleVCPU, fmt.Sprintf("%s-middle-vCPU/1krps@%.0f", r.Path, rr.Rate))
			}
		}
		b.ReportMetric(r.MaxRPS, r.Path+"-max-req/s")
	}
	if v.HaveMesh && !v.CPUMet {
		b.Log("waypoint CPU target not met")
	}
}

func ratesStr(rates []float64) string {
	var s []string
	for _, r := range rates {
		s = append(s, strconv.FormatFloat(r, 'f', -1, 64))
	}
	return strings.Join(s, "/") + " req/s"
}

// describe is one round of one path in a line.
func describe(cfg config, s sample) string {
	var parts []string
	for i, r := range s.Rates {
		parts = append(parts, fmt.Sprintf("%.0f/s: p50 %d p99 %d µs, middle %.3f path %.3f vCPU/1k, busy %.2f",
			cfg.Rates[i], r.P50.Microseconds(), r.P99.Microseconds(), r.MiddleVCPU, r.PathVCPU, r.MachineBusy))
	}
	var ladder []string
	for _, st := range s.Steps {
		ladder = append(ladder, fmt.Sprintf("%d:%.0f", st.Conns, st.RPS))
	}
	bst := best(s.Steps)
	var procs []string
	for _, c := range bst.ProcCores {
		procs = append(procs, fmt.Sprintf("%.2f", c))
	}
	return fmt.Sprintf("%s; max %.0f req/s at %d conns (conns:req/s %s; vCPU of the path's proxies at max %s, busy %.2f)",
		strings.Join(parts, "; "), bst.RPS, bst.Conns, strings.Join(ladder, " "), strings.Join(procs, " + "), bst.MachineBusy)
}

// goProcs names a PROCBENCH_*_PROCS value for a Go proxy.
func goProcs(n int) string {
	if n == 0 {
		return "sized to the load (--gomaxprocs auto)"
	}
	return strconv.Itoa(n)
}
