// Package tunnelbench runs the tunnel benchmark behind `meshbench tunnel`:
// for each path (direct TCP, stunnel, haproxy, nginx, and our hbone pair) it
// starts the proxy pair as child processes on 127.0.0.1, verifies that it
// really does mutual TLS 1.3 (bench/tlscheck), then measures single-stream
// bulk throughput in both directions with the pair's CPU time, and open-loop
// 1 KB request/response latency (bench/load). Everything it writes (certs,
// configs, logs) lives in one temporary directory.
//
// All traffic stays on 127.0.0.1; ports are picked free at run time.
package tunnelbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/bench/certdir"
	"github.com/ambientmesh/ambient/bench/load"
	"github.com/ambientmesh/ambient/bench/proxies"
	"github.com/ambientmesh/ambient/bench/report"
	"github.com/ambientmesh/ambient/bench/tlscheck"
)

// Direct is the no-proxy baseline path.
const Direct = "direct"

// PathNames lists every path in table order.
func PathNames() []string { return append([]string{Direct}, proxies.Names()...) }

// Trust domains of the bench CA and of the impostor used by the TLS checks.
var (
	TrustDomain        = spiffeid.RequireTrustDomainFromString("cluster.local")
	ForeignTrustDomain = spiffeid.RequireTrustDomainFromString("impostor.example")
)

// Config configures a benchmark run.
type Config struct {
	Paths []string // subset of PathNames(); run in table order

	BulkBytes       int64         // bytes per bulk transfer
	Repeats         int           // bulk transfers per direction; the median is reported
	Rounds          int           // passes over all paths, interleaved so every path sees the same machine; medians are reported
	WriteSize       int           // bulk write/read size
	Rate            float64       // latency test requests per second
	LatencyDuration time.Duration // measured latency period
	Conns           int           // latency connections
	MessageSize     int           // latency request and response size
	Warmup          int           // unmeasured round trips per latency connection

	Tuning proxies.Tuning
	Tools  proxies.Tools // Tools.Mesh must be set for the hbone path

	// NewAuthority creates a self-signed CA for a trust domain (internal/ca).
	NewAuthority func(td spiffeid.TrustDomain) (certdir.Authority, error)

	VerifyOnly bool   // run the TLS checks only, measure nothing
	Keep       bool   // keep the work directory
	TempRoot   string // parent of the work directory ("" = os.TempDir())

	ReadyTimeout    time.Duration // for a proxy to start listening
	TransferTimeout time.Duration // for one bulk transfer or latency run

	Logger   *slog.Logger
	Progress io.Writer // human progress lines (nil = none)
}

// Bench is a configured run.
type Bench struct {
	cfg Config
}

// New validates cfg and fills in defaults.
func New(cfg Config) (*Bench, error) {
	if len(cfg.Paths) == 0 {
		cfg.Paths = PathNames()
	}
	all := PathNames()
	for _, p := range cfg.Paths {
		if !slices.Contains(all, p) {
			return nil, fmt.Errorf("tunnelbench: unknown path %q (choose from %s)", p, strings.Join(all, ","))
		}
	}
	// Table order, no duplicates.
	cfg.Paths = slices.DeleteFunc(slices.Clone(all), func(p string) bool { return !slices.Contains(cfg.Paths, p) })
	if cfg.NewAuthority == nil {
		return nil, errors.New("tunnelbench: Config.NewAuthority is required")
	}
	if slices.Contains(cfg.Paths, proxies.HBONE) && cfg.Tools.Mesh == "" {
		return nil, errors.New("tunnelbench: the hbone path needs Config.Tools.Mesh (the meshbench binary)")
	}
	if !cfg.VerifyOnly && (cfg.BulkBytes <= 0 || cfg.Repeats <= 0 || cfg.WriteSize <= 0 || cfg.Rate <= 0 ||
		cfg.LatencyDuration <= 0 || cfg.Conns <= 0 || cfg.MessageSize <= 0) {
		return nil, fmt.Errorf("tunnelbench: sizes, counts, rate and duration must be positive")
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.TransferTimeout <= 0 {
		cfg.TransferTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	return &Bench{cfg: cfg}, nil
}

// Run performs the benchmark. A proxy that fails to start or breaks during
// measurement is reported as a failed row; Run itself fails only when the
// run as a whole cannot proceed (no certificates, no backend, ctx done).
func (b *Bench) Run(ctx context.Context) (rep *report.Report, err error) {
	cfg := b.cfg
	dir, err := os.MkdirTemp(cfg.TempRoot, "meshbench-")
	if err != nil {
		return nil, fmt.Errorf("tunnelbench: %w", err)
	}
	defer func() {
		if cfg.Keep {
			fmt.Fprintf(cfg.Progress, "work directory kept: %s\n", dir)
			return
		}
		if rmErr := os.RemoveAll(dir); rmErr != nil && err == nil {
			err = fmt.Errorf("tunnelbench: remove work directory: %w", rmErr)
		}
	}()

	certs, foreign := filepath.Join(dir, "certs"), filepath.Join(dir, "foreign-certs")
	if err := b.mint(certs, TrustDomain); err != nil {
		return nil, err
	}
	if err := b.mint(foreign, ForeignTrustDomain); err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("tunnelbench: backend listener: %w", err)
	}
	backend, err := load.NewBackend(load.BackendConfig{Listener: ln, BufSize: cfg.WriteSize, Logger: cfg.Logger})
	if err != nil {
		ln.Close()
		return nil, err
	}
	bctx, stopBackend := context.WithCancel(ctx)
	backendDone := make(chan error, 1)
	go func() { backendDone <- backend.Run(bctx) }()
	defer func() {
		stopBackend()
		if berr := <-backendDone; berr != nil && err == nil {
			err = berr
		}
	}()

	rep = &report.Report{Meta: b.meta(ctx)}
	if cfg.Keep {
		rep.Meta.Dir = dir
	}
	env := tlscheck.Env{Certs: certs, Foreign: foreign}
	rounds := max(cfg.Rounds, 1)
	byPath := make(map[string][]report.Path)
	for round := range rounds {
		for _, name := range cfg.Paths {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			if name == Direct && cfg.VerifyOnly {
				continue // nothing to verify without TLS
			}
			if rounds > 1 {
				fmt.Fprintf(cfg.Progress, "round %d/%d: ", round+1, rounds)
			}
			var p report.Path
			if name == Direct {
				p = b.measure(ctx, report.Path{Name: name, Status: report.StatusOK}, backend.Addr(), nil)
			} else {
				p = b.runPair(ctx, name, filepath.Join(dir, fmt.Sprintf("%s-%d", name, round)), certs, backend.Addr(), env)
			}
			byPath[name] = append(byPath[name], p)
		}
	}
	for _, name := range cfg.Paths {
		if runs := byPath[name]; len(runs) > 0 {
			rep.Paths = append(rep.Paths, report.Merge(runs))
		}
	}
	rep.Ratios = report.ComputeRatios(rep.Paths)
	return rep, ctx.Err()
}

func (b *Bench) mint(dir string, td spiffeid.TrustDomain) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tunnelbench: %w", err)
	}
	a, err := b.cfg.NewAuthority(td)
	if err != nil {
		return fmt.Errorf("tunnelbench: create CA for %s: %w", td, err)
	}
	return certdir.Write(dir, a, td, 24*time.Hour)
}

// FreePorts returns n distinct currently free TCP ports on 127.0.0.1.
func FreePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("tunnelbench: pick a free port: %w", err)
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// runPair starts pair name, checks it and measures it.
func (b *Bench) runPair(ctx context.Context, name, dir, certs, dest string, env tlscheck.Env) report.Path {
	cfg := b.cfg
	res := report.Path{Name: name, Status: report.StatusFailed}
	ports, err := FreePorts(2)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	l := proxies.Layout{Dir: dir, Certs: certs, Listen: addr(ports[0]), Tunnel: addr(ports[1]), Dest: dest}
	pair, err := proxies.Build(name, l, cfg.Tuning, cfg.Tools)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	fmt.Fprintf(cfg.Progress, "%s: starting (%s)\n", name, dir)
	var running []*proxies.Running
	defer func() {
		for _, r := range slices.Backward(running) {
			r.Stop()
		}
	}()
	for _, proc := range []proxies.Proc{pair.Server, pair.Client} {
		r, err := proxies.Start(ctx, proc, cfg.ReadyTimeout)
		if err != nil {
			res.Error, res.LogTail = splitTail(err.Error())
			return res
		}
		running = append(running, r)
	}

	env.ALPN = pair.ALPN
	res.Checks = tlscheck.Server(ctx, pair.Tunnel, env)
	res.Checks = append(res.Checks, tlscheck.Client(ctx, b.clientStarter(name, dir, certs, dest), env)...)
	res.Status = report.StatusOK
	if cfg.VerifyOnly {
		return b.alive(res, running)
	}
	cpu := func() (time.Duration, error) {
		var total time.Duration
		for _, r := range running {
			d, err := r.CPU()
			if err != nil {
				return 0, err
			}
			total += d
		}
		return total, nil
	}
	res = b.measure(ctx, res, pair.Listen, cpu)
	return b.alive(res, running)
}

// alive marks res failed if a proxy process has exited.
func (b *Bench) alive(res report.Path, running []*proxies.Running) report.Path {
	for _, r := range running {
		if exited, werr := r.Exited(); exited {
			res.Status = report.StatusFailed
			res.Error = strings.TrimSpace(fmt.Sprintf("%s %s exited during the run: %v", res.Error, r.Proc.Name, werr))
			res.LogTail += r.LogTail(15)
		}
	}
	return res
}

// clientStarter starts extra instances of pair name's client side (for the
// client-side TLS checks) pointed at a fake upstream.
func (b *Bench) clientStarter(name, dir, certs, dest string) tlscheck.StartClient {
	n := 0
	return func(ctx context.Context, upstream string) (string, func(), error) {
		n++
		ports, err := FreePorts(1)
		if err != nil {
			return "", nil, err
		}
		l := proxies.Layout{Dir: filepath.Join(dir, fmt.Sprintf("check-%d", n)), Certs: certs,
			Listen: addr(ports[0]), Tunnel: upstream, Dest: dest}
		pair, err := proxies.Build(name, l, b.cfg.Tuning, b.cfg.Tools)
		if err != nil {
			return "", nil, err
		}
		r, err := proxies.Start(ctx, pair.Client, b.cfg.ReadyTimeout)
		if err != nil {
			return "", nil, err
		}
		return pair.Listen, r.Stop, nil
	}
}

// splitTail separates an error message from the log tail that
// proxies.Start appends after the first line.
func splitTail(msg string) (string, string) {
	first, rest, _ := strings.Cut(msg, "\n")
	return first, rest
}

// toolVersions asks each selected executable for its version.
func (b *Bench) toolVersions(ctx context.Context) map[string]string {
	def := proxies.DefaultTools()
	pick := func(s, d string) string {
		if s != "" {
			return s
		}
		return d
	}
	cmds := map[string][]string{
		proxies.Stunnel: {pick(b.cfg.Tools.Stunnel, def.Stunnel), "-version"},
		proxies.HAProxy: {pick(b.cfg.Tools.HAProxy, def.HAProxy), "-v"},
		proxies.Nginx:   {pick(b.cfg.Tools.Nginx, def.Nginx), "-v"},
	}
	out := map[string]string{}
	for _, p := range b.cfg.Paths {
		argv, ok := cmds[p]
		if !ok {
			continue
		}
		vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		data, err := exec.CommandContext(vctx, argv[0], argv[1:]...).CombinedOutput()
		cancel()
		lines := proxies.TailLines(data, 1000)
		switch {
		case len(lines) == 0:
			out[argv[0]] = fmt.Sprintf("unknown (%v)", err)
		case p == proxies.Stunnel && len(lines) > 1:
			out[argv[0]] = lines[1] // line 1 is "Initializing inetd mode configuration"
		default:
			out[argv[0]] = lines[0]
		}
	}
	return out
}

func (b *Bench) meta(ctx context.Context) report.Meta {
	c := b.cfg
	return report.Meta{
		Started: time.Now().UTC(), GoVersion: runtime.Version(),
		NumCPU: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		Params: report.Params{
			BulkBytes: c.BulkBytes, Repeats: c.Repeats, Rounds: max(c.Rounds, 1), WriteSize: c.WriteSize, RateRPS: c.Rate,
			LatencySeconds: c.LatencyDuration.Seconds(), Conns: c.Conns, MessageSize: c.MessageSize,
			WarmupPerConn: c.Warmup, CipherSuite: proxies.CipherSuite,
			TransferTimeout: c.TransferTimeout.Seconds(),
		},
		Tools: b.toolVersions(ctx),
		Tuning: map[string]string{
			"haproxy.nbthread":        strconv.Itoa(c.Tuning.HAProxyThreads),
			"haproxy.tune.bufsize":    strconv.Itoa(c.Tuning.HAProxyBufSize),
			"nginx.worker_processes":  c.Tuning.NginxWorkers,
			"nginx.proxy_buffer_size": strconv.Itoa(c.Tuning.NginxBufferSize),
			"hbone.gomaxprocs":        strconv.Itoa(c.Tuning.HBONEProcs),
		},
	}
}
