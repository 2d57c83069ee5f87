package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/hbone3"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/quicfallback"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/waypoint/h1server"
	"github.com/ambientmesh/ambient/waypoint/l7authz"
	"github.com/ambientmesh/ambient/waypoint/tracing"
)

// Config configures a Proxy.
type Config struct {
	// Identity is the waypoint's SPIFFE ID. SVIDs supplies its certificate
	// (an identity.Source) and Bundles the trust bundle. Required.
	Identity spiffeid.ID
	SVIDs    x509svid.Source
	Bundles  x509bundle.Source
	// Store is the mesh (workloads, services, L4 policies). Required.
	Store *state.Store
	// Network is the waypoint's network for address lookups ("" default).
	Network string
	// GatewayNamespace/GatewayName name the waypoint's Gateway (for
	// policy targetRefs and Gateway-parent routes). Required.
	GatewayNamespace, GatewayName string
	// GatewayClass is the Gateway's class; default "istio-waypoint".
	GatewayClass string
	// RootNamespace is the mesh root namespace (GatewayClass-targeted
	// policies live there); default "istio-system".
	RootNamespace string
	// Listener accepts HBONE connections (:15008). Required.
	Listener net.Listener
	// PacketConn, if set, accepts HBONE/3 (QUIC) connections (UDP
	// :15008), for clients whose tunnels to the waypoint go over QUIC.
	PacketConn net.PacketConn
	// DialTCP opens TCP connections to ztunnels' 15008 and to endpoints
	// outside the mesh. Default net.Dialer.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// ListenPacket opens the UDP socket of one HBONE/3 connection to a
	// ztunnel whose endpoint asks for QUIC (the socket is the
	// connection's; it is closed with it). Default an unbound UDP socket.
	ListenPacket func(ctx context.Context, dst netip.AddrPort) (net.PacketConn, error)
	// FlowLog receives one record per request (and per L4 connection).
	FlowLog *telemetry.FlowLog
	// Metrics counts requests; nil counts nothing.
	Metrics *telemetry.HTTPMetrics
	// Tracer gives each request a server span (waypoint/tracing) and the
	// upstream a traceparent naming it; nil traces nothing and passes the
	// caller's traceparent through untouched.
	Tracer *tracing.Tracer
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Seed seeds the random choices (weighted backends, endpoints,
	// mirrors, faults); 0 seeds from the clock.
	Seed uint64
	// Now is the clock of the resilience mechanisms (local rate limits,
	// outlier detection); default time.Now.
	Now func() time.Time

	// MaxRetryBody is the largest request body buffered so that the
	// request can be retried or mirrored; larger or unknown-length bodies
	// are streamed and never retried. Default 64 KiB.
	MaxRetryBody int64
	// DefaultRetries is how often a request is retried after a connection
	// failure when its route has no retry stanza. Default 2 (Istio's);
	// negative: none.
	DefaultRetries int
	// DefaultBackoff is the wait before a retry when the route sets none;
	// doubled per retry. Default 25ms (Envoy's).
	DefaultBackoff time.Duration
	// MaxMirrors bounds the mirrored requests in flight; more are dropped.
	// Default 64.
	MaxMirrors int
	// DrainTimeout is how long in-flight requests may finish on shutdown.
	// Default 30s.
	DrainTimeout time.Duration
	// DefaultConnectTimeout bounds the connect to an endpoint (the whole
	// HBONE connect, or a plain TCP dial) of a service whose resilience
	// policy sets no connectTimeout. Default 10s (Istio's; also hbone's
	// handshake timeout, which bounds TCP and TLS to a ztunnel whatever
	// the connectTimeout).
	DefaultConnectTimeout time.Duration
	// DefaultIdleTimeout closes a pooled upstream connection left idle
	// this long, for a service whose policy sets no idleTimeout. Default
	// 90s; negative: never.
	DefaultIdleTimeout time.Duration
}

// The downstream HTTP limits: request header size, the wait for a header
// once its first bytes came, and for the next request on a connection.
const (
	maxHeaderBytes    = 64 << 10
	readHeaderTimeout = 30 * time.Second
	idleTimeout       = 5 * time.Minute
)

// Proxy is the waypoint's data plane.
type Proxy struct {
	cfg     Config
	targets targets
	gwKey   string // the waypoint Gateway's routing key, "namespace/name"
	log     *slog.Logger

	l7   atomic.Pointer[Compiled]
	memo atomic.Pointer[viewMemo] // of the current mesh view (memo.go)

	hb     *hbone.Server
	hb3    *hbone3.Server // nil without Config.PacketConn
	client *hbone.Client
	// client3 tunnels to endpoints that ask for QUIC, unless QUIC to
	// their address failed lately (quicDown): then, and for the others,
	// client.
	client3  *hbone3.Client
	quicDown *quicfallback.Failures
	// defConn are the connection settings of a service without its own;
	// defUp their upstream clients, always in the table (upstream.go).
	defConn connSettings
	defUp   *upstreams
	httpSrv *http.Server     // h2c tunnels
	h1      *h1server.Server // HTTP/1.x tunnels
	conns   *connListener
	mirrors chan struct{} // semaphore
	ready   atomic.Bool
	l4      sync.WaitGroup // L4 connections in flight

	rnd   *lockedRand
	rnd64 func() uint64 // rnd.Uint64
	now   func() time.Time

	resMu sync.Mutex // serializes SetL7 and writes of res
	// res is the state of the resilience mechanisms (resilience.go) and
	// the upstream clients (upstream.go).
	res atomic.Pointer[resTable]
}

// lockedRand is a seeded random source shared by request goroutines.
type lockedRand struct {
	mu sync.Mutex // guards r
	r  *rand.Rand
}

// IntN makes lockedRand a state.Rand.
func (l *lockedRand) IntN(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.IntN(n)
}

func (l *lockedRand) Uint64() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Uint64()
}

// New checks cfg and returns a Proxy with an empty L7 configuration
// (every request takes the default route).
func New(cfg Config) (*Proxy, error) {
	switch {
	case cfg.Identity.IsZero() || cfg.SVIDs == nil || cfg.Bundles == nil:
		return nil, errors.New("waypoint: Identity, SVIDs and Bundles are required")
	case cfg.Store == nil:
		return nil, errors.New("waypoint: a Store is required")
	case cfg.Listener == nil:
		return nil, errors.New("waypoint: a Listener is required")
	case cfg.GatewayName == "" || cfg.GatewayNamespace == "":
		return nil, errors.New("waypoint: GatewayNamespace and GatewayName are required (the waypoint's Gateway, for policy targetRefs)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.GatewayClass == "" {
		cfg.GatewayClass = "istio-waypoint"
	}
	if cfg.RootNamespace == "" {
		cfg.RootNamespace = "istio-system"
	}
	if cfg.DialTCP == nil {
		var d net.Dialer
		cfg.DialTCP = d.DialContext
	}
	if cfg.MaxRetryBody <= 0 {
		cfg.MaxRetryBody = 64 << 10
	}
	if cfg.DefaultRetries == 0 {
		cfg.DefaultRetries = 2
	} else if cfg.DefaultRetries < 0 {
		cfg.DefaultRetries = 0
	}
	if cfg.DefaultBackoff <= 0 {
		cfg.DefaultBackoff = 25 * time.Millisecond
	}
	if cfg.MaxMirrors <= 0 {
		cfg.MaxMirrors = 64
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if cfg.DefaultConnectTimeout <= 0 {
		cfg.DefaultConnectTimeout = 10 * time.Second
	}
	switch {
	case cfg.DefaultIdleTimeout == 0:
		cfg.DefaultIdleTimeout = 90 * time.Second
	case cfg.DefaultIdleTimeout < 0:
		cfg.DefaultIdleTimeout = 0 // never
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	p := &Proxy{
		cfg: cfg, log: cfg.Logger,
		targets: targets{gatewayNS: cfg.GatewayNamespace, gatewayName: cfg.GatewayName, gatewayClass: cfg.GatewayClass, rootNS: cfg.RootNamespace},
		gwKey:   cfg.GatewayNamespace + "/" + cfg.GatewayName,
		conns:   newConnListener(),
		mirrors: make(chan struct{}, cfg.MaxMirrors),
		rnd:     &lockedRand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))},
	}
	p.rnd64, p.now = p.rnd.Uint64, cfg.Now
	if p.now == nil {
		p.now = time.Now
	}
	empty, _ := Compile(L7Config{})
	p.l7.Store(empty)
	p.defConn = connSettings{connect: cfg.DefaultConnectTimeout, idle: cfg.DefaultIdleTimeout}
	p.defUp = p.newUpstreams(p.defConn)
	p.res.Store(&resTable{ups: map[connSettings]*upstreams{p.defConn: p.defUp}})

	td := cfg.Identity.TrustDomain()
	var err error
	p.client, err = hbone.NewClient(hbone.ClientConfig{
		TLSConfig: func(_, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientConfig(cfg.SVIDs, cfg.Bundles, dst), nil
		},
		Dial:   cfg.DialTCP,
		Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	p.client3, err = hbone3.NewClient(hbone3.ClientConfig{
		TLSConfig: func(_, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientConfig(cfg.SVIDs, cfg.Bundles, dst), nil
		},
		ListenPacket: func(ctx context.Context, _ spiffeid.ID, dst netip.AddrPort) (net.PacketConn, error) {
			if cfg.ListenPacket != nil {
				return cfg.ListenPacket(ctx, dst)
			}
			return net.ListenPacket("udp", ":0")
		},
		Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	p.quicDown = quicfallback.NewFailures(0, 0, nil)
	p.hb, err = hbone.NewServer(hbone.ServerConfig{
		TLSConfig: identity.ServerConfig(cfg.SVIDs, cfg.Bundles, td),
		Authorize: p.authorizeTunnel,
		Serve: func(_ context.Context, st *hbone.Stream, c net.Conn) {
			p.serveStream(st, c, transportH2)
		},
		OnStreamEnd:  p.tunnelEnded(transportH2),
		Logger:       cfg.Logger,
		DrainTimeout: cfg.DrainTimeout,
	})
	if err != nil {
		return nil, err
	}
	if cfg.PacketConn != nil {
		p.hb3, err = hbone3.NewServer(hbone3.ServerConfig{
			TLSConfig: identity.ServerConfig(cfg.SVIDs, cfg.Bundles, td, identity.WithNextProtos(identity.ALPNHTTP3)),
			Authorize: func(ctx context.Context, st *hbone3.Stream) error { return p.authorizeTunnel(ctx, &st.Stream) },
			Serve: func(_ context.Context, st *hbone3.Stream, c net.Conn) {
				p.serveStream(&st.Stream, c, transportH3)
			},
			OnStreamEnd:  p.tunnelEnded(transportH3),
			Logger:       cfg.Logger,
			DrainTimeout: cfg.DrainTimeout,
		})
		if err != nil {
			return nil, err
		}
	}
	var both http.Protocols
	both.SetHTTP1(true)
	both.SetUnencryptedHTTP2(true)
	p.httpSrv = &http.Server{
		Handler:           p,
		Protocols:         &both,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnContext:       withTunnel,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	p.h1 = &h1server.Server{
		Handler:           p,
		MaxHeaderBytes:    maxHeaderBytes,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		Logger:            cfg.Logger,
	}
	return p, nil
}

// SetL7 puts a compiled configuration in force. Requests already routed
// finish under the configuration they started with.
//
// The state of the resilience mechanisms carries over: a service's rate
// limit, circuit breaker counters, outlier ejections and load balancer
// keep theirs unless that part of its policy changed (proto.Equal). So do
// the upstream connections of unchanged connection settings; new
// settings (connectTimeout, idleTimeout) apply to new connections, and
// the connections of settings no longer used are closed once idle.
func (p *Proxy) SetL7(c *Compiled) {
	p.resMu.Lock()
	defer p.resMu.Unlock()
	next, retired := p.nextTable(p.res.Load(), c, p.serviceLive)
	p.res.Store(next)
	p.l7.Store(c)
	p.ready.Store(true)
	for _, u := range retired {
		u.retire()
	}
}

// nextTable is the resilience state for configuration c after old
// (reconcile), with the upstream clients c needs, and the clients of old
// that c no longer uses, to retire.
func (p *Proxy) nextTable(old *resTable, c *Compiled, live func(svcKey string) bool) (next *resTable, retired []*upstreams) {
	ups, retired := p.upstreamsFor(c, old.ups)
	next = reconcile(old, c, live, p.now, func(pol *svcPolicy) *upstreams { return p.upstreamsIn(ups, pol) })
	next.ups = ups
	for _, cl := range next.clusters {
		p.ownClients(cl)
	}
	return next, append(retired, ownRetired(old, next)...)
}

// CloseIdleConnections closes the idle upstream connections (and with
// them their tunnels, which then end and are logged by the endpoints'
// ztunnels).
func (p *Proxy) CloseIdleConnections() {
	t := p.res.Load()
	for _, u := range t.ups {
		u.closeIdle()
	}
	for _, cl := range t.clusters {
		if cl.pool.own != nil {
			cl.pool.own.closeIdle()
		}
	}
}

// L7 is the configuration in force.
func (p *Proxy) L7() *Compiled { return p.l7.Load() }

// Tunnels describes the pooled upstream tunnel connections, HTTP/2 and
// HTTP/3, with their transport's measurements of the path
// (hbone.TunnelStats), as ztunnel's /debug/connections shows a pod's.
func (p *Proxy) Tunnels() []hbone.TunnelStats {
	ts := append(p.client.Tunnels(), p.client3.Tunnels()...)
	hbone.SortTunnels(ts)
	return ts
}

// Ready reports whether the proxy has its configuration and serves.
func (p *Proxy) Ready() bool { return p.ready.Load() }

// Run serves until ctx ends, then stops accepting tunnels, lets in-flight
// requests and connections finish (up to DrainTimeout) and returns. A
// tunnel server that fails (HBONE, or HBONE/3) stops the other too, and
// Run returns its error.
func (p *Proxy) Run(ctx context.Context) error {
	httpDone := make(chan error, 1)
	go func() { httpDone <- p.httpSrv.Serve(p.conns) }()
	stopHTTP := context.AfterFunc(ctx, func() {
		dctx, cancel := context.WithTimeout(context.Background(), p.cfg.DrainTimeout)
		defer cancel()
		go func() {
			if err := p.h1.Shutdown(dctx); err != nil {
				p.h1.Close()
			}
		}()
		if err := p.httpSrv.Shutdown(dctx); err != nil {
			p.httpSrv.Close()
		}
	})
	defer stopHTTP()
	// The tunnel servers stop together: at ctx's end, or when either fails.
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	h3Done := make(chan error, 1)
	if p.hb3 != nil {
		go func() {
			err := p.hb3.Serve(sctx, p.cfg.PacketConn)
			stop()
			h3Done <- err
		}()
	} else {
		h3Done <- nil
	}
	err := p.hb.Serve(sctx, p.cfg.Listener)
	stop()
	if err3 := <-h3Done; err == nil {
		err = err3
	}
	p.conns.Close()
	if herr := <-httpDone; herr != nil && !errors.Is(herr, http.ErrServerClosed) && !errors.Is(herr, net.ErrClosed) && err == nil {
		err = herr
	}
	p.l4.Wait()
	p.CloseIdleConnections()
	p.client.Close()
	p.client3.Close()
	return err
}

// tunnelInfo is what a request knows of the HBONE stream it came on.
type tunnelInfo struct {
	peer      spiffeid.ID
	authz     l7authz.Peer
	peerAddr  netip.AddrPort // the tunnel's client (the source pod's address, in-pod ztunnel)
	remote    netip.Addr     // Forwarded for=, when given
	authority netip.AddrPort // the original destination

	// Derived once per tunnel (memo.go): peerAddr and authority as
	// strings, and the source peer in the latest view a request saw.
	peerAddrStr, authorityStr string
	src                       atomic.Pointer[srcMemo]
	// transport carried the tunnel: transportH2 or transportH3, as flow
	// records name it.
	transport string
}

// The transports a tunnel comes over, as flow records name them
// (ztunnel's names).
const (
	transportH2 = "hbone"
	transportH3 = "hbone3"
)

// newTunnelInfo describes a tunnel from peer at peerAddr to authority.
func newTunnelInfo(peer spiffeid.ID, peerAddr, authority netip.AddrPort) *tunnelInfo {
	info := &tunnelInfo{peer: peer, authz: l7authz.PeerOf(peer), peerAddr: peerAddr, authority: authority,
		authorityStr: authority.String(), transport: transportH2}
	if peerAddr.IsValid() {
		info.peerAddrStr = peerAddr.String()
	}
	return info
}

// authorizeTunnel accepts a stream whose :authority is a service VIP with
// that port, or a workload's address: the destinations a waypoint serves.
// The caller's identity was verified by hbone; policy is per request.
func (p *Proxy) authorizeTunnel(_ context.Context, st *hbone.Stream) error {
	if st.Protocol == hbone.ProtocolConnectUDP {
		return fmt.Errorf("%w: a waypoint carries TCP only, not connect-udp (ztunnel tunnels UDP straight to the endpoint)", hbone.ErrBadDestination)
	}
	view := p.cfg.Store.Current()
	dst := view.Resolve(p.cfg.Network, st.Authority)
	switch {
	case dst.Kind == state.ToService && dst.ServicePort == nil:
		return fmt.Errorf("%w: service %s has no port %d", hbone.ErrBadDestination, state.ServiceKey(dst.Service), st.Authority.Port())
	case dst.Kind == state.ToService && !p.isThisWaypoint(view, dst.Service.GetWaypoint()):
		return fmt.Errorf("%w: service %s does not use waypoint %s", hbone.ErrBadDestination, state.ServiceKey(dst.Service), p.gwKey)
	case dst.Kind == state.ToWorkload && !p.isThisWaypoint(view, dst.Workload.GetWaypoint()):
		return fmt.Errorf("%w: workload %s does not use waypoint %s", hbone.ErrBadDestination, dst.Workload.GetUid(), p.gwKey)
	case dst.Kind == state.Passthrough:
		return fmt.Errorf("%w: %s is neither a service nor a workload of the mesh", hbone.ErrBadDestination, st.Authority)
	}
	return nil
}

// isThisWaypoint reports whether gw, the waypoint a service or workload
// uses, is this one: its Service (by hostname or address) is the one
// istiod-lite names after this waypoint's Gateway. The waypoint serves
// only what is bound to it, as Istio's does: anything else would let a
// client relay through it, reaching destinations as the waypoint's
// identity (or the waypoint itself, in a loop).
func (p *Proxy) isThisWaypoint(v *state.View, gw *workloadapi.GatewayAddress) bool {
	svc := v.WaypointService(p.cfg.Network, gw)
	return svc != nil && svc.GetNamespace() == p.cfg.GatewayNamespace && svc.GetName() == p.cfg.GatewayName
}

// serveStream serves an accepted stream, come over transport, in-process:
// the proxy's HTTP server (or L4 forwarding) reads and writes the tunnel
// itself.
func (p *Proxy) serveStream(st *hbone.Stream, c net.Conn, transport string) {
	info := newTunnelInfo(st.Peer, st.PeerAddr, st.Authority)
	info.remote, _ = hbone.ParseForwardedFor(st.Header().Get("Forwarded"))
	info.transport = transport
	p.serveTunnel(c, info)
}

// tunnelEnded records the streams over transport refused before any
// request.
func (p *Proxy) tunnelEnded(transport string) func(hbone.StreamResult) {
	return func(r hbone.StreamResult) {
		if r.Status == http.StatusOK || p.cfg.FlowLog == nil {
			return
		}
		view := p.cfg.Store.Current()
		f := telemetry.Flow{Start: r.Start, Duration: r.Duration, Reporter: "waypoint", Decision: telemetry.Deny,
			Src: p.srcPeer(view, &tunnelInfo{peer: r.Peer, peerAddr: r.PeerAddr}), Security: "mutual_tls", Transport: transport}
		f.Dst.Addr = r.Authority.String()
		if r.Err != nil {
			f.Error = r.Err.Error()
		}
		p.cfg.FlowLog.Record(f)
	}
}
