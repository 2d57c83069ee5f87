package procbench

import (
	"context"
	"errors"
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
	"github.com/ambientmesh/ambient/bench/tlscheck"
	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/testenv"
)

// Paths of BenchmarkPodToPod_MeshVsCProxies besides the C pairs, in table
// order.
const (
	pathPlain = "plain"
	pathMesh  = "mesh"
)

// backendPort is where the bench/load backend listens in the server pod.
const backendPort = 9000

// runBackend is the server pod's app for the pod-to-pod comparison: the
// bench/load backend (discards uploads, generates downloads, echoes), until
// SIGTERM.
func runBackend(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
	be, err := load.NewBackend(load.BackendConfig{Listener: ln})
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

// podBenchConfig sizes the comparison; every field has a PROCBENCH_* knob.
type podBenchConfig struct {
	Rounds    int           // PROCBENCH_ROUNDS: interleaved passes over the paths
	BulkBytes int64         // PROCBENCH_BULK_MIB: bytes per single-stream transfer
	WriteSize int           // bulk write and read size
	Rate      float64       // requests per second of the latency run
	Duration  time.Duration // PROCBENCH_LATENCY_SECONDS: measured latency period
	Conns     int           // latency connections
	Size      int           // request and response size
	Warmup    int           // unmeasured round trips per latency connection
	Pairs     []string      // PROCBENCH_PAIRS: C pairs to compare (default all three)
	// PROCBENCH_WARMUP_SECONDS: an unmeasured run at Rate before the
	// measured one, on every path alike (0: none).
	WarmupRun time.Duration
}

func podBenchConfigFromEnv(b *testing.B) podBenchConfig {
	cfg := podBenchConfig{Rounds: 3, BulkBytes: 1 << 30, WriteSize: 256 << 10, Rate: 1000, Duration: 5 * time.Second,
		Conns: 8, Size: 1024, Warmup: 20, WarmupRun: time.Second, Pairs: []string{proxies.Stunnel, proxies.HAProxy, proxies.Nginx}}
	num := func(name string, set func(int)) {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				b.Fatalf("%s=%q: want a positive integer", name, v)
			}
			set(n)
		}
	}
	num("PROCBENCH_ROUNDS", func(n int) { cfg.Rounds = n })
	num("PROCBENCH_BULK_MIB", func(n int) { cfg.BulkBytes = int64(n) << 20 })
	num("PROCBENCH_LATENCY_SECONDS", func(n int) { cfg.Duration = time.Duration(n) * time.Second })
	if v := os.Getenv("PROCBENCH_WARMUP_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			b.Fatalf("PROCBENCH_WARMUP_SECONDS=%q: want a number of seconds", v)
		}
		cfg.WarmupRun = time.Duration(n) * time.Second
	}
	if v := os.Getenv("PROCBENCH_PAIRS"); v != "" {
		cfg.Pairs = strings.Split(v, ",")
	}
	return cfg
}

// requireCPairs returns the pairs whose executables (and nginx's stream
// module) are installed. A missing one fails the benchmark under CI=true,
// and is skipped with a message otherwise.
func requireCPairs(b *testing.B, want []string) []string {
	tools := proxies.DefaultTools()
	need := map[string]string{proxies.Stunnel: tools.Stunnel, proxies.HAProxy: tools.HAProxy, proxies.Nginx: tools.Nginx}
	var have []string
	for _, name := range want {
		bin, ok := need[name]
		if !ok {
			b.Fatalf("PROCBENCH_PAIRS: unknown pair %q (want stunnel, haproxy, nginx)", name)
		}
		_, err := exec.LookPath(bin)
		if err == nil && name == proxies.Nginx {
			_, err = os.Stat(proxies.NginxStreamModule)
		}
		if err != nil {
			msg := fmt.Sprintf("C pair %s not available (%v): install the Debian packages with `hack/install-deps.sh bench`", name, err)
			if os.Getenv("CI") == "true" {
				b.Fatal(msg + "; CI=true forbids skipping it")
			}
			b.Log("skipping " + msg)
			continue
		}
		have = append(have, name)
	}
	if len(have) == 0 {
		b.Skip("no C TLS proxy pair installed: nothing to compare the mesh with (hack/install-deps.sh bench)")
	}
	return have
}

// podBench is the state of one comparison run.
type podBench struct {
	*fixture
	cfg     podBenchConfig
	certs   string // bench/certdir layout, minted by the mesh's CA
	foreign string // the same from a foreign CA, for the TLS checks
	dest    string // the backend in the server pod
}

// BenchmarkPodToPod_MeshVsCProxies compares, over one netns topology and in
// one run, pod → pod across the two nodes: plain (pods not enrolled), mesh
// (ztunnel on both nodes) and each C TLS proxy pair (client side in node
// 1's namespace, server side in node 2's, mutual TLS 1.3 with certs from the
// mesh's CA). Per path: single-stream bulk throughput both ways, p50/p99 of
// 1 KB request/response at a fixed 1,000 req/s (open loop), CPU of the
// proxy processes per 1,000 req/s and their RSS. Paths are interleaved over
// rounds; medians are reported. See docs/benchmarks.md for the method.
func BenchmarkPodToPod_MeshVsCProxies(b *testing.B) {
	cfg := podBenchConfigFromEnv(b)
	cfg.Pairs = requireCPairs(b, cfg.Pairs)
	pb := &podBench{fixture: newFixture(b), cfg: cfg}
	if p := os.Getenv("PROCBENCH_GOMAXPROCS"); p != "" {
		pb.env = []string{"GOMAXPROCS=" + p}
	}
	pb.setup(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	paths := append([]string{pathPlain, pathMesh}, cfg.Pairs...)
	samples := map[string][]sample{}
	var failed []string
	for round := range cfg.Rounds {
		for _, path := range paths {
			start := time.Now()
			s, err := pb.runPath(ctx, b, path, round)
			if err != nil {
				b.Errorf("round %d, %s: %v", round+1, path, err)
				failed = append(failed, path)
				continue
			}
			progress("round %d/%d %-8s up %5.0f MB/s, down %5.0f MB/s, p50 %4d µs, p99 %5d µs, vCPU/1k %v, RSS MiB %v, machine busy %.2f vCPU (%.0fs)",
				round+1, cfg.Rounds, path, s.UpMBps, s.DownMBps, s.P50.Microseconds(), s.P99.Microseconds(),
				fmtFloats(s.VCPU, 3), fmtFloats(s.RSSMiB, 1), s.MachineBusy, time.Since(start).Seconds())
			samples[path] = append(samples[path], s)
		}
	}
	if len(failed) > 0 {
		b.Fatalf("paths failed: %v", failed)
	}
	var rows []row
	for _, path := range paths {
		rows = append(rows, summarize(path, samples[path]))
	}
	v := compare(rows)
	var sb strings.Builder
	writeTable(&sb, rows, v)
	// On stdout, since the testing package trims a benchmark's log to 10 lines.
	progress("pod → pod across two nodes, medians of %d interleaved rounds (%d MiB bulk each way; %d s at %.0f req/s, %d B, %d conns):\n%s",
		cfg.Rounds, cfg.BulkBytes>>20, int(cfg.Duration.Seconds()), cfg.Rate, cfg.Size, cfg.Conns, sb.String())
	for _, r := range rows {
		b.ReportMetric(r.UpMBps, r.Path+"-up-MB/s")
		b.ReportMetric(r.DownMBps, r.Path+"-down-MB/s")
		b.ReportMetric(r.P99us, r.Path+"-p99-µs")
	}
	b.ReportMetric(v.Up, "mesh/bestC-up")
	b.ReportMetric(v.Down, "mesh/bestC-down")
	b.ReportMetric(v.P99, "mesh/bestC-p99")
	b.ReportMetric(v.AddedP99, "mesh/bestC-added-p99")
	for i, c := range v.ZtunnelVCPU {
		b.ReportMetric(c, fmt.Sprintf("ztunnel-vCPU/1krps-node%d", i+1))
	}
	for i, m := range v.ZtunnelRSSMiB {
		b.ReportMetric(m, fmt.Sprintf("ztunnel-RSS-MiB-node%d", i+1))
	}
}

// progress prints a line of the comparison as it runs.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// setup mints the C pairs' certificates from the mesh's CA and starts the
// load backend in the server pod.
func (pb *podBench) setup(b *testing.B) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	pb.certs, pb.foreign = filepath.Join(pb.dir, "certs"), filepath.Join(pb.dir, "foreign-certs")
	if err := certdir.Write(pb.certs, pb.authority, td, 24*time.Hour); err != nil {
		b.Fatal(err)
	}
	foreignTD := spiffeid.RequireTrustDomainFromString("impostor.example")
	foreign, err := ca.NewSelfSigned(foreignTD, ca.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := certdir.Write(pb.foreign, foreign, foreignTD, 24*time.Hour); err != nil {
		b.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	pb.dest = pb.server.Addr(backendPort)
	start(b, pb.server.NS, []string{"PROCBENCH_BACKEND=0.0.0.0:" + strconv.Itoa(backendPort)}, self)
	waitFor(b, "load backend", func() bool {
		c, err := pb.client.Dial(context.Background(), pb.dest)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// dialFromClientPod opens the load client's connections inside the client
// pod's namespace.
func (pb *podBench) dialFromClientPod(ctx context.Context, addr string) (net.Conn, error) {
	c, err := pb.client.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// runPath measures one path once.
func (pb *podBench) runPath(ctx context.Context, b *testing.B, path string, round int) (sample, error) {
	switch path {
	case pathPlain:
		return pb.measure(ctx, pb.dest, nil)
	case pathMesh:
		pb.startMesh(b)
		defer pb.stopMesh(b)
		return pb.measure(ctx, pb.dest, []int{pb.zt[0].pid, pb.zt[1].pid})
	default:
		return pb.runCPair(ctx, path, round)
	}
}

// stopMesh stops both ztunnels and waits until the pods are no longer
// captured, so the next path runs without the mesh.
func (pb *podBench) stopMesh(b *testing.B) {
	for _, z := range pb.zt {
		z.stop()
	}
	pb.zt = nil
	for _, pod := range []*testenv.Pod{pb.client, pb.server} {
		waitFor(b, "capture removed from "+pod.Name, func() bool {
			out, err := pod.Command(context.Background(), "nft", "list", "tables").Output()
			return err == nil && !strings.Contains(string(out), "ambient")
		})
	}
}

// runCPair starts C pair name across the nodes, checks in round 0 that its
// server side does mutual TLS 1.3 only, and measures it.
func (pb *podBench) runCPair(ctx context.Context, name string, round int) (sample, error) {
	// Fixed ports inside the topology's own namespaces; a fresh pair per round.
	port := 20000 + 10*round + 2*indexOf(name)
	n1, n2 := pb.client.Node, pb.server.Node
	l := proxies.Layout{
		Dir:    filepath.Join(pb.dir, fmt.Sprintf("%s-%d", name, round)),
		Certs:  pb.certs,
		Listen: netip.AddrPortFrom(n1.Gateway, uint16(port)).String(), // node 1, as the client pod sees it
		Tunnel: netip.AddrPortFrom(n2.IP, uint16(port+1)).String(),    // node 2 on the node link
		Dest:   pb.dest,                                               // the server pod's backend
	}
	pair, err := proxies.Build(name, l, proxies.DefaultTuning(), proxies.DefaultTools())
	if err != nil {
		return sample{}, err
	}
	var running []*proxies.Running
	defer func() {
		for i := len(running) - 1; i >= 0; i-- {
			running[i].Stop()
		}
	}()
	for _, p := range []proxies.Proc{nsproc.InNS(pair.Server, n2.NS), nsproc.InNS(pair.Client, n1.NS)} {
		r, err := proxies.Start(ctx, p, 10*time.Second)
		if err != nil {
			return sample{}, err
		}
		running = append(running, r)
	}
	if round == 0 {
		var checks []tlscheck.Check
		n1.Exec(func() error {
			checks = tlscheck.Server(ctx, pair.Tunnel, tlscheck.Env{Certs: pb.certs, Foreign: pb.foreign})
			return nil
		})
		if !tlscheck.AllOK(checks) {
			return sample{}, fmt.Errorf("server side is not mutual TLS 1.3 only: %+v", checks)
		}
		progress("%s: server side in node 2 passed %d TLS checks from node 1 (%s)", name, len(checks), checks[0].Detail)
	}
	s, err := pb.measure(ctx, pair.Listen, []int{running[1].Pid(), running[0].Pid()}) // node 1's first
	for _, r := range running {
		if exited, werr := r.Exited(); exited {
			err = errors.Join(err, fmt.Errorf("%s exited during the run: %v\n%s", r.Proc.Name, werr, r.LogTail(10)))
		}
	}
	return s, err
}

func indexOf(pair string) int {
	for i, p := range []string{proxies.Stunnel, proxies.HAProxy, proxies.Nginx} {
		if p == pair {
			return i
		}
	}
	return 9
}

// measure runs the bulk transfers and the latency run from the client pod
// to addr. groups are the process groups of the proxies on the path (node
// 1's first), whose CPU time over the latency run and RSS after it are
// recorded.
func (pb *podBench) measure(ctx context.Context, addr string, groups []int) (sample, error) {
	cfg := pb.cfg
	var s sample
	for _, dir := range []struct {
		name string
		run  func(context.Context, load.DialFunc, string, int64, int) (load.BulkResult, error)
		out  *float64
	}{{"upload", load.UploadVia, &s.UpMBps}, {"download", load.DownloadVia, &s.DownMBps}} {
		tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		r, err := dir.run(tctx, pb.dialFromClientPod, addr, cfg.BulkBytes, cfg.WriteSize)
		cancel()
		if err != nil {
			return s, fmt.Errorf("%s: %w", dir.name, err)
		}
		*dir.out = r.MBps()
	}

	if cfg.WarmupRun > 0 {
		wctx, cancel := context.WithTimeout(ctx, cfg.WarmupRun+time.Minute)
		_, err := load.Latency(wctx, load.LatencyConfig{
			Addr: addr, Rate: cfg.Rate, Duration: cfg.WarmupRun, Conns: cfg.Conns, Size: cfg.Size,
			Dial: pb.dialFromClientPod,
		})
		cancel()
		if err != nil {
			return s, fmt.Errorf("latency warm-up: %w", err)
		}
	}
	cpu := func() ([]time.Duration, error) {
		out := make([]time.Duration, len(groups))
		for i, g := range groups {
			d, err := proxies.GroupCPU(g)
			if err != nil {
				return nil, err
			}
			out[i] = d
		}
		return out, nil
	}
	var cpu0 []time.Duration
	var cpuErr error
	var busy0 map[int]time.Duration
	var t0 time.Time
	lctx, cancel := context.WithTimeout(ctx, cfg.Duration+2*time.Minute)
	defer cancel()
	lr, err := load.Latency(lctx, load.LatencyConfig{
		Addr: addr, Rate: cfg.Rate, Duration: cfg.Duration, Conns: cfg.Conns, Size: cfg.Size, Warmup: cfg.Warmup,
		Dial:    pb.dialFromClientPod,
		Started: func() { cpu0, cpuErr = cpu(); busy0, t0 = proxies.CPUByProcess(), time.Now() },
	})
	if err != nil {
		return s, fmt.Errorf("latency: %w", err)
	}
	if lr.Errors > 0 {
		return s, fmt.Errorf("latency: %d of %d requests failed", lr.Errors, lr.Sent)
	}
	s.MachineBusy = proxies.BusyBetween(busy0, proxies.CPUByProcess()).Seconds() / time.Since(t0).Seconds()
	cpu1, err := cpu()
	if err = errors.Join(cpuErr, err); err != nil {
		return s, fmt.Errorf("cpu accounting: %w", err)
	}
	s.P50, s.P99 = lr.Summary.P50, lr.Summary.P99
	// CPU-seconds per 1,000 requests: at 1,000 req/s, vCPU per 1,000 req/s.
	for i := range groups {
		s.VCPU = append(s.VCPU, (cpu1[i]-cpu0[i]).Seconds()/(float64(lr.Sent)/1000))
		rss, err := proxies.GroupRSSMiB(groups[i])
		if err != nil {
			return s, err
		}
		s.RSSMiB = append(s.RSSMiB, rss)
	}
	return s, nil
}
