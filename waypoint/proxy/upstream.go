package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/quicfallback"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/waypoint/h1client"
	"github.com/ambientmesh/ambient/ztunnel/outbound"
)

// Upstream connections. A service's DestinationRule connectionPool sets
// two things about them, with Envoy's semantics:
//
//   - tcp.connectTimeout (Envoy's cluster connect_timeout): the time to
//     establish a connection to an endpoint — for a mesh workload the
//     whole HBONE connect (TCP and TLS to its ztunnel when no pooled
//     HBONE connection is there, then the CONNECT answered 200); nothing
//     when a pooled upstream connection is reused. Past it the attempt is
//     a connect failure (errConnectTimeout, a dialError).
//   - http.idleTimeout (Envoy's common_http_protocol_options.idle_timeout):
//     a pooled upstream connection with no request for that long is
//     closed (0: never).
//
// Each distinct pair has its own clients (upstreams): the h1client pool
// and the two http.Transports, whose dial function applies the connect
// timeout. Services with equal settings share them; a cluster with
// maxConnections has its own instead (ownClients). SetL7 builds the set
// a configuration needs, keeping the clients of settings still in use;
// the others are retired: their idle connections are closed at once, and
// those still carrying a request once the last request has finished.

// connSettings are a service's upstream connection settings.
type connSettings struct {
	connect time.Duration // to establish a connection; > 0
	idle    time.Duration // a pooled connection idle this long is closed; 0: never
}

// settingsOf is the connection settings of the connection pool policy
// pool: its connectTimeout and idleTimeout, def's where they are unset
// (nil pool: def).
func settingsOf(pool *waypointapi.ConnectionPool, def connSettings) connSettings {
	s := def
	if d := pool.GetConnectTimeout(); d != nil {
		s.connect = d.AsDuration()
	}
	if d := pool.GetIdleTimeout(); d != nil {
		s.idle = d.AsDuration()
	}
	return s
}

// checkConnSettings refuses connection settings the waypoint cannot apply:
// a connect timeout that is not positive (every connect would fail; Envoy
// refuses it too) and a negative idle timeout.
func checkConnSettings(pool *waypointapi.ConnectionPool) error {
	if d := pool.GetConnectTimeout(); d != nil && (d.CheckValid() != nil || d.AsDuration() <= 0) {
		return fmt.Errorf("connect_timeout %v is out of range (want > 0)", d.AsDuration())
	}
	if d := pool.GetIdleTimeout(); d != nil && (d.CheckValid() != nil || d.AsDuration() < 0) {
		return fmt.Errorf("idle_timeout %v is out of range (want ≥ 0, 0 for none)", d.AsDuration())
	}
	return nil
}

// upstreams are the upstream HTTP clients of one connSettings value.
type upstreams struct {
	h1sync *h1client.Client // HTTP/1.1 with no body or a buffered one: on the handler's goroutine
	h1, h2 *http.Transport  // HTTP/1.1 with a streamed body (or an upgrade); HTTP/2 (h2c)

	h2open openConns // HTTP/2 connections of h2 open to each endpoint

	inflight atomic.Int64 // requests using the clients
	retired  atomic.Bool  // no longer in the configuration
}

// openConns counts open connections by endpoint address ("ip:port").
type openConns struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *openConns) add(addr string, d int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = make(map[string]int)
	}
	if o.n[addr] += d; o.n[addr] <= 0 {
		delete(o.n, addr)
	}
}

// any reports whether a connection to addr is open.
func (o *openConns) any(addr string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[addr] > 0
}

// newUpstreams makes the clients of settings s, dialling with p.
func (p *Proxy) newUpstreams(s connSettings) *upstreams {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := p.dialEndpoint(ctx, network, addr, s.connect)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return c, nil
	}
	idle := s.idle // http.Transport: 0 is no limit, as for us
	h1idle := s.idle
	if h1idle == 0 {
		h1idle = -1 // h1client: negative is no limit
	}
	u := &upstreams{}
	u.h1sync = &h1client.Client{
		Dial:                   func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) },
		IdleTimeout:            h1idle,
		MaxIdlePerHost:         100,
		MaxResponseHeaderBytes: 64 << 10,
	}
	u.h1 = &http.Transport{
		DialContext:            dial,
		MaxIdleConnsPerHost:    100,
		IdleConnTimeout:        idle,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	var h2only http.Protocols
	h2only.SetUnencryptedHTTP2(true)
	u.h2 = &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := p.dialEndpoint(ctx, network, addr, s.connect)
			if err != nil {
				return nil, err
			}
			u.h2open.add(addr, 1)
			c.onClose(func() { u.h2open.add(addr, -1) })
			return c, nil
		},
		Protocols:              &h2only,
		IdleConnTimeout:        idle,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	return u
}

// acquire marks a request using u; release must follow.
func (u *upstreams) acquire() { u.inflight.Add(1) }

// release ends a request's use of u. The last request on retired clients
// closes their connections, which went idle as it finished.
func (u *upstreams) release() {
	if u.inflight.Add(-1) == 0 && u.retired.Load() {
		u.closeIdle()
	}
}

// retire takes u out of use: its idle connections are closed now, the
// others when the last request in flight ends (release). A Transport
// also closes the connections that go idle after closeIdle until it is
// asked for a connection again.
func (u *upstreams) retire() {
	u.retired.Store(true)
	u.closeIdle()
}

func (u *upstreams) closeIdle() {
	u.h1sync.CloseIdleConnections()
	u.h1.CloseIdleConnections()
	u.h2.CloseIdleConnections()
}

// upstreamsFor returns the clients configuration c needs, by settings:
// those of old still needed, new ones for new settings, and the default
// ones always; and those of old no longer needed, to retire.
func (p *Proxy) upstreamsFor(c *Compiled, old map[connSettings]*upstreams) (next map[connSettings]*upstreams, retired []*upstreams) {
	next = map[connSettings]*upstreams{p.defConn: p.defUp}
	for _, pol := range c.resilience {
		s := settingsOf(pol.pool(), p.defConn)
		if next[s] != nil {
			continue
		}
		if u := old[s]; u != nil {
			next[s] = u
		} else {
			next[s] = p.newUpstreams(s)
		}
	}
	for s, u := range old {
		if next[s] == nil {
			retired = append(retired, u)
		}
	}
	return next, retired
}

// upstreamsIn is the clients in table t for pol's settings; the default
// ones when t has none for them.
func (p *Proxy) upstreamsIn(t map[connSettings]*upstreams, pol *svcPolicy) *upstreams {
	if u := t[settingsOf(pol.pool(), p.defConn)]; u != nil {
		return u
	}
	return p.defUp
}

// errConnectTimeout: the upstream connection was not established within
// the service's connectTimeout. Envoy's reset reason "connection timeout".
var errConnectTimeout = errors.New("connection timeout")

// dialEndpoint is the upstream clients' dial function: dialConn within
// the connect timeout, the connection counting its requests
// (maxRequestsPerConnection) and, for an HTTP/2 request of a cluster with
// maxConnections, holding one of them while open (h2ConnSlot). The timeout expiring is errConnectTimeout,
// a dialError, and not the context's error: the caller's own deadline
// (a route timeout) stays distinguishable.
func (p *Proxy) dialEndpoint(ctx context.Context, network, addr string, timeout time.Duration) (*upConn, error) {
	release, err := h2ConnSlot(ctx)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := p.dialConn(cctx, network, addr)
	if err != nil {
		if release != nil {
			release()
		}
		if connectTimedOut(err, cctx.Err(), ctx.Err()) {
			return nil, &dialError{fmt.Errorf("waypoint: connect to %s: %w after %v (%v)", addr, errConnectTimeout, timeout, err)}
		}
		return nil, err
	}
	uc := &upConn{Conn: c}
	if release != nil {
		uc.onClose(release)
	}
	return uc, nil
}

// quicFailed logs a QUIC dial to addr that fell back to HTTP/2, once
// per period the failure is remembered (fresh).
func (p *Proxy) quicFailed(addr netip.AddrPort, err error, fresh bool) {
	if fresh {
		p.log.Info("QUIC tunnel failed; using HTTP/2 to this address for a while", "addr", addr, "for", p.quicDown.RetryAfter(), "err", err)
	}
}

// connectTimedOut reports whether a dial that failed with err, whose own
// context ended with dialCtxErr and its caller's with callerErr, failed
// for want of time under the connect timeout: its context expired while
// the caller's did not, or the dial's own bound (hbone's handshake
// timeout) did.
func connectTimedOut(err, dialCtxErr, callerErr error) bool {
	if callerErr != nil {
		return false
	}
	return dialCtxErr != nil || errors.Is(err, context.DeadlineExceeded)
}

// dialConn connects to an endpoint, addr "ip:port". A mesh workload is
// reached through HBONE at its ztunnel (ip:15008, :authority ip:port), as
// the waypoint's identity, verifying the workload's: over QUIC when the
// workload asks for it, with HTTP/2 as the fallback within ctx, as
// ztunnel chooses (internal/quicfallback); a workload outside the mesh
// over plain TCP.
func (p *Proxy) dialConn(ctx context.Context, _, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, &dialError{fmt.Errorf("waypoint: dial %s: %w", addr, err)}
	}
	w := p.cfg.Store.Current().WorkloadByAddr(p.cfg.Network, ap.Addr().Unmap())
	if w == nil || !state.Enrolled(w) {
		c, err := p.cfg.DialTCP(ctx, "tcp", addr)
		if err != nil {
			return nil, &dialError{fmt.Errorf("waypoint: dial %s: %w", addr, err)}
		}
		return c, nil
	}
	id, err := workloadID(w)
	if err != nil {
		return nil, &dialError{fmt.Errorf("waypoint: dial %s: %w", addr, err)}
	}
	t := hbone.Target{Source: p.cfg.Identity, Destination: id, Address: netip.AddrPortFrom(ap.Addr(), outbound.HBONEPort), Authority: ap}
	budget := quicfallback.Budget(p.defConn.connect)
	if dl, ok := ctx.Deadline(); ok {
		budget = quicfallback.Budget(time.Until(dl))
	}
	c, _, err := quicfallback.Dial(ctx, p.quicDown, t, outbound.TransportOf(w) == workloadapi.TunnelTransport_QUIC, budget,
		p.client3.Dial, p.client.Dial, p.quicFailed)
	if err != nil {
		return nil, &dialError{fmt.Errorf("waypoint: HBONE to %s as %s: %w", addr, id, err)}
	}
	return c, nil
}
