// Package procbench measures ztunnel as it runs in production: one process
// per node, started from the cmd/ztunnel binary inside the node's network
// namespace, serving pods in their own namespaces. Run as root (or
// `make bench-ztunnel`):
//
//	go test -run '^$' -bench . -benchtime 1x ./ztunnel/procbench/
//
// BenchmarkPodToPod_MeshVsCProxies compares, in one run over one topology,
// pod → pod with no mesh, with ztunnel and through each C TLS proxy pair of
// bench/proxies (client side in node 1's namespace, server side in node
// 2's), with bench/load's backend and load client; the method is in
// docs/benchmarks.md. BenchmarkZtunnel_1000RPS and
// BenchmarkZtunnel_IdleConnections measure ztunnel alone.
package procbench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/bench/nsproc"
	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/testenv"
)

// TestMain doubles as the echo app when re-executed inside a pod.
func TestMain(m *testing.M) {
	if addr := os.Getenv("PROCBENCH_ECHO"); addr != "" {
		runEcho(addr)
		return
	}
	if addr := os.Getenv("PROCBENCH_BACKEND"); addr != "" {
		runBackend(addr)
		return
	}
	os.Exit(m.Run())
}

func runEcho(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 2048)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				c.Write(buf[:n])
			}
		}()
	}
}

type proc struct {
	cmd      *exec.Cmd
	pid      int
	stopOnce sync.Once
}

// stop ends the process group (SIGTERM, SIGKILL after 10 s) and waits for
// the process. It is safe to call more than once.
func (p *proc) stop() {
	p.stopOnce.Do(func() {
		syscall.Kill(-p.pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-p.pid, syscall.SIGKILL)
			<-done
		}
	})
}

// cpuSeconds is the process's user+system time so far.
func (p *proc) cpuSeconds(b *testing.B) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// rssMiB is the process's resident set.
func (p *proc) rssMiB(b *testing.B) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// start runs argv inside ns (through ip netns exec, which keeps the pid).
func start(b *testing.B, ns testenv.NS, env []string, argv ...string) *proc {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	// Pdeathsig: nothing outlives a killed benchmark to pin the namespaces.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(b.TempDir(), "out.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &proc{cmd: cmd, pid: cmd.Process.Pid}
	b.Cleanup(p.stop)
	return p
}

func buildZtunnel(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "ztunnel")
	if err := nsproc.GoBuild("./cmd/ztunnel", bin); err != nil {
		b.Fatal(err)
	}
	return bin
}

// meshConfig is the --local-config for the topology: every pod enrolled.
func meshConfig(topo *testenv.Topology) string {
	var sb strings.Builder
	sb.WriteString("workloads:\n")
	for _, n := range topo.Nodes {
		for _, p := range n.Pods {
			fmt.Fprintf(&sb, "- {uid: pod-%d-%d, name: pod-%d-%d, namespace: bench, service_account: sa-%d-%d, node: node-%d, addresses: [%q], tunnel_protocol: HBONE}\n",
				n.Index, p.Index, n.Index, p.Index, n.Index, p.Index, n.Index, p.IP)
		}
	}
	return sb.String()
}

type fixture struct {
	topo      *testenv.Topology
	zt        []*proc
	echo      *proc
	client    *testenv.Pod
	server    *testenv.Pod
	bin, dir  string
	cfg, cert string
	key       string
	env       []string // extra environment of the ztunnel processes
	authority *ca.Authority
}

func newFixture(b *testing.B) *fixture {
	testenv.RequireRoot(b)
	f := &fixture{topo: testenv.NewTopology(b, testenv.Spec{Nodes: 2, PodsPerNode: 1}), bin: buildZtunnel(b), dir: b.TempDir()}
	f.client, f.server = f.topo.Pod(1, 1), f.topo.Pod(2, 1)
	authority, err := ca.NewSelfSigned(spiffeid.RequireTrustDomainFromString("cluster.local"), ca.Options{})
	if err != nil {
		b.Fatal(err)
	}
	f.authority = authority
	certPEM, keyPEM, err := authority.MarshalPEM()
	if err != nil {
		b.Fatal(err)
	}
	f.cert, f.key, f.cfg = filepath.Join(f.dir, "ca.pem"), filepath.Join(f.dir, "ca-key.pem"), filepath.Join(f.dir, "mesh.yaml")
	for path, data := range map[string][]byte{f.cert: certPEM, f.key: keyPEM, f.cfg: []byte(meshConfig(f.topo))} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	f.echo = start(b, f.server.NS, []string{"PROCBENCH_ECHO=0.0.0.0:8080"}, self)
	waitFor(b, "echo app", func() bool {
		c, err := f.client.Dial(context.Background(), f.server.Addr(8080))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return f
}

// startMesh runs one ztunnel per node and waits until both are ready.
func (f *fixture) startMesh(b *testing.B) {
	for _, n := range f.topo.Nodes {
		p := n.Pods[0]
		z := start(b, n.NS, f.env, f.bin, "--node", fmt.Sprintf("node-%d", n.Index), "--local-config", f.cfg,
			"--ca-cert", f.cert, "--ca-key", f.key, "--flow-log", filepath.Join(f.dir, fmt.Sprintf("flows-%d.log", n.Index)),
			"--pod", fmt.Sprintf("pod-%d-%d=%s", n.Index, p.Index, p.Path), "--metrics-addr", "127.0.0.1:15020",
			"--ready-addr", "127.0.0.1:15021",
			// Stopping the mesh between rounds must leave the plain path.
			"--remove-capture-on-exit")
		f.zt = append(f.zt, z)
		hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return n.Dial(ctx, addr) },
		}}
		waitFor(b, "ztunnel ready", func() bool {
			resp, err := hc.Get("http://127.0.0.1:15021/healthz/ready")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	}
	waitFor(b, "client pod captured", func() bool {
		out, _ := f.client.Command(context.Background(), "nft", "list", "tables").Output()
		return strings.Contains(string(out), "ambient")
	})
}

// profile saves a CPU profile of node n's ztunnel from its admin port.
func (f *fixture) profile(b *testing.B, n *testenv.Node, path string, d time.Duration) {
	hc := &http.Client{Timeout: d + 10*time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return n.Dial(ctx, addr) },
	}}
	resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:15000/debug/pprof/profile?seconds=%d", int(d.Seconds())))
	if err != nil {
		b.Logf("profile: %v", err)
		return
	}
	defer resp.Body.Close()
	out, err := os.Create(path)
	if err != nil {
		b.Logf("profile: %v", err)
		return
	}
	defer out.Close()
	io.Copy(out, resp.Body)
}

// parkedConnections reads node n's ztunnel_idle_parked_connections gauge
// (-1 when it cannot be read).
func parkedConnections(n *testenv.Node) int {
	v, ok := gauges(n)["ztunnel_idle_parked_connections"]
	if !ok {
		return -1
	}
	return int(v)
}

// gauges reads node n's ztunnel metrics (unlabelled series only; empty
// when they cannot be read).
func gauges(n *testenv.Node) map[string]float64 {
	// No keep-alive: a connection left open per scrape would stay in the
	// measured process (a server goroutine and its buffers each).
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return n.Dial(ctx, addr) },
		DisableKeepAlives: true,
	}}
	resp, err := hc.Get("http://127.0.0.1:15020/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := make(map[string]float64)
	for _, line := range strings.Split(string(body), "\n") {
		name, v, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			m[name] = f
		}
	}
	return m
}

// logMemory logs where node n's ztunnel memory is, from the Go runtime's
// own statistics: live heap, heap spans in use, heap kept but free,
// goroutine stacks and goroutines.
func logMemory(b *testing.B, n *testenv.Node, when string) {
	g := gauges(n)
	mib := func(name string) float64 { return g[name] / (1 << 20) }
	b.Logf("%s %s: heap live %.1f MiB, in use %.1f MiB, idle not released %.1f MiB, stacks %.1f MiB, other runtime %.1f MiB, %d goroutines",
		n.Name, when, mib("go_memstats_heap_alloc_bytes"), mib("go_memstats_heap_inuse_bytes"),
		mib("go_memstats_heap_idle_bytes")-mib("go_memstats_heap_released_bytes"), mib("go_memstats_stack_inuse_bytes"),
		mib("go_memstats_mspan_inuse_bytes")+mib("go_memstats_mcache_inuse_bytes")+mib("go_memstats_buck_hash_sys_bytes")+
			mib("go_memstats_gc_sys_bytes")+mib("go_memstats_other_sys_bytes"),
		int(g["go_goroutines"]))
}

func waitFor(b *testing.B, what string, cond func() bool) {
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// latency sends 1 KB requests at rate/s for d over conns connections
// (open loop, measured from the scheduled time) and returns p50 and p99.
func latency(b *testing.B, f *fixture, rate int, d time.Duration, conns int) (p50, p99 time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := f.client.Dial(ctx, f.server.Addr(8080))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		cs[i] = c
	}
	msg, buf := make([]byte, 1024), make([]byte, 1024)
	for _, c := range cs { // warm up
		c.Write(msg)
		io.ReadFull(c, buf)
	}
	n := int(d.Seconds() * float64(rate))
	lat := make([]time.Duration, 0, n)
	interval := time.Second / time.Duration(rate)
	begin := time.Now()
	for i := range n {
		due := begin.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		c := cs[i%conns]
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(due))
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100]
}

// BenchmarkZtunnel_1000RPS: 1 KB request/response at 1,000 req/s pod → pod
// across the nodes, without and then with the mesh; reports the added
// latency and each ztunnel's CPU per 1,000 req/s.
func BenchmarkZtunnel_1000RPS(b *testing.B) {
	f := newFixture(b)
	if p := os.Getenv("PROCBENCH_GOMAXPROCS"); p != "" {
		f.env = []string{"GOMAXPROCS=" + p}
	}
	const rate, d = 1000, 10 * time.Second
	plain50, plain99 := latency(b, f, rate, d, 8)
	f.startMesh(b)
	latency(b, f, rate, 2*time.Second, 8) // warm the pools and certs
	cpu0 := []float64{f.zt[0].cpuSeconds(b), f.zt[1].cpuSeconds(b)}
	if dir := os.Getenv("PROCBENCH_PROFILE"); dir != "" {
		// CPU profile of node 2's ztunnel during the measurement.
		go f.profile(b, f.topo.Nodes[1], filepath.Join(dir, "ztunnel-node2.pprof"), d-time.Second)
	}
	mesh50, mesh99 := latency(b, f, rate, d, 8)
	for i, z := range f.zt {
		vcpu := (z.cpuSeconds(b) - cpu0[i]) / d.Seconds() // per 1,000 req/s, as rate is 1,000
		b.ReportMetric(vcpu, fmt.Sprintf("vCPU/1krps-node%d", i+1))
		b.ReportMetric(z.rssMiB(b), fmt.Sprintf("RSS-MiB-node%d", i+1))
	}
	b.ReportMetric(float64(plain50.Microseconds()), "plain-p50-µs")
	b.ReportMetric(float64(plain99.Microseconds()), "plain-p99-µs")
	b.ReportMetric(float64(mesh50.Microseconds()), "mesh-p50-µs")
	b.ReportMetric(float64(mesh99.Microseconds()), "mesh-p99-µs")
}

// BenchmarkZtunnel_IdleConnections holds 10,000 idle tunnelled connections
// pod → pod across the nodes and reports each ztunnel's RSS.
func BenchmarkZtunnel_IdleConnections(b *testing.B) {
	f := newFixture(b)
	if e := os.Getenv("PROCBENCH_ZTUNNEL_ENV"); e != "" {
		f.env = strings.Fields(e)
	}
	f.startMesh(b)
	rss0 := []float64{f.zt[0].rssMiB(b), f.zt[1].rssMiB(b)}
	const n = 10000
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conns := make([]*net.TCPConn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	one := []byte{1}
	for range n {
		c, err := netns.DialTCP(ctx, f.client.Path, f.server.Addr(8080))
		if err != nil {
			b.Fatalf("after %d connections: %v", len(conns), err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			b.Fatalf("after %d connections: %v", len(conns), err)
		}
	}
	// Held idle: a quiet socket is parked (no goroutine, no buffer) after
	// 2 s; wait until every connection is, on both sides.
	for i, node := range f.topo.Nodes {
		waitFor(b, fmt.Sprintf("node %d's connections parked", i+1), func() bool {
			return parkedConnections(node) >= n
		})
	}
	for i, z := range f.zt {
		b.ReportMetric(z.rssMiB(b), fmt.Sprintf("RSS-MiB-node%d", i+1))
		b.ReportMetric(rss0[i], fmt.Sprintf("RSS-MiB-node%d-before", i+1))
		logMemory(b, f.topo.Nodes[i], "at setup")
	}
	// Steady state: a collection shrinks the stacks grown while connections
	// were set up (Go does this at GC), as the runtime's periodic GC would.
	for i, n := range f.topo.Nodes {
		f.gc(b, n)
		time.Sleep(3 * time.Second)
		b.ReportMetric(f.zt[i].rssMiB(b), fmt.Sprintf("RSS-MiB-node%d-after-GC", i+1))
		logMemory(b, n, "after GC")
	}
}

// gc runs a garbage collection in node n's ztunnel (through the admin
// port's heap profile with gc=1).
func (f *fixture) gc(b *testing.B, n *testenv.Node) {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return n.Dial(ctx, addr) },
		DisableKeepAlives: true,
	}}
	resp, err := hc.Get("http://127.0.0.1:15000/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		b.Fatalf("gc: %v", err)
	}
	var sink io.Writer = io.Discard
	if dir := os.Getenv("PROCBENCH_PROFILE"); dir != "" {
		if out, err := os.Create(filepath.Join(dir, n.Name+"-heap.txt")); err == nil {
			defer out.Close()
			sink = out
		}
	}
	io.Copy(sink, resp.Body)
	resp.Body.Close()
	if dir := os.Getenv("PROCBENCH_PROFILE"); dir != "" {
		if resp, err := hc.Get("http://127.0.0.1:15000/debug/pprof/goroutine?debug=1"); err == nil {
			if out, err := os.Create(filepath.Join(dir, n.Name+"-goroutines.txt")); err == nil {
				io.Copy(out, resp.Body)
				out.Close()
			}
			resp.Body.Close()
		}
	}
}
