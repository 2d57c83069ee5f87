package ztunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/authz"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/hbone3"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/quicfallback"
	"github.com/ambientmesh/ambient/internal/redirect"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/internal/udpcapture"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/ztunnel/outbound"
)

// podProxy serves one enrolled pod from inside its network namespace.
type podProxy struct {
	z      *Ztunnel
	uid    string
	nsPath string

	// Set by start, then read-only.
	nsFile  *os.File     // our own handle on the pod's netns: nsPath stays valid while we serve
	ips     []netip.Addr // the pod's addresses (IPv4 and IPv6 when dual-stack), unmapped
	id      spiffeid.ID
	src     *identity.Source
	client  *hbone.Client  // tunnels over HTTP/2
	client3 *hbone3.Client // tunnels over HTTP/3 (QUIC)
	lns     []net.Listener
	udp     *net.UDPConn // UDP 15008, HBONE/3; Serve closes it
	udpOut  *udpOutbound // captured outbound UDP (Config.CaptureUDP), or nil
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	up      atomic.Bool

	mu    sync.Mutex // guards the fields below
	w     *workloadapi.Workload
	conns map[*trackedConn]struct{} // open connections, for policy and shutdown
	// udpFlows counts the open outbound UDP flows (udpOutbound's): they
	// drain on shutdown as connections do.
	udpFlows int
	idle     chan struct{} // set while stop waits for conns and flows to end; closed when they do
}

func newPodProxy(z *Ztunnel, w *workloadapi.Workload, nsPath string) *podProxy {
	return &podProxy{z: z, uid: w.GetUid(), nsPath: nsPath, w: w, conns: make(map[*trackedConn]struct{})}
}

func (p *podProxy) workload() *workloadapi.Workload {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.w
}

func (p *podProxy) update(w *workloadapi.Workload) {
	p.mu.Lock()
	p.w = w
	p.mu.Unlock()
}

func (p *podProxy) serving() bool { return p.up.Load() }

// start gets the pod's certificate, installs capture and opens listeners.
func (p *podProxy) start(ctx context.Context) (err error) {
	w := p.workload()
	if len(w.GetAddresses()) == 0 {
		return errors.New("workload has no address")
	}
	for _, a := range w.GetAddresses() {
		ip, ok := netip.AddrFromSlice(a)
		if !ok {
			return fmt.Errorf("workload address %x is not an IP", a)
		}
		p.ips = append(p.ips, ip.Unmap())
	}
	if p.id, err = outbound.WorkloadID(w); err != nil {
		return err
	}
	// Hold the namespace ourselves: the path we were given (often the CNI
	// server's /proc/self/fd/N) may go away before we are done with it.
	if p.nsFile, err = os.Open(p.nsPath); err != nil {
		return fmt.Errorf("open pod network namespace: %w", err)
	}
	p.nsPath = fmt.Sprintf("/proc/self/fd/%d", p.nsFile.Fd())
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	p.src, err = p.z.cfg.Certs.Acquire(cctx, p.id)
	cancel()
	if err != nil {
		p.nsFile.Close()
		return err
	}
	defer func() {
		if err != nil {
			p.cleanup()
		}
	}()
	srv, srv3, err := p.newTunnels()
	if err != nil {
		return err
	}
	for _, port := range []int{redirect.OutboundPort, redirect.InboundPort, redirect.TunnelPort} {
		var opts []netns.Option
		if port == redirect.TunnelPort {
			opts = append(opts, netns.WithCongestionControl(p.z.cfg.TunnelCongestion))
		}
		ln, err := netns.ListenTCP(p.nsPath, fmt.Sprintf("0.0.0.0:%d", port), opts...)
		if err != nil {
			return err
		}
		p.lns = append(p.lns, ln)
	}
	// HBONE/3 beside HBONE, whatever the pod's own transport: which one a
	// client uses is its choice (from this pod's workload), and a change of
	// it needs no new socket. The capture rules leave UDP alone.
	if p.udp, err = netns.ListenUDP(p.nsPath, fmt.Sprintf("0.0.0.0:%d", redirect.TunnelPort), netns.WithMark(redirect.ZtunnelMark)); err != nil {
		return err
	}
	// The node's own connections (kubelet probes) are not captured, as in
	// Istio: a policy must never fail the pod's health checks.
	hosts, gwErr := redirect.DefaultGateways(p.nsPath)
	if gwErr != nil {
		p.z.log.Warn("pod's default gateway unknown; kubelet probes will be captured", "pod", p.uid, "err", gwErr)
	}
	if p.z.cfg.CaptureUDP {
		ln, err := udpcapture.Listen(p.nsPath, redirect.OutboundPort)
		if err != nil {
			return err
		}
		p.udpOut = newUDPOutbound(p, ln)
	}
	if err := redirect.Install(p.nsPath, redirect.Config{HostAddrs: hosts, CaptureUDP: p.z.cfg.CaptureUDP}); err != nil {
		return err
	}
	pctx, cancelPod := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = cancelPod
	p.wg.Add(4)
	go func() { defer p.wg.Done(); p.acceptLoop(pctx, p.lns[0], p.handleOutbound) }()
	go func() { defer p.wg.Done(); p.acceptLoop(pctx, p.lns[1], p.handlePlaintext) }()
	go func() { defer p.wg.Done(); srv.Serve(pctx, p.lns[2]) }()
	go func() { defer p.wg.Done(); p.serveHBONE3(pctx, srv3) }()
	if p.udpOut != nil {
		p.wg.Add(1)
		go func() { defer p.wg.Done(); p.udpOut.udpReadLoop(pctx) }()
	}
	p.up.Store(true)
	return nil
}

// newTunnels makes the pod's tunnel clients and servers, HTTP/2 and
// HTTP/3 alike: the same certificate, authorization, upstream dial, flow
// records and drain.
func (p *podProxy) newTunnels() (*hbone.Server, *hbone3.Server, error) {
	tlsFor := func(_, dst spiffeid.ID) (*tls.Config, error) { return identity.ClientConfig(p.src, p.src, dst), nil }
	var err error
	if p.client, err = hbone.NewClient(hbone.ClientConfig{
		TLSConfig: tlsFor,
		Dial: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return netns.DialTCP(ctx, p.nsPath, addr, netns.WithMark(redirect.ZtunnelMark), netns.WithCongestionControl(p.z.cfg.TunnelCongestion))
		},
		Logger: p.z.log,
	}); err != nil {
		return nil, nil, err
	}
	if p.client3, err = hbone3.NewClient(hbone3.ClientConfig{
		TLSConfig:    tlsFor,
		ListenPacket: p.listenQUIC,
		Logger:       p.z.log,
		// A handshake is never waited for past the QUIC share of the
		// connect timeout, so none lingers after its dialers fell back.
		HandshakeTimeout: quicfallback.Budget(p.z.cfg.ConnectTimeout),
	}); err != nil {
		return nil, nil, err
	}
	serverTLS := identity.ServerConfig(p.src, p.src, p.z.cfg.TrustDomain)
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig:     serverTLS,
		Authorize:     p.authorizeTunnel,
		Dial:          func(ctx context.Context, st *hbone.Stream) (net.Conn, error) { return p.dialApp(ctx, st, st) },
		OnStreamEnd:   func(r hbone.StreamResult) { p.tunnelEnded(r, telemetry.TransportHBONE) },
		OnConnRefused: p.tunnelRefused(telemetry.TransportHBONE),
		Logger:        p.z.log,
		DrainTimeout:  p.z.cfg.DrainTimeout,
		// UDP flows end on the destination side as on the source side.
		UDPIdleTimeout: p.z.cfg.UDPIdleTimeout,
	})
	if err != nil {
		return nil, nil, err
	}
	srv3, err := hbone3.NewServer(hbone3.ServerConfig{
		TLSConfig:     serverTLS,
		Authorize:     func(ctx context.Context, st *hbone3.Stream) error { return p.authorizeTunnel(ctx, &st.Stream) },
		Dial:          func(ctx context.Context, st *hbone3.Stream) (net.Conn, error) { return p.dialApp(ctx, &st.Stream, st) },
		OnStreamEnd:   func(r hbone.StreamResult) { p.tunnelEnded(r, telemetry.TransportHBONE3) },
		OnConnRefused: p.tunnelRefused(telemetry.TransportHBONE3),
		Logger:        p.z.log,
		DrainTimeout:  p.z.cfg.DrainTimeout,
		// UDP flows end on the destination side as on the source side.
		UDPIdleTimeout: p.z.cfg.UDPIdleTimeout,
	})
	if err != nil {
		return nil, nil, err
	}
	return srv, srv3, nil
}

// serveHBONE3 serves HBONE/3 on the pod's UDP 15008 until ctx ends.
func (p *podProxy) serveHBONE3(ctx context.Context, srv *hbone3.Server) {
	if err := srv.Serve(ctx, p.udp); err != nil {
		p.z.log.Warn("HBONE/3 server stopped", "pod", p.uid, "err", err)
	}
}

// tunnelRefused records a tunnel connection the server refused before any
// stream (the peer's certificate failed verification).
func (p *podProxy) tunnelRefused(transport string) func(net.Addr, error) {
	return func(remote net.Addr, err error) {
		p.z.record(telemetry.Flow{Start: time.Now(), Reporter: "destination", Decision: telemetry.Deny,
			Src: peerOf(nil, spiffeid.ID{}, remote), Dst: peerOf(p.workload(), p.id, nil),
			Security: "mutual_tls", Transport: transport, Error: err.Error()})
	}
}

// stop lets open connections and outbound UDP flows drain, stops the
// listeners and lets go of everything, within DrainTimeout. With
// removeCapture (the pod leaves the mesh) the rules and listeners go
// first, so new connections go plain at once. Without (ztunnel exits) the
// rules stay and the pod keeps being served, new connections and flows
// included, while the open ones drain (a UDP flow ends when idle for
// UDPIdleTimeout); after that its new connections are refused until the
// next ztunnel serves it.
func (p *podProxy) stop(removeCapture bool) {
	deadline := time.Now().Add(p.z.cfg.DrainTimeout)
	if removeCapture {
		p.up.Store(false)
		if err := redirect.Remove(p.nsPath); err != nil {
			p.z.log.Warn("removing capture rules", "pod", p.uid, "err", err)
		}
	} else {
		p.waitIdle(deadline)
		p.up.Store(false)
	}
	if p.cancel != nil {
		p.cancel()
	}
	for _, ln := range p.lns {
		ln.Close()
	}
	if p.udpOut != nil {
		p.udpOut.close() // the flows still open (at the drain deadline) end here
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		p.closeConns(func(*trackedConn) bool { return true })
		<-done
	}
	p.cleanup()
	if removeCapture {
		p.z.log.Info("pod unenrolled", "pod", p.uid)
	} else {
		p.z.log.Info("pod released; its capture rules stay for the next ztunnel", "pod", p.uid)
	}
}

// waitIdle returns once the pod has no open connection or UDP flow, or
// at deadline.
func (p *podProxy) waitIdle(deadline time.Time) {
	p.mu.Lock()
	if p.idleLocked() {
		p.mu.Unlock()
		return
	}
	idle := make(chan struct{})
	p.idle = idle
	p.mu.Unlock()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-idle:
	case <-timer.C:
	}
	p.mu.Lock()
	p.idle = nil
	p.mu.Unlock()
}

// cleanup lets go of what start acquired. The capture rules are left
// alone: a pod that cannot be served refuses connections (fail closed).
func (p *podProxy) cleanup() {
	p.closeConns(func(*trackedConn) bool { return true })
	for _, ln := range p.lns {
		ln.Close()
	}
	if p.udp != nil {
		p.udp.Close() // if Serve never ran; closing twice is harmless
	}
	if p.udpOut != nil {
		p.udpOut.close()
	}
	if p.client != nil {
		p.client.Close()
	}
	if p.client3 != nil {
		p.client3.Close()
	}
	if p.nsFile != nil {
		p.nsFile.Close()
	}
	p.z.cfg.Certs.Release(p.id)
}

// acceptLoop hands each accepted connection to handle, which calls done
// once the connection has ended (perhaps after it returned).
func (p *podProxy) acceptLoop(ctx context.Context, ln net.Listener, handle func(ctx context.Context, c *net.TCPConn, done func())) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				p.z.log.Warn("accept failed", "pod", p.uid, "addr", ln.Addr(), "err", err)
			}
			return
		}
		p.wg.Add(1)
		go handle(ctx, c.(*net.TCPConn), p.wg.Done)
	}
}

// handleOutbound carries one captured outbound connection of the pod. Once
// the connection is spliced it returns; the flow is recorded at the end.
func (p *podProxy) handleOutbound(ctx context.Context, c *net.TCPConn, done func()) {
	src, start := p.workload(), time.Now()
	flow := telemetry.Flow{Start: start, Reporter: "source", Decision: telemetry.Allow,
		Src: peerOf(src, p.id, c.RemoteAddr())}
	dst, err := redirect.OriginalDst(c)
	if err != nil {
		flow.Error = err.Error()
		c.Close()
		p.endOutbound(flow, done)
		return
	}
	flow.Dst.Addr = dst.String()
	if err := reservedPort(dst.Port()); err != nil && slices.Contains(p.ips, dst.Addr().Unmap()) {
		// Only a direct connection to the pod's own 15001 gets here.
		flow.Decision, flow.Error = telemetry.Deny, err.Error()
		abort(c)
		p.endOutbound(flow, done)
		return
	}
	rt, err := outbound.Plan(p.z.cfg.Store.Current(), p.z.cfg.Network, dst, p.z.rand)
	if err != nil {
		flow.Error = err.Error()
		abort(c)
		p.endOutbound(flow, done)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, p.z.cfg.ConnectTimeout)
	var up net.Conn
	if rt.Kind == outbound.Tunnel {
		up, rt.Transport, err = p.dialTunnel(dctx, rt, c.RemoteAddr())
	} else {
		up, err = netns.DialTCP(dctx, p.nsPath, rt.Target.String(), netns.WithMark(redirect.ZtunnelMark))
	}
	cancel()
	flow = p.outboundFlow(src, c.RemoteAddr(), rt, start)
	if err != nil {
		var se *hbone.StatusError
		if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
			flow.Decision = telemetry.Deny
		}
		flow.Error = err.Error()
		abort(c)
		p.endOutbound(flow, done)
		return
	}
	p.z.opened(flow)
	// The record is rebuilt at the end from what it was made of rather than
	// kept: an idle connection then holds a third of the memory.
	t, srcAddr, dstOf := p.track(up, nil), c.RemoteAddr(), keepRoute(rt)
	hbone.SpliceAsync(up, c, func(toApp, fromApp int64, err error) {
		p.untrack(t)
		flow := p.outboundFlow(src, srcAddr, dstOf.route(), start)
		flow.BytesSent, flow.BytesRecv, flow.Error = fromApp, toApp, errString(err)
		p.endOutbound(flow, done)
	})
}

// keptRoute is what an open outbound connection keeps of its route for
// its flow record: the tunnel's address is not needed and the destination's
// identity is derived again from its workload at the end (otherwise a
// string per connection). kind is narrowed so that the transport fits in
// the same 64 bytes.
type keptRoute struct {
	target   netip.AddrPort
	w        *workloadapi.Workload
	svc      *workloadapi.Service
	waypoint *workloadapi.Workload
	kind     uint8 // outbound.Kind
	quic     bool  // the tunnel is HBONE/3
}

func keepRoute(rt outbound.Route) keptRoute {
	return keptRoute{target: rt.Target, w: rt.Workload, svc: rt.Service, waypoint: rt.Waypoint,
		kind: uint8(rt.Kind), quic: rt.Transport == workloadapi.TunnelTransport_QUIC}
}

// route is the route kept, as far as a flow record needs it.
func (k keptRoute) route() outbound.Route {
	rt := outbound.Route{Kind: outbound.Kind(k.kind), Target: k.target, Workload: k.w, Service: k.svc, Waypoint: k.waypoint}
	if k.quic {
		rt.Transport = workloadapi.TunnelTransport_QUIC
	}
	if rt.Kind == outbound.Tunnel {
		peer := k.w
		if k.waypoint != nil {
			peer = k.waypoint
		}
		rt.Identity, _ = outbound.WorkloadID(peer) // it was routed by it: no error
	}
	return rt
}

// outboundFlow is the record of an outbound connection routed by rt, a
// tunnel carried over rt.Transport.
func (p *podProxy) outboundFlow(src *workloadapi.Workload, srcAddr net.Addr, rt outbound.Route, start time.Time) telemetry.Flow {
	f := telemetry.Flow{Start: start, Reporter: "source", Decision: telemetry.Allow,
		Src: peerOf(src, p.id, srcAddr), Transport: rt.Kind.String(), Security: "none"}
	if rt.Kind == outbound.Tunnel {
		f.Transport = transportName(rt.Transport)
	}
	// Through a waypoint, the peer is the waypoint's pod (the identity the
	// tunnel verified); the service and address are still the original ones.
	peer := rt.Workload
	if rt.Waypoint != nil {
		peer = rt.Waypoint
	}
	f.Dst = peerOf(peer, rt.Identity, net.TCPAddrFromAddrPort(rt.Target))
	f.Dst.Service = rt.Service.GetHostname()
	if rt.Kind == outbound.Tunnel {
		f.Security = "mutual_tls"
	}
	return f
}

// endOutbound records an outbound connection's flow and reports it done.
func (p *podProxy) endOutbound(flow telemetry.Flow, done func()) {
	flow.Duration = time.Since(flow.Start)
	p.z.record(flow)
	done()
}

// authorizeTunnel checks an inbound HBONE stream: it must be for this pod,
// and the pod's policies must allow it.
func (p *podProxy) authorizeTunnel(_ context.Context, st *hbone.Stream) error {
	if !slices.Contains(p.ips, st.Authority.Addr().Unmap()) {
		return fmt.Errorf("%w: %s is not an address of pod %s %v", hbone.ErrBadDestination, st.Authority, p.uid, p.ips)
	}
	if err := reservedPort(st.Authority.Port()); err != nil {
		return fmt.Errorf("%w: %w", hbone.ErrBadDestination, err)
	}
	if d := p.evaluate(st.Peer, st.PeerAddr.Addr(), st.Authority); !d.Allowed {
		return &deniedError{d}
	}
	return nil
}

// reservedPort is an error when port is one of ztunnel's listeners in the
// pod's namespace (outbound 15001, inbound plaintext 15006, HBONE 15008).
// Traffic for them is refused: delivered there it would come back to
// ztunnel as new traffic to the same port, and so on without end (one
// connection to a pod's 15001 once made ztunnel open tens of thousands),
// as Istio's ztunnel refuses them too.
func reservedPort(port uint16) error {
	if port == redirect.OutboundPort || port == redirect.InboundPort || port == redirect.TunnelPort {
		return fmt.Errorf("port %d is ztunnel's own in the pod, not the app's", port)
	}
	return nil
}

// evaluate runs the pod's L4 policies for a connection to dst, one of the
// pod's addresses.
func (p *podProxy) evaluate(peer spiffeid.ID, srcIP netip.Addr, dst netip.AddrPort) authz.Decision {
	view := p.z.cfg.Store.Current()
	w := view.Workload(p.uid)
	if w == nil {
		w = p.workload()
	}
	return authz.Evaluate(authz.Connection{
		SrcIdentity: peer, SrcIP: srcIP.Unmap(), DstIP: dst.Addr().Unmap(), DstPort: dst.Port(), DstNamespace: w.GetNamespace(),
	}, view.PoliciesFor(w))
}

// deniedError carries a policy decision through hbone's Authorize.
type deniedError struct{ d authz.Decision }

func (e *deniedError) Error() string {
	if e.d.Policy != "" {
		return fmt.Sprintf("denied by %s (%s)", e.d.Policy, e.d.Reason)
	}
	return "denied: " + e.d.Reason
}

// dialApp connects an allowed stream to the app inside the pod. tunnel is
// the stream itself (*hbone.Stream or *hbone3.Stream), st its request.
func (p *podProxy) dialApp(ctx context.Context, st *hbone.Stream, tunnel tunnelStream) (net.Conn, error) {
	if st.Protocol == hbone.ProtocolConnectUDP {
		return p.dialAppUDP(st, tunnel)
	}
	c, err := netns.DialTCP(ctx, p.nsPath, st.Authority.String(), netns.WithMark(redirect.ZtunnelMark))
	if err != nil {
		return nil, err
	}
	// Policy re-checks read the peer from the stream itself.
	return p.track(c, tunnel), nil
}

// tunnelEnded records the flow of a finished inbound tunnel stream that
// came over transport.
func (p *podProxy) tunnelEnded(r hbone.StreamResult, transport string) {
	view := p.z.cfg.Store.Current()
	src := view.WorkloadByAddr(p.z.cfg.Network, r.PeerAddr.Addr().Unmap())
	flow := telemetry.Flow{
		Start: r.Start, Duration: r.Duration, Reporter: "destination",
		Src:       peerOf(src, r.Peer, net.TCPAddrFromAddrPort(r.PeerAddr)),
		Dst:       peerOf(p.workload(), p.id, net.TCPAddrFromAddrPort(r.Authority)),
		BytesSent: r.BytesIn, BytesRecv: r.BytesOut,
		Decision: telemetry.Allow, Security: "mutual_tls", Transport: transport, Error: errString(r.Err),
	}
	if r.Protocol == hbone.ProtocolConnectUDP {
		flow.Protocol, flow.Error = telemetry.ProtocolUDP, udpErrString(r.Err)
	}
	var de *deniedError
	if errors.As(r.Err, &de) {
		flow.Decision, flow.Policy = telemetry.Deny, de.d.Policy
	}
	if t, ok := r.Upstream.(*trackedConn); ok {
		if d := t.closedBy.Load(); d != nil {
			flow.Decision, flow.Policy = telemetry.Deny, d.Policy
			flow.Error = "closed: no longer allowed by policy"
		}
	}
	if r.Status == 200 || flow.Decision == telemetry.Deny {
		p.z.opened(flow)
	}
	p.z.record(flow)
}

// handlePlaintext serves a captured inbound connection without a tunnel:
// allowed only when the pod's policies admit a connection with no identity
// (a STRICT PeerAuthentication does not).
func (p *podProxy) handlePlaintext(ctx context.Context, c *net.TCPConn, done func()) {
	defer done()
	flow := telemetry.Flow{Start: time.Now(), Reporter: "destination", Decision: telemetry.Allow,
		Security: "none", Transport: "plaintext", Src: peerOf(nil, spiffeid.ID{}, c.RemoteAddr())}
	defer func() {
		flow.Duration = time.Since(flow.Start)
		p.z.record(flow)
	}()
	dst, err := redirect.OriginalDst(c)
	if err != nil {
		flow.Error = err.Error()
		c.Close()
		return
	}
	flow.Dst = peerOf(p.workload(), p.id, net.TCPAddrFromAddrPort(dst))
	if err := reservedPort(dst.Port()); err != nil {
		flow.Decision, flow.Error = telemetry.Deny, err.Error()
		abort(c)
		return
	}
	src := netip.MustParseAddrPort(c.RemoteAddr().String()).Addr()
	if d := p.evaluate(spiffeid.ID{}, src, dst); !d.Allowed {
		flow.Decision, flow.Policy, flow.Error = telemetry.Deny, d.Policy, (&deniedError{d}).Error()
		abort(c)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, p.z.cfg.ConnectTimeout)
	app, err := netns.DialTCP(dctx, p.nsPath, dst.String(), netns.WithMark(redirect.ZtunnelMark))
	cancel()
	if err != nil {
		flow.Error = err.Error()
		abort(c)
		return
	}
	p.z.opened(flow)
	t := p.track(app, &inboundInfo{srcIP: src, dst: dst})
	defer p.untrack(t)
	toApp, fromApp, err := hbone.Splice(c, t)
	flow.BytesSent, flow.BytesRecv, flow.Error = toApp, fromApp, errString(err)
}

// inboundInfo is what policy needs to re-check an open inbound connection.
type inboundInfo struct {
	peer  spiffeid.ID
	srcIP netip.Addr
	dst   netip.AddrPort
}

// tunnelStream is an inbound tunnel stream: *hbone.Stream (HTTP/2) or
// *hbone3.Stream (HTTP/3). Abort resets it, ending its splice.
type tunnelStream interface{ Abort() }

// trackedConn is an open connection of the pod: closed on shutdown, and for
// inbound ones, when a policy change no longer allows them. origin is set
// at construction, then read-only.
type trackedConn struct {
	net.Conn
	p *podProxy
	// origin is what an inbound connection came from: the tunnelStream
	// spliced to it, or for plaintext an *inboundInfo; nil for outbound.
	// (One interface rather than a pointer per kind: no larger.)
	origin   any
	closedBy atomic.Pointer[authz.Decision]
}

// inbound returns what policy needs to re-check t; false for outbound.
// A tunnelled connection's comes from its stream (no copy kept per
// connection).
func (t *trackedConn) inbound() (inboundInfo, bool) {
	var st *hbone.Stream
	switch o := t.origin.(type) {
	case *inboundInfo:
		return *o, true
	case *hbone.Stream:
		st = o
	case *hbone3.Stream:
		st = &o.Stream
	default:
		return inboundInfo{}, false
	}
	return inboundInfo{peer: st.Peer, srcIP: st.PeerAddr.Addr(), dst: st.Authority}, true
}

func (p *podProxy) track(c net.Conn, origin any) *trackedConn {
	t := &trackedConn{Conn: c, p: p, origin: origin}
	p.mu.Lock()
	p.conns[t] = struct{}{}
	p.mu.Unlock()
	return t
}

func (p *podProxy) untrack(t *trackedConn) {
	p.mu.Lock()
	delete(p.conns, t)
	p.wakeIfIdleLocked()
	p.mu.Unlock()
}

// udpFlowStarted and udpFlowEnded count an outbound UDP flow.
func (p *podProxy) udpFlowStarted() {
	p.mu.Lock()
	p.udpFlows++
	p.mu.Unlock()
}

func (p *podProxy) udpFlowEnded() {
	p.mu.Lock()
	p.udpFlows--
	p.wakeIfIdleLocked()
	p.mu.Unlock()
}

// idleLocked reports whether the pod has no open connection or UDP flow.
func (p *podProxy) idleLocked() bool { return len(p.conns) == 0 && p.udpFlows == 0 }

// wakeIfIdleLocked ends waitIdle's wait once the pod is idle.
func (p *podProxy) wakeIfIdleLocked() {
	if p.idle != nil && p.idleLocked() {
		close(p.idle)
		p.idle = nil
	}
}

// Close implements net.Conn and forgets the connection.
func (t *trackedConn) Close() error {
	t.p.untrack(t)
	return t.Conn.Close()
}

// SyscallConn exposes the socket, so the tunnel's copy waits for
// readability without holding a buffer and writes to it directly.
func (t *trackedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := t.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

// CloseWrite passes a half-close on.
func (t *trackedConn) CloseWrite() error {
	if cw, ok := t.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return t.Conn.Close()
}

// closeConns resets the tracked connections for which pick is true.
func (p *podProxy) closeConns(pick func(*trackedConn) bool) int {
	p.mu.Lock()
	open := make([]*trackedConn, 0, len(p.conns))
	for t := range p.conns {
		open = append(open, t)
	}
	p.mu.Unlock()
	var victims []*trackedConn
	for _, t := range open {
		if pick(t) {
			victims = append(victims, t)
		}
	}
	for _, t := range victims {
		if tc, ok := t.Conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		if ts, ok := t.origin.(tunnelStream); ok {
			ts.Abort() // the splice closes t, even while it is parked
		} else {
			t.Close()
		}
	}
	return len(victims)
}

// enforce closes open inbound connections the current policies deny.
func (p *podProxy) enforce(view *state.View) {
	if w := view.Workload(p.uid); w != nil {
		p.update(w)
	}
	n := p.closeConns(func(t *trackedConn) bool {
		in, ok := t.inbound()
		if !ok || t.closedBy.Load() != nil { // outbound, or closing already
			return false
		}
		d := p.evaluate(in.peer, in.srcIP, in.dst)
		if d.Allowed {
			return false
		}
		t.closedBy.Store(&d)
		return true
	})
	if n > 0 {
		p.z.log.Info("closed connections no longer allowed", "pod", p.uid, "count", n)
	}
}

// abort resets a client connection we will not serve.
func abort(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}
