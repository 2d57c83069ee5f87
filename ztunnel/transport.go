package ztunnel

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/redirect"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/ztunnel/outbound"
)

// Defaults of the QUIC fallback.
const (
	// DefaultQUICRetryAfter is how long a QUIC failure sends a destination's
	// tunnels over HTTP/2 before QUIC is tried again.
	DefaultQUICRetryAfter = 5 * time.Minute
	// maxQUICFailures bounds the destinations remembered (a node talks to
	// far fewer pods than this; beyond it the soonest to expire is dropped).
	maxQUICFailures = 4096
)

// quicBudget is the share of the connect timeout a QUIC dial may take
// before the tunnel falls back to HTTP/2, which then has the rest.
//
// The two are tried one after the other, not raced: a CONNECT that
// succeeds opens a connection to the destination app, so racing would open
// a second, spurious one whenever both transports work. Half keeps the
// total within one connect timeout, is far above a healthy handshake (a
// round trip or two), and the wait is paid once per destination per
// QUICRetryAfter, since the failure is remembered.
func quicBudget(connectTimeout time.Duration) time.Duration { return connectTimeout / 2 }

// fallBackToH2 reports whether a failed QUIC dial may be retried over
// HTTP/2: yes for any failure before the peer answered the CONNECT (UDP
// blocked, handshake timeout, ICMP error, the stream or connection reset);
// no once it answered — 400, 401, 503 are the peer's decision and must not
// be asked again over another transport (fail closed) — and no when the
// caller gave up (parent ended: no time left, or the pod is stopping).
func fallBackToH2(parent context.Context, err error) bool {
	var se *hbone.StatusError
	return !errors.As(err, &se) && parent.Err() == nil
}

// quicFailures remembers, per tunnel address, that QUIC failed there, so
// that tunnels to it go straight to HTTP/2 until the memory expires. It is
// bounded and safe for concurrent use; now is injected for tests.
type quicFailures struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu    sync.Mutex                   // guards until
	until map[netip.AddrPort]time.Time // address → end of its HTTP/2-only period
}

func newQUICFailures(ttl time.Duration, max int, now func() time.Time) *quicFailures {
	return &quicFailures{ttl: ttl, max: max, now: now, until: make(map[netip.AddrPort]time.Time)}
}

// avoid reports whether QUIC to addr failed less than ttl ago.
func (m *quicFailures) avoid(addr netip.AddrPort) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	end, ok := m.until[addr]
	if !ok {
		return false
	}
	if !m.now().Before(end) {
		delete(m.until, addr)
		return false
	}
	return true
}

// failed remembers a QUIC failure at addr for ttl from now. It reports
// whether addr was not remembered already (to log once per period).
func (m *quicFailures) failed(addr netip.AddrPort) bool {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	end, known := m.until[addr]
	fresh := !known || !now.Before(end)
	if !known && len(m.until) >= m.max {
		m.evictLocked(now)
	}
	m.until[addr] = now.Add(m.ttl)
	return fresh
}

// evictLocked makes room: it drops the expired entries, or if none, the
// one that expires first.
func (m *quicFailures) evictLocked(now time.Time) {
	var first netip.AddrPort
	var firstEnd time.Time
	for a, end := range m.until {
		if !now.Before(end) {
			delete(m.until, a)
			continue
		}
		if firstEnd.IsZero() || end.Before(firstEnd) {
			first, firstEnd = a, end
		}
	}
	if len(m.until) >= m.max {
		delete(m.until, first)
	}
}

// len is the number of addresses remembered, expired ones included.
func (m *quicFailures) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.until)
}

// dialTunnel opens rt's tunnel over the transport its peer asks for: QUIC,
// unless QUIC to that address failed lately, with HTTP/2 as the fallback
// within ctx (one connect timeout; see quicBudget and fallBackToH2), else
// HTTP/2. It returns the transport that carried the tunnel, or that failed
// last.
func (p *podProxy) dialTunnel(ctx context.Context, rt outbound.Route, from net.Addr) (net.Conn, workloadapi.TunnelTransport, error) {
	return dialPreferringQUIC(ctx, p, rt, from, p.client3.Dial, p.client.Dial)
}

// dialPreferringQUIC is dialTunnel's choice of transport for any kind of
// tunnel: overQUIC and overH2 open one for a target.
func dialPreferringQUIC[T any](ctx context.Context, p *podProxy, rt outbound.Route, from net.Addr,
	overQUIC, overH2 func(context.Context, hbone.Target) (T, error)) (T, workloadapi.TunnelTransport, error) {
	t := hbone.Target{
		Source: p.id, Destination: rt.Identity, Address: rt.TunnelAddr, Authority: rt.Target,
		Header: http.Header{"Forwarded": {"for=" + forwardedFor(from)}},
	}
	if rt.Transport == workloadapi.TunnelTransport_QUIC && !p.z.quicDown.avoid(rt.TunnelAddr) {
		qctx, cancel := context.WithTimeout(ctx, quicBudget(p.z.cfg.ConnectTimeout))
		c, err := overQUIC(qctx, t)
		cancel()
		if err == nil || !fallBackToH2(ctx, err) {
			return c, workloadapi.TunnelTransport_QUIC, err
		}
		p.z.quicFailed(rt.TunnelAddr, err)
	}
	c, err := overH2(ctx, t)
	return c, workloadapi.TunnelTransport_H2, err
}

// listenQUIC opens the UDP socket of one outbound QUIC connection inside
// the pod's namespace, from the pod's address and marked as ztunnel's own.
func (p *podProxy) listenQUIC(_ context.Context, _ spiffeid.ID, dst netip.AddrPort) (net.PacketConn, error) {
	local := netip.AddrPortFrom(p.addrFor(dst.Addr()), 0)
	c, err := netns.ListenUDP(p.nsPath, local.String(), netns.WithMark(redirect.ZtunnelMark))
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return c, nil
}

// addrFor is the pod's address of dst's family, else that family's
// unspecified address (the kernel picks).
func (p *podProxy) addrFor(dst netip.Addr) netip.Addr {
	v4 := dst.Unmap().Is4()
	for _, a := range p.ips {
		if a.Is4() == v4 {
			return a
		}
	}
	if v4 {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// transportName names a tunnel transport in flow records and metrics.
func transportName(t workloadapi.TunnelTransport) string {
	if t == workloadapi.TunnelTransport_QUIC {
		return telemetry.TransportHBONE3
	}
	return telemetry.TransportHBONE
}
