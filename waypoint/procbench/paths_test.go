package procbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambientmesh/ambient/bench/load"
	"github.com/ambientmesh/ambient/bench/nsproc"
	"github.com/ambientmesh/ambient/bench/proxies"
	"github.com/ambientmesh/ambient/bench/tlscheck"
	"github.com/ambientmesh/ambient/internal/redirect"
	"github.com/ambientmesh/ambient/internal/testenv"
)

// onPath is what a path's measurement needs: where the client pod dials,
// and the proxy processes on the path (process groups, the client's side
// first) with the index of the middle one (-1: none).
type onPath struct {
	addr   string
	procs  []*proxies.Running
	middle int
	// perfOut, if set, is where to record a CPU profile of the middle
	// proxy during the fixed-rate runs.
	perfOut string
}

// runPath starts path's proxies (round: a fresh set each round), measures
// the path once and stops them.
func (wb *wpBench) runPath(ctx context.Context, path string, round int) (sample, error) {
	dir := filepath.Join(wb.dir, fmt.Sprintf("%s-%d", path, round+1))
	var p onPath
	var err error
	switch path {
	case pathPlain:
		if err := wb.requireUncaptured(); err != nil {
			return sample{}, err
		}
		p = onPath{addr: wb.backend, middle: -1}
	case pathMesh:
		p, err = wb.startMesh(ctx, dir)
		defer wb.stopMesh(p.procs)
	case pathNginx:
		if err := wb.requireUncaptured(); err != nil {
			return sample{}, err
		}
		p, err = wb.startNginx(ctx, dir, round)
		defer stopAll(p.procs)
	}
	if err != nil {
		return sample{}, err
	}
	if wb.cfg.Perf != "" && round == 0 && p.middle >= 0 {
		p.perfOut = filepath.Join(wb.cfg.Perf, path+"-"+p.procs[p.middle].Proc.Name+".perf.data")
	}
	s, err := wb.measure(ctx, p)
	for _, r := range p.procs {
		if exited, werr := r.Exited(); exited {
			err = errors.Join(err, fmt.Errorf("%s exited during the run: %v\n%s", r.Proc.Name, werr, r.LogTail(10)))
		}
	}
	if err != nil {
		return s, err
	}
	// The requests really went through the middle proxy: its per-request
	// log names them.
	switch path {
	case pathMesh:
		err = logMentions(filepath.Join(dir, "waypoint-flows.log"), serverHost)
	case pathNginx:
		err = logMentions(filepath.Join(dir, proxies.NginxHTTPProxyName+"-access.log"), load.HTTPPath)
	}
	return s, err
}

func logMentions(path, what string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("the middle proxy's request log: %w", err)
	}
	if !bytes.Contains(data, []byte(what)) {
		return fmt.Errorf("the middle proxy's request log %s never mentions %q: the requests did not go through it", path, what)
	}
	return nil
}

func stopAll(procs []*proxies.Running) {
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop()
	}
}

// requireUncaptured checks that neither pod has ztunnel's capture rules
// (a non-mesh path must not go through a ztunnel).
func (wb *wpBench) requireUncaptured() error {
	for _, pod := range []*testenv.Pod{wb.client, wb.server} {
		if on, err := redirect.Installed(pod.Path); err != nil || on {
			return fmt.Errorf("pod %s still captured (%v): the mesh was not removed", pod.Name, err)
		}
	}
	return nil
}

// startMesh runs cmd/ztunnel in nodes 1 and 2 (each serving its pod) and
// cmd/waypoint in the waypoint's pod on node 3, all from the shared local
// config and the mesh CA, and waits until they are ready and both pods are
// captured. The client dials the server Service's VIP, which is bound to
// the waypoint.
func (wb *wpBench) startMesh(ctx context.Context, dir string) (onPath, error) {
	p := onPath{addr: netip.AddrPortFrom(netip.MustParseAddr(serverVIP), servicePort).String(), middle: 1}
	gomax := func(n int) []string { // 0: the binaries' default, GOMAXPROCS sized to the load
		if n == 0 {
			return nil
		}
		return []string{"GOMAXPROCS=" + strconv.Itoa(n)}
	}
	ztunnel := func(pod *testenv.Pod) proxies.Proc {
		n := pod.Node.Index
		return nsproc.InNS(proxies.Proc{
			Name: fmt.Sprintf("ztunnel-node%d", n),
			Argv: []string{wb.ztunnelBin, "--node", nodeName(n), "--local-config", wb.meshCfg,
				"--ca-cert", wb.caCert, "--ca-key", wb.caKey,
				"--pod", fmt.Sprintf("%s=%s", podUID(wb, pod), pod.Path),
				"--flow-log", filepath.Join(dir, fmt.Sprintf("ztunnel-node%d-flows.log", n)),
				"--admin-addr", "127.0.0.1:15000", "--metrics-addr", "127.0.0.1:15020", "--ready-addr", "127.0.0.1:15021",
				// Stopping the mesh must leave the other paths uncaptured.
				"--remove-capture-on-exit"},
			Env: gomax(wb.cfg.ZtunnelGo), Ready: "127.0.0.1:15021",
			Log: filepath.Join(dir, fmt.Sprintf("ztunnel-node%d.out", n)),
		}, pod.Node.NS)
	}
	waypoint := nsproc.InNS(proxies.Proc{
		Name: "waypoint",
		Argv: []string{wb.wpBin, "--gateway", meshNamespace + "/waypoint", "--local-config", wb.meshCfg,
			"--ca-cert", wb.caCert, "--ca-key", wb.caKey,
			"--hbone-addr", ":" + strconv.Itoa(hbonePort), "--flow-log", filepath.Join(dir, "waypoint-flows.log"),
			"--admin-addr", "127.0.0.1:15000", "--metrics-addr", "127.0.0.1:15020", "--ready-addr", "127.0.0.1:15021",
			"--drain-timeout", "2s"},
		Env: gomax(wb.cfg.WaypointGo), Ready: "127.0.0.1:15021",
		Log: filepath.Join(dir, "waypoint.out"),
	}, wb.wpod.NS)
	// Client side first, as the table lists them.
	for _, spec := range []struct {
		proc proxies.Proc
		ns   testenv.NS
	}{{ztunnel(wb.client), wb.client.Node.NS}, {waypoint, wb.wpod.NS}, {ztunnel(wb.server), wb.server.Node.NS}} {
		r, err := proxies.Start(ctx, spec.proc, 30*time.Second)
		if err != nil {
			return p, err
		}
		p.procs = append(p.procs, r)
		exited := func() bool { ok, _ := r.Exited(); return ok }
		if err := nsproc.WaitHTTPOK(ctx, spec.ns, "http://127.0.0.1:15021/healthz/ready", 30*time.Second, exited); err != nil {
			return p, fmt.Errorf("%s: %w\n%s", spec.proc.Name, err, r.LogTail(10))
		}
	}
	for _, pod := range []*testenv.Pod{wb.client, wb.server} {
		if err := waitFor(ctx, "capture of pod "+pod.Name, func() bool {
			on, err := redirect.Installed(pod.Path)
			return err == nil && on
		}); err != nil {
			return p, err
		}
	}
	return p, nil
}

func podUID(wb *wpBench, pod *testenv.Pod) string {
	switch pod {
	case wb.client:
		return uidClient
	case wb.server:
		return uidServer
	}
	return uidWaypoint
}

// stopMesh stops the mesh's processes and makes sure the pods are no
// longer captured: a ztunnel removes its rules on SIGTERM
// (--remove-capture-on-exit), but one killed after the grace period
// cannot, and then the rules are removed here.
func (wb *wpBench) stopMesh(procs []*proxies.Running) {
	stopAll(procs)
	for _, pod := range []*testenv.Pod{wb.client, wb.server} {
		if on, _ := redirect.Installed(pod.Path); on {
			progress("pod %s still captured after its ztunnel stopped; removing the rules", pod.Name)
			if err := redirect.Remove(pod.Path); err != nil {
				progress("removing the capture of %s: %v", pod.Name, err)
			}
		}
	}
}

func waitFor(ctx context.Context, what string, cond func() bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// startNginx runs the nginx path, each process where the mesh has its
// proxy: the client side of bench/proxies' nginx pair (stream, plaintext
// in, TLS out) in node 1 on the client pod's gateway address, the HTTP
// reverse proxy (TLS in, TLS out with keep-alive upstream) in the waypoint's
// pod, and the server side of the pair (stream, TLS in, plaintext out) in
// node 2 on the node link, forwarding to the backend. In round 0 the two
// TLS listeners are checked with bench/tlscheck.
func (wb *wpBench) startNginx(ctx context.Context, dir string, round int) (onPath, error) {
	port := uint16(20000 + 10*round) // fresh ports each round
	n1, n2 := wb.client.Node, wb.server.Node
	listen := netip.AddrPortFrom(n1.Gateway, port).String() // node 1, as the client pod sees it
	middle := netip.AddrPortFrom(wb.wpod.IP, port+1).String()
	edge2 := netip.AddrPortFrom(n2.IP, port+2).String()
	edge := proxies.DefaultTuning()
	edge.NginxWorkers = nginxWorkers(wb.cfg.ZtunnelGo)
	mid := proxies.DefaultTuning()
	mid.NginxWorkers = nginxWorkers(wb.cfg.WaypointGo)
	tools := proxies.DefaultTools()
	// Two stream pairs' halves: node 1's client side tunnels to the middle,
	// node 2's server side accepts from it.
	in, err := proxies.Build(proxies.Nginx, proxies.Layout{Dir: filepath.Join(dir, "node1"), Certs: wb.certs, Listen: listen, Tunnel: middle}, edge, tools)
	if err != nil {
		return onPath{}, err
	}
	out, err := proxies.Build(proxies.Nginx, proxies.Layout{Dir: filepath.Join(dir, "node2"), Certs: wb.certs, Tunnel: edge2, Dest: wb.backend}, edge, tools)
	if err != nil {
		return onPath{}, err
	}
	httpProxy := proxies.NginxHTTPProxy(proxies.Layout{Dir: dir, Certs: wb.certs, Tunnel: middle, Dest: edge2}, mid, tools)

	p := onPath{addr: listen, middle: 1}
	// Started server side first; listed client side first.
	started := map[string]*proxies.Running{}
	for _, spec := range []struct {
		proc proxies.Proc
		ns   testenv.NS
	}{{out.Server, n2.NS}, {httpProxy, wb.wpod.NS}, {in.Client, n1.NS}} {
		r, err := proxies.Start(ctx, nsproc.InNS(spec.proc, spec.ns), 10*time.Second)
		if err != nil {
			stopAll(mapValues(started))
			return onPath{}, err
		}
		started[spec.proc.Name] = r
	}
	p.procs = []*proxies.Running{started[in.Client.Name], started[httpProxy.Name], started[out.Server.Name]}
	if round == 0 {
		for _, c := range []struct {
			name, addr string
			from       testenv.NS
			// nginx http completes the handshake with any client
			// certificate and refuses the request with 400.
			httpProbe bool
		}{{"nginx http (node 3)", middle, n1.NS, true}, {"nginx stream server side (node 2)", edge2, wb.wpod.NS, false}} {
			env := tlscheck.Env{Certs: wb.certs, Foreign: wb.foreign, HTTPProbe: c.httpProbe}
			var checks []tlscheck.Check
			c.from.Exec(func() error { checks = tlscheck.Server(ctx, c.addr, env); return nil })
			if !tlscheck.AllOK(checks) {
				return p, fmt.Errorf("%s is not mutual TLS 1.3 only: %+v", c.name, checks)
			}
			progress("%s passed %d TLS checks (%s)", c.name, len(checks), checks[0].Detail)
		}
	}
	return p, nil
}

func mapValues(m map[string]*proxies.Running) []*proxies.Running {
	var out []*proxies.Running
	for _, r := range m {
		out = append(out, r)
	}
	return out
}

// dialFromClient opens the load client's connections in the client pod.
func (wb *wpBench) dialFromClient(ctx context.Context, addr string) (net.Conn, error) {
	c, err := wb.client.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// cpuOf reads the CPU time of every process group of procs.
func cpuOf(procs []*proxies.Running) ([]time.Duration, error) {
	out := make([]time.Duration, len(procs))
	for i, r := range procs {
		d, err := r.CPU()
		if err != nil {
			return nil, fmt.Errorf("cpu of %s: %w", r.Proc.Name, err)
		}
		out[i] = d
	}
	return out, nil
}

// measure runs, on path p from the client pod: an unmeasured warm-up, the
// fixed-rate runs and the closed-loop search.
func (wb *wpBench) measure(ctx context.Context, p onPath) (sample, error) {
	cfg := wb.cfg
	var s sample
	base := load.LatencyConfig{
		Addr: p.addr, Protocol: load.ProtoHTTP1, Host: serverHost, Conns: cfg.Conns, Size: cfg.Size,
		Dial: wb.dialFromClient,
	}
	if cfg.WarmupRun > 0 {
		lc := base
		lc.Rate, lc.Duration = cfg.Rates[0], cfg.WarmupRun
		if _, err := load.Latency(ctx, lc); err != nil {
			return s, fmt.Errorf("warm-up: %w", err)
		}
	}
	if p.perfOut != "" {
		pids, err := proxies.GroupPids(p.procs[p.middle].Pid())
		if err != nil {
			return s, err
		}
		stop, err := perfRecord(pids, p.perfOut)
		if err != nil {
			return s, err
		}
		defer func() {
			if err := stop(); err != nil {
				progress("perf record: %v", err)
				return
			}
			progress("CPU profile of %s: %s (perf report -i %s)", p.procs[p.middle].Proc.Name, p.perfOut, p.perfOut)
		}()
	}
	for _, rate := range cfg.Rates {
		var cpu0 []time.Duration
		var busy0 map[int]time.Duration
		var t0 time.Time
		var cpuErr error
		lc := base
		lc.Rate, lc.Duration, lc.Warmup = rate, cfg.Duration, cfg.Warmup
		lc.Started = func() { cpu0, cpuErr = cpuOf(p.procs); busy0, t0 = proxies.CPUByProcess(), time.Now() }
		lr, err := load.Latency(ctx, lc)
		if err != nil {
			return s, fmt.Errorf("%.0f req/s: %w", rate, err)
		}
		if lr.Errors > 0 {
			return s, fmt.Errorf("%.0f req/s: %d of %d requests failed", rate, lr.Errors, lr.Sent)
		}
		busy := proxies.BusyBetween(busy0, proxies.CPUByProcess()).Seconds() / time.Since(t0).Seconds()
		cpu1, err := cpuOf(p.procs)
		if err := errors.Join(cpuErr, err); err != nil {
			return s, err
		}
		rs := rateSample{P50: lr.Summary.P50, P99: lr.Summary.P99, MachineBusy: busy}
		perK := func(d time.Duration) float64 { return d.Seconds() / (float64(lr.Sent) / 1000) }
		for i := range p.procs {
			rs.PathVCPU += perK(cpu1[i] - cpu0[i])
		}
		if p.middle >= 0 {
			rs.MiddleVCPU = perK(cpu1[p.middle] - cpu0[p.middle])
			if rs.MiddleRSSMiB, err = proxies.GroupRSSMiB(p.procs[p.middle].Pid()); err != nil {
				return s, err
			}
		}
		s.Rates = append(s.Rates, rs)
	}
	for conns, ok := cfg.MaxLadder.next(nil); ok; conns, ok = cfg.MaxLadder.next(s.Steps) {
		var cpu0 []time.Duration
		var busy0 map[int]time.Duration
		var cpuErr error
		tr, err := load.Throughput(ctx, load.ThroughputConfig{
			Addr: p.addr, Protocol: load.ProtoHTTP1, Host: serverHost, Conns: conns, Duration: cfg.MaxStep, Size: cfg.Size,
			Warmup: 2, Dial: wb.dialFromClient,
			Started: func() { cpu0, cpuErr = cpuOf(p.procs); busy0 = proxies.CPUByProcess() },
		})
		if err != nil {
			return s, fmt.Errorf("closed loop, %d connections: %w", conns, err)
		}
		if tr.Errors > 0 {
			return s, fmt.Errorf("closed loop, %d connections: %d failed: %w", conns, tr.Errors, tr.FirstErr)
		}
		st := step{Conns: conns, RPS: tr.RPS(), MachineBusy: proxies.BusyBetween(busy0, proxies.CPUByProcess()).Seconds() / tr.Elapsed.Seconds()}
		cpu1, err := cpuOf(p.procs)
		if err := errors.Join(cpuErr, err); err != nil {
			return s, err
		}
		for i := range p.procs {
			st.ProcCores = append(st.ProcCores, (cpu1[i]-cpu0[i]).Seconds()/tr.Elapsed.Seconds())
		}
		if p.middle >= 0 {
			st.MiddleCores = st.ProcCores[p.middle]
		}
		s.Steps = append(s.Steps, st)
	}
	return s, nil
}

// perfRecord samples the stacks of processes pids (every thread, kernel
// and user, 999 Hz) into out until stop is called.
func perfRecord(pids []int, out string) (stop func() error, err error) {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, err
	}
	var list []string
	for _, pid := range pids {
		list = append(list, strconv.Itoa(pid))
	}
	var log bytes.Buffer
	cmd := exec.Command("perf", "record", "-F", "999", "-g", "-p", strings.Join(list, ","), "-o", out)
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("PROCBENCH_PERF needs perf (Debian package linux-perf): %w", err)
	}
	time.Sleep(200 * time.Millisecond) // attached
	return func() error {
		cmd.Process.Signal(syscall.SIGINT)
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGINT {
			err = nil // perf writes its file, then dies of the signal
		}
		if err != nil {
			return fmt.Errorf("%w: %s", err, log.String())
		}
		return nil
	}, nil
}

// nginxWorkers is worker_processes for a PROCBENCH_*_PROCS value: 0 is
// nginx's own auto, a worker per CPU.
func nginxWorkers(n int) string {
	if n == 0 {
		return "auto"
	}
	return strconv.Itoa(n)
}
