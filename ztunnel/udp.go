package ztunnel

// UDP through the mesh (Config.CaptureUDP): the source side's flow table
// and relays, and the destination side's socket to the app. See the
// package comment for the design.

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/ambientmesh/ambient/internal/connectudp"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/redirect"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/internal/udpcapture"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/ztunnel/outbound"
)

// DefaultUDPIdleTimeout is Config.UDPIdleTimeout when unset: a UDP flow
// with no datagram either way for a minute is over (see
// hbone.DefaultUDPIdleTimeout for why a minute).
const DefaultUDPIdleTimeout = hbone.DefaultUDPIdleTimeout

// Bounds of one pod's outbound UDP.
const (
	// maxUDPFlows bounds a pod's open UDP flows; datagrams that would
	// open one more are dropped (logged once per burst) until some expire.
	maxUDPFlows = 4096
	// udpFlowQueue is how many of a flow's datagrams wait for its tunnel
	// (while it is dialed, or when the tunnel is slower than the app);
	// beyond it they are dropped, as a full socket buffer drops them.
	udpFlowQueue = 256
	// udpSmallBuf is the size of the pooled buffers queued datagrams are
	// copied into; larger ones get a buffer of their own.
	udpSmallBuf = 2048
	// udpRefusedHold is how long a flow that could not be opened (refused
	// by policy, no route, failed dial) stays in the table dropping the
	// app's datagrams, so that a chatty app is not re-dialled, and
	// recorded, once per datagram.
	udpRefusedHold = 5 * time.Second
)

var udpBufs = sync.Pool{New: func() any { b := make([]byte, udpSmallBuf); return &b }}

// errUDPDisabled refuses a connect-udp stream on a node without UDP
// capture: the app's replies would leave the pod outside the tunnel.
var errUDPDisabled = errors.New("ztunnel: UDP is not enabled on this node (start ztunnel with --capture-udp): refusing a UDP tunnel whose replies would bypass the mesh")

// udpFlowKey identifies an outbound flow: the app's socket and where it
// sent the datagram.
type udpFlowKey struct{ app, dst netip.AddrPort }

// udpOutbound serves one pod's captured outbound UDP: one read loop on
// the capture listener, dispatching to a flow per key.
type udpOutbound struct {
	p  *podProxy
	ln *udpcapture.Listener

	mu      sync.Mutex // guards the fields below
	flows   map[udpFlowKey]*udpFlow
	replies map[netip.AddrPort]*sharedReply // by original destination
	closed  bool
	full    bool // maxUDPFlows reached and logged
}

// sharedReply is the reply socket of one original destination, shared
// by its flows and closed with the last.
type sharedReply struct {
	r    *udpcapture.Reply
	refs int
}

func newUDPOutbound(p *podProxy, ln *udpcapture.Listener) *udpOutbound {
	return &udpOutbound{p: p, ln: ln, flows: make(map[udpFlowKey]*udpFlow), replies: make(map[netip.AddrPort]*sharedReply)}
}

// udpReadLoop reads the pod's captured datagrams until the listener
// closes, handing each to its flow.
func (u *udpOutbound) udpReadLoop(ctx context.Context) {
	buf := make([]byte, connectudp.MaxUDPPayload)
	for {
		n, app, dst, err := u.ln.ReadFrom(buf)
		if errors.Is(err, udpcapture.ErrNotCaptured) {
			continue
		}
		if err != nil {
			if !u.isClosed() {
				u.p.z.log.Warn("UDP capture read failed; the pod's outbound UDP is no longer served", "pod", u.p.uid, "err", err)
			}
			return
		}
		u.dispatch(ctx, buf[:n], udpFlowKey{app: app, dst: dst})
	}
}

func (u *udpOutbound) isClosed() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.closed
}

// dispatch queues a datagram on its flow, opening the flow if needed.
func (u *udpOutbound) dispatch(ctx context.Context, b []byte, key udpFlowKey) {
	u.mu.Lock()
	f, ok := u.flows[key]
	if !ok {
		if u.closed {
			u.mu.Unlock()
			return
		}
		if len(u.flows) >= maxUDPFlows {
			logIt := !u.full
			u.full = true
			u.mu.Unlock()
			if logIt {
				u.p.z.log.Warn("too many UDP flows; dropping datagrams of new ones", "pod", u.p.uid, "max", maxUDPFlows)
			}
			return
		}
		u.full = false
		f = &udpFlow{u: u, key: key, queue: make(chan *[]byte, udpFlowQueue), done: make(chan struct{})}
		u.flows[key] = f
		u.p.wg.Add(1) // the read loop holds the group: no race with stop's Wait
		u.p.udpFlowStarted()
		go f.udpFlowRun(ctx)
	}
	u.mu.Unlock()
	var bp *[]byte
	if len(b) <= udpSmallBuf {
		bp = udpBufs.Get().(*[]byte)
	} else {
		nb := make([]byte, len(b))
		bp = &nb
	}
	*bp = (*bp)[:copy((*bp)[:cap(*bp)], b)]
	select {
	case f.queue <- bp:
	default: // the flow is behind: dropped, as by a full socket buffer
		putUDPBuf(bp)
	}
}

func putUDPBuf(bp *[]byte) {
	if cap(*bp) == udpSmallBuf {
		udpBufs.Put(bp)
	}
}

// close stops the read loop and ends every flow (shutdown or un-enrol).
func (u *udpOutbound) close() {
	u.mu.Lock()
	u.closed = true
	flows := make([]*udpFlow, 0, len(u.flows))
	for _, f := range u.flows {
		flows = append(flows, f)
	}
	u.mu.Unlock()
	u.ln.Close()
	for _, f := range flows {
		f.Close()
	}
}

// acquireReply returns the reply socket of original destination dst,
// opening it for the first flow.
func (u *udpOutbound) acquireReply(dst netip.AddrPort) (*udpcapture.Reply, error) {
	u.mu.Lock()
	if sr, ok := u.replies[dst]; ok {
		sr.refs++
		u.mu.Unlock()
		return sr.r, nil
	}
	u.mu.Unlock()
	r, err := udpcapture.ListenReply(u.p.nsPath, dst) // outside the lock: it enters the netns
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if sr, ok := u.replies[dst]; ok { // another flow opened one meanwhile
		sr.refs++
		r.Close()
		return sr.r, nil
	}
	u.replies[dst] = &sharedReply{r: r, refs: 1}
	return r, nil
}

// releaseReply lets go of dst's reply socket, closing it with the last flow.
func (u *udpOutbound) releaseReply(dst netip.AddrPort) {
	u.mu.Lock()
	defer u.mu.Unlock()
	sr, ok := u.replies[dst]
	if !ok {
		return
	}
	if sr.refs--; sr.refs == 0 {
		sr.r.Close()
		delete(u.replies, dst)
	}
}

// debugFlows appends the open flows to conns, as /debug/connections shows
// them: from the app's socket to the original destination.
func (u *udpOutbound) debugFlows(conns []ConnDebug) []ConnDebug {
	u.mu.Lock()
	defer u.mu.Unlock()
	for k := range u.flows {
		conns = append(conns, ConnDebug{Direction: "outbound", Protocol: "udp", Local: k.app.String(), Remote: k.dst.String()})
	}
	return conns
}

// udpFlow is one outbound UDP flow. To hbone.RelayDatagrams it is the
// app's side, a datagram conn: Read returns the app's next datagram,
// Write answers the app from the original destination.
type udpFlow struct {
	u     *udpOutbound
	key   udpFlowKey
	queue chan *[]byte  // the app's datagrams, filled by the read loop
	done  chan struct{} // closed by Close
	once  sync.Once
	reply *udpcapture.Reply // set before the relay starts
}

// udpFlowRun plans, dials and relays one flow until it ends, then
// records it.
func (f *udpFlow) udpFlowRun(ctx context.Context) {
	p := f.u.p
	defer p.wg.Done()
	defer f.Close()
	src, start := p.workload(), time.Now()
	srcAddr := net.UDPAddrFromAddrPort(f.key.app)
	flow := telemetry.Flow{Start: start, Reporter: "source", Decision: telemetry.Allow, Protocol: telemetry.ProtocolUDP,
		Src: peerOf(src, p.id, srcAddr), Dst: telemetry.Peer{Addr: f.key.dst.String()}}
	end := func(flow telemetry.Flow, err error) {
		flow.Protocol, flow.Error = telemetry.ProtocolUDP, udpErrString(err)
		p.endOutbound(flow, func() {})
	}
	refused := func(flow telemetry.Flow, err error) {
		end(flow, err)
		f.dropFor(udpRefusedHold)
	}
	rt, err := outbound.PlanUDP(p.z.cfg.Store.Current(), p.z.cfg.Network, f.key.dst, p.z.rand)
	if err != nil {
		refused(flow, err)
		return
	}
	if f.reply, err = f.u.acquireReply(f.key.dst); err != nil {
		refused(p.outboundFlow(src, srcAddr, rt, start), err)
		return
	}
	defer f.u.releaseReply(f.key.dst)
	dctx, cancel := context.WithTimeout(ctx, p.z.cfg.ConnectTimeout)
	var tunnel hbone.DatagramTunnel
	if rt.Kind == outbound.Tunnel {
		tunnel, rt.Transport, err = p.dialUDP(dctx, rt, f.key.app)
	} else {
		tunnel, err = p.dialUDPPassthrough(dctx, rt.Target)
	}
	cancel()
	flow = p.outboundFlow(src, srcAddr, rt, start)
	if err != nil {
		var se *hbone.StatusError
		if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
			flow.Decision = telemetry.Deny
		}
		refused(flow, err)
		return
	}
	flow.Protocol = telemetry.ProtocolUDP
	p.z.opened(flow)
	toApp, fromApp, err := hbone.RelayDatagrams(tunnel, f, hbone.BridgeOptions{IdleTimeout: p.z.cfg.UDPIdleTimeout})
	flow.BytesSent, flow.BytesRecv = fromApp, toApp
	end(flow, err)
}

// dropFor keeps a flow that could not be opened in the table for d,
// dropping what the app sends meanwhile, or until the flow is closed.
func (f *udpFlow) dropFor(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case bp := <-f.queue:
			putUDPBuf(bp)
		case <-t.C:
			return
		case <-f.done:
			return
		}
	}
}

// udpErrString is a UDP flow's error for its record: none for the normal
// end of a UDP flow, idleness.
func udpErrString(err error) string {
	if errors.Is(err, hbone.ErrUDPIdle) {
		return ""
	}
	return errString(err)
}

// Read returns the app's next datagram.
func (f *udpFlow) Read(b []byte) (int, error) {
	select {
	case bp := <-f.queue:
		n := copy(b, *bp)
		putUDPBuf(bp)
		return n, nil
	case <-f.done:
		return 0, net.ErrClosed
	}
}

// Write sends b to the app from the original destination.
func (f *udpFlow) Write(b []byte) (int, error) { return f.reply.WriteTo(b, f.key.app) }

// Close ends the flow's app side and takes it out of the table, so that
// the app's next datagram opens a new flow. Safe to call more than once.
func (f *udpFlow) Close() error {
	f.once.Do(func() {
		f.u.mu.Lock()
		if f.u.flows[f.key] == f {
			delete(f.u.flows, f.key)
		}
		f.u.mu.Unlock()
		f.u.p.udpFlowEnded()
		close(f.done)
		for {
			select {
			case bp := <-f.queue:
				putUDPBuf(bp)
			default:
				return
			}
		}
	})
	return nil
}

// The rest of net.Conn, for hbone.RelayDatagrams.
func (f *udpFlow) LocalAddr() net.Addr              { return net.UDPAddrFromAddrPort(f.key.dst) }
func (f *udpFlow) RemoteAddr() net.Addr             { return net.UDPAddrFromAddrPort(f.key.app) }
func (f *udpFlow) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (f *udpFlow) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (f *udpFlow) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }

// dialUDP opens rt's UDP tunnel as the pod's identity over the transport
// its peer asks for, falling back from QUIC to HTTP/2 as dialTunnel does.
// Its Forwarded header names the app's socket, port included, so that the
// destination delivers the datagrams from that very address.
func (p *podProxy) dialUDP(ctx context.Context, rt outbound.Route, from netip.AddrPort) (hbone.DatagramTunnel, workloadapi.TunnelTransport, error) {
	overQUIC := func(ctx context.Context, t hbone.Target) (hbone.DatagramTunnel, error) {
		c, err := p.client3.DialUDP(ctx, t)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return c, nil
	}
	overH2 := func(ctx context.Context, t hbone.Target) (hbone.DatagramTunnel, error) {
		s, err := p.client.DialUDP(ctx, t)
		if err != nil {
			return nil, err
		}
		return h2UDPTunnel{s}, nil
	}
	return dialPreferringQUIC(ctx, p, rt, hbone.ForwardedFor(from, true), overQUIC, overH2)
}

// h2UDPTunnel is a connect-udp Session on an HTTP/2 stream as a relay's
// tunnel: CloseWrite sends END_STREAM, Abort resets the stream.
type h2UDPTunnel struct{ *connectudp.Session }

func (t h2UDPTunnel) CloseWrite() error {
	if cw, ok := t.Stream().(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (t h2UDPTunnel) Abort() { t.Session.Close() }

// dialUDPPassthrough opens a UDP socket in the pod's namespace, marked
// so that capture skips it, connected to dst: a flow to a destination
// outside the mesh (or not enrolled) leaves the pod as the app sent it,
// from the pod's address, and the replies come back to it.
func (p *podProxy) dialUDPPassthrough(ctx context.Context, dst netip.AddrPort) (hbone.DatagramTunnel, error) {
	c, err := netns.DialUDP(ctx, p.nsPath, dst.String(), netns.WithMark(redirect.ZtunnelMark))
	if err != nil {
		return nil, err
	}
	return passthroughUDP{c}, nil
}

// passthroughUDP is a connected UDP socket as a relay's tunnel. UDP has
// no half-close: CloseWrite closes it. An ICMP port unreachable loses a
// datagram, it does not end the flow.
type passthroughUDP struct{ c *net.UDPConn }

func (t passthroughUDP) ReadDatagram(b []byte) (int, error) {
	for {
		n, err := t.c.Read(b)
		if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
			continue
		}
		return n, err
	}
}

func (t passthroughUDP) WriteDatagram(b []byte) error {
	if _, err := t.c.Write(b); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
		return err
	}
	return nil
}

func (t passthroughUDP) CloseWrite() error { return t.c.Close() }
func (t passthroughUDP) Close() error      { return t.c.Close() }

// dialAppUDP connects an allowed connect-udp stream to the app inside
// the pod: a socket bound transparently to the tunnel peer's IP (the
// source pod's address) and the source app's port (from the Forwarded
// header, else an ephemeral one), so the app sees the remote app's socket
// as the source, and its replies come back to this socket. The port is
// only taken for the peer's own address: the IP is always the verified
// peer's.
func (p *podProxy) dialAppUDP(st *hbone.Stream, tunnel tunnelStream) (net.Conn, error) {
	if !p.z.cfg.CaptureUDP {
		return nil, errUDPDisabled
	}
	peer := st.PeerAddr.Addr().Unmap()
	from := netip.AddrPortFrom(peer, 0)
	if a, port := hbone.ParseForwardedFor(st.Header().Get("Forwarded")); a == peer {
		from = netip.AddrPortFrom(peer, port)
	}
	c, err := udpcapture.DialApp(p.nsPath, from, st.Authority)
	if err != nil && from.Port() != 0 {
		// The bind was refused (the address taken by a socket that does
		// not share it): the datagrams still arrive, from another port.
		c, err = udpcapture.DialApp(p.nsPath, netip.AddrPortFrom(peer, 0), st.Authority)
	}
	if err != nil {
		return nil, err
	}
	return p.track(c, tunnel), nil
}
