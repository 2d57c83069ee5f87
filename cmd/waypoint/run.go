package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/certs"
	"github.com/ambientmesh/ambient/internal/gomaxprocs"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/istiodconn"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/waypoint/proxy"
	"github.com/ambientmesh/ambient/waypoint/wpconfig"
)

// certSigner obtains the waypoint's certificate for a CSR: the in-process
// CA with --local-config; istiod-lite's CA client (internal/caclient's
// Client.Sign) with --xds-address.
type certSigner interface {
	Sign(ctx context.Context, id spiffeid.ID, csrPEM []byte) (chainPEM, rootsPEM []byte, err error)
}

// localCA signs with the CA core loaded from --ca-cert/--ca-key.
type localCA struct{ sign identity.SignFunc }

func (l localCA) Sign(ctx context.Context, id spiffeid.ID, csrPEM []byte) ([]byte, []byte, error) {
	return l.sign(ctx, id, csrPEM)
}

// localCertTimeout bounds the first certificate from the in-process CA; from
// istiod-lite the waypoint waits (unready) as long as it takes.
const localCertTimeout = 30 * time.Second

// run wires the components and serves until ctx ends.
func run(ctx context.Context, o options, logger *slog.Logger, stdout io.Writer) error {
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %w", o.trustDomain, err)
	}
	wid, err := identity.ForWorkload(td, o.namespace, o.serviceAccount)
	if err != nil {
		return fmt.Errorf("the waypoint's identity (--namespace %q, --service-account %q): %w", o.namespace, o.serviceAccount, err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := telemetry.NewHTTPMetrics(reg, o.clusterID)
	if err != nil {
		return err
	}

	// The mesh and the certificate come from istiod-lite, or from the local
	// file and the in-process CA.
	store := state.NewStore()
	var signer certSigner
	var ist *istiodconn.Conn
	var l7 *l7XDS
	if o.xdsAddress != "" {
		l7 = newL7XDS(logger)
		ist, err = istiodconn.Dial(istiodconn.Config{
			XDSAddress: o.xdsAddress, CAAddress: o.caAddress,
			RootFile: o.caRootFile, ServerName: o.xdsServerName, TokenFile: o.tokenFile,
			ClusterID: o.clusterID, NodeID: xdsNodeID(o),
			Store: store, Extra: l7.Extra(), Registerer: reg, Logger: logger,
		})
		if err != nil {
			return err
		}
		defer ist.Close()
		signer = ist.CA
	} else {
		if _, _, err := wpconfig.Load(o.localConfig); err != nil {
			return fmt.Errorf("--local-config: %w; fix the file or point --local-config at a valid one", err)
		}
		authority, err := loadCA(o, td)
		if err != nil {
			return err
		}
		signer = localCA{certs.LocalSigner(authority, 0)}
	}

	flowOut := stdout
	if o.flowLog != "-" {
		f, err := os.OpenFile(o.flowLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("--flow-log: %w; give a writable file, or - for stdout", err)
		}
		defer f.Close()
		flowOut = f
	}
	flowLog := telemetry.NewBufferedFlowLog(flowOut, o.flowLogFlush)
	defer flowLog.Close() // after the drain: the last requests' records too

	// Deferred before the proxy runs, so it flushes after the drain.
	tracer, stopTracing, err := startTracing(o, logger)
	if err != nil {
		return err
	}
	defer stopTracing()

	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	tunnelSockets := netns.Control(netns.WithCongestionControl(o.tunnelCongestion))
	for _, l := range []struct {
		flag, addr string
		control    func(network, address string, c syscall.RawConn) error
	}{
		{"--hbone-addr", o.hboneAddr, tunnelSockets}, {"--admin-addr", o.adminAddr, nil}, {"--metrics-addr", o.metricsAddr, nil}, {"--ready-addr", o.readyAddr, nil},
	} {
		ln, err := listen(ctx, l.flag, l.addr, l.control)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}
	// HBONE/3 (QUIC) on the same address, as ztunnel serves it.
	pc, err := listenPacket("--hbone-addr", o.hboneAddr)
	if err != nil {
		return err
	}
	defer pc.Close()

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 5)
	start := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	// stopAll ends the goroutines and returns the first one's error.
	stopAll := func() error {
		cancel()
		wg.Wait()
		select {
		case err := <-errc:
			return err
		default:
			return nil
		}
	}

	// The proxy exists once the certificate is in hand; until then the
	// endpoints answer "not ready".
	var pp atomic.Pointer[proxy.Proxy]
	ready := func() bool {
		p := pp.Load()
		return p != nil && p.Ready() && (ist == nil || ist.XDS.Synced())
	}
	for i, h := range []http.Handler{adminHandler(store, &pp, l7), promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), readyHandler(ready)} {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		ln := lns[i+1]
		start("http "+ln.Addr().String(), func(ctx context.Context) error {
			stop := context.AfterFunc(ctx, func() { srv.Close() })
			defer stop()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if procs := gomaxprocs.Apply(o.procs, logger); procs != nil {
		start("gomaxprocs", procs.Run)
	}
	source := "local-config " + o.localConfig
	if ist != nil {
		start("xDS client", ist.XDS.Run)
		source = "xds " + o.xdsAddress + ", ca " + o.caAddress
	}
	logger.Info("waypoint started", "identity", wid.String(), "gateway", o.gatewayNS+"/"+o.gatewayName,
		"config", source, "hbone", lns[0].Addr().String(), "admin", lns[1].Addr().String(),
		"metrics", lns[2].Addr().String(), "ready", lns[3].Addr().String())

	sctx, cancelSrc := ctx, context.CancelFunc(func() {})
	if ist == nil {
		sctx, cancelSrc = context.WithTimeout(ctx, localCertTimeout)
	}
	src, err := identity.NewSource(sctx, identity.SourceConfig{ID: wid, Fetch: identity.CSRFetcher(signer.Sign), Logger: logger})
	cancelSrc()
	if err != nil {
		if serr := stopAll(); serr != nil {
			return serr
		}
		if parent.Err() != nil {
			return nil // stopped before the first certificate
		}
		return fmt.Errorf("the waypoint's certificate for %s: %w", wid, err)
	}
	defer src.Close()

	p, err := proxy.New(proxy.Config{
		Identity: wid, SVIDs: src, Bundles: src, Store: store,
		GatewayNamespace: o.gatewayNS, GatewayName: o.gatewayName, GatewayClass: o.gatewayClass, RootNamespace: o.rootNamespace,
		Listener: lns[0], PacketConn: pc, FlowLog: flowLog, Metrics: metrics, Logger: logger,
		DrainTimeout: o.drainTimeout,
		Tracer:       tracer,
		DialTCP:      (&net.Dialer{Control: tunnelSockets}).DialContext, // to ztunnels' 15008, and to endpoints outside the mesh
	})
	if err != nil {
		stopAll()
		return err
	}
	pp.Store(p)
	if err := reg.Register(p.OutlierCollector()); err != nil {
		stopAll()
		return err
	}
	if l7 != nil {
		l7.attach(p)
		// Tunnels are served only with the whole configuration: before it,
		// a request would pass without its policies.
		select {
		case <-ist.XDS.SyncedCh():
		case <-ctx.Done():
		}
	} else {
		start("local config", func(ctx context.Context) error {
			return wpconfig.Watch(ctx, o.localConfig, func(snap state.Snapshot, l7 proxy.L7Config) {
				if err := store.Replace(snap); err != nil {
					logger.Warn("local config rejected by the state store; keeping the last good mesh", "err", err)
					return
				}
				c, errs := proxy.Compile(l7)
				for _, e := range errs {
					logger.Warn("L7 configuration item not in force", "err", e.Error())
				}
				p.SetL7(c)
			}, logger)
		})
	}
	logger.Info("waypoint serving", "identity", wid.String())
	perr := p.Run(ctx)
	if err := stopAll(); err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	logger.Info("waypoint drained; exiting")
	return nil
}

// xdsNodeID identifies this waypoint to istiod-lite (informational:
// istiod-lite authenticates the token).
func xdsNodeID(o options) string {
	if o.podName != "" {
		return "waypoint~" + o.namespace + "/" + o.podName
	}
	return "waypoint~" + o.gatewayNS + "/" + o.gatewayName
}

// readyHandler answers /healthz/ready: 200 once the configuration is in
// force (ready), else 503.
func readyHandler(ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "not ready\n")
			return
		}
		io.WriteString(w, "ready\n")
	})
	return mux
}

// adminHandler serves /config_dump: the mesh and the L7 configuration in
// force, with the items that did not compile and, over xDS (l7 non-nil),
// the last push refused; and /debug/connections: the pooled upstream
// tunnels with their path measurements.
func adminHandler(store *state.Store, pp *atomic.Pointer[proxy.Proxy], l7 *l7XDS) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		p := pp.Load()
		if p == nil {
			http.Error(w, "no configuration yet: waiting for the waypoint's certificate", http.StatusServiceUnavailable)
			return
		}
		var rejected error
		if l7 != nil {
			rejected = l7.Rejected()
		}
		b, err := configDump(store.Current(), p.L7(), rejected)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	mux.HandleFunc("GET /debug/connections", func(w http.ResponseWriter, _ *http.Request) {
		p := pp.Load()
		if p == nil {
			http.Error(w, "no tunnels yet: waiting for the waypoint's certificate", http.StatusServiceUnavailable)
			return
		}
		b, err := json.MarshalIndent(struct {
			Tunnels []hbone.TunnelStats `json:"tunnels"`
		}{append([]hbone.TunnelStats{}, p.Tunnels()...)}, "", "  ")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(b, '\n'))
	})
	return mux
}

// configDump renders the configuration as JSON (protos in protojson).
func configDump(v *state.View, l7 *proxy.Compiled, rejected error) ([]byte, error) {
	protos := func(ms []proto.Message) ([]json.RawMessage, error) {
		out := make([]json.RawMessage, 0, len(ms))
		for _, m := range ms {
			b, err := protojson.Marshal(m)
			if err != nil {
				return nil, err
			}
			out = append(out, b)
		}
		return out, nil
	}
	snap := v.Snapshot()
	src := l7.Source()
	var dump struct {
		Workloads             []json.RawMessage `json:"workloads"`
		Services              []json.RawMessage `json:"services"`
		Policies              []json.RawMessage `json:"policies"`
		Routes                []json.RawMessage `json:"routes"`
		AuthorizationPolicies []any             `json:"authorizationPolicies"`
		Resilience            []json.RawMessage `json:"resilience"`
		Errors                []string          `json:"errors,omitempty"`
		Rejected              string            `json:"rejected,omitempty"`
	}
	if rejected != nil {
		dump.Rejected = rejected.Error()
	}
	var err error
	if dump.Workloads, err = protos(asMessages(snap.Workloads)); err != nil {
		return nil, err
	}
	if dump.Services, err = protos(asMessages(snap.Services)); err != nil {
		return nil, err
	}
	if dump.Policies, err = protos(asMessages(snap.Policies)); err != nil {
		return nil, err
	}
	if dump.Routes, err = protos(asMessages(src.Routes)); err != nil {
		return nil, err
	}
	if dump.Resilience, err = protos(asMessages(src.Resilience)); err != nil {
		return nil, err
	}
	for _, in := range src.Policies {
		dump.AuthorizationPolicies = append(dump.AuthorizationPolicies, map[string]any{
			"namespace": in.Namespace, "name": in.Name, "dryRun": in.DryRun, "spec": in.Spec})
	}
	for _, e := range l7.Errors() {
		dump.Errors = append(dump.Errors, e.Error())
	}
	return json.MarshalIndent(dump, "", "  ")
}

func asMessages[T proto.Message](xs []T) []proto.Message {
	out := make([]proto.Message, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

// loadCA loads the CA of --ca-cert/--ca-key (and --ca-root).
func loadCA(o options, td spiffeid.TrustDomain) (*ca.Authority, error) {
	a, err := ca.LoadFiles(o.caCert, o.caKey, o.caRoot, td, ca.Options{})
	if err != nil {
		return nil, fmt.Errorf("loading the CA from --ca-cert %s and --ca-key %s: %w", o.caCert, o.caKey, err)
	}
	return a, nil
}

// listen opens a listener with control applied to its socket (nil: none),
// explaining the usual failures.
func listen(ctx context.Context, flagName, addr string, control func(network, address string, c syscall.RawConn) error) (net.Listener, error) {
	ln, err := (&net.ListenConfig{Control: control}).Listen(ctx, "tcp", addr)
	if err == nil {
		return ln, nil
	}
	return nil, listenError(flagName, addr, err)
}

// listenPacket opens a UDP socket, explaining the usual failures.
func listenPacket(flagName, addr string) (net.PacketConn, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err == nil {
		return pc, nil
	}
	return nil, listenError(flagName, addr+" (UDP)", err)
}

func listenError(flagName, addr string, err error) error {
	hint := "check the address"
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		hint = "another process uses the port: stop it, or choose another address with " + flagName
	case errors.Is(err, syscall.EACCES):
		hint = "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another with " + flagName
	}
	return fmt.Errorf("%s %s: %w; %s", flagName, addr, err, hint)
}
