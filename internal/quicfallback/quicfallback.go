// Package quicfallback chooses the transport of an HBONE tunnel: HBONE/3
// (QUIC) where the destination asks for it, with HTTP/2 as the fallback
// within one connect timeout, and a memory of the addresses where QUIC
// failed so that the next tunnels there go straight to HTTP/2 for a while.
// ztunnel and the waypoint dial their tunnels through it.
package quicfallback

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// Defaults.
const (
	// DefaultRetryAfter is how long a QUIC failure sends an address's
	// tunnels over HTTP/2 before QUIC is tried again.
	DefaultRetryAfter = 5 * time.Minute
	// DefaultMaxRemembered bounds the addresses remembered (a node talks to
	// far fewer pods than this; beyond it the soonest to expire is dropped).
	DefaultMaxRemembered = 4096
)

// Budget is the share of the connect timeout a QUIC dial may take before
// the tunnel falls back to HTTP/2, which then has the rest.
//
// The two are tried one after the other, not raced: a CONNECT that
// succeeds opens a connection to the destination app, so racing would open
// a second, spurious one whenever both transports work. Half keeps the
// total within one connect timeout, is far above a healthy handshake (a
// round trip or two), and the wait is paid once per destination per
// retry period, since the failure is remembered.
func Budget(connectTimeout time.Duration) time.Duration { return connectTimeout / 2 }

// MayFallBack reports whether a failed QUIC dial may be retried over
// HTTP/2: yes for any failure before the peer answered the CONNECT (UDP
// blocked, handshake timeout, ICMP error, the stream or connection reset);
// no once it answered — 400, 401, 503 are the peer's decision and must not
// be asked again over another transport (fail closed) — and no when the
// caller gave up (parent ended: no time left, or the caller is stopping).
func MayFallBack(parent context.Context, err error) bool {
	var se *hbone.StatusError
	return !errors.As(err, &se) && parent.Err() == nil
}

// Dial opens a tunnel to t. When wantQUIC holds and QUIC to t.Address did
// not fail lately, over QUIC (overQUIC) within budget; if that fails
// before the peer answered (MayFallBack), the failure is remembered in f,
// onFallback hears of it with t.Address (fresh: the address was not
// remembered already, to log once per period), and the tunnel goes over
// HTTP/2 (overH2) with
// what is left of ctx. It returns the transport that carried the tunnel,
// or that failed last.
func Dial[T any](ctx context.Context, f *Failures, t hbone.Target, wantQUIC bool, budget time.Duration,
	overQUIC, overH2 func(context.Context, hbone.Target) (T, error), onFallback func(addr netip.AddrPort, err error, fresh bool)) (T, workloadapi.TunnelTransport, error) {
	if wantQUIC && !f.Avoid(t.Address) {
		qctx, cancel := context.WithTimeout(ctx, budget)
		c, err := overQUIC(qctx, t)
		cancel()
		if err == nil || !MayFallBack(ctx, err) {
			return c, workloadapi.TunnelTransport_QUIC, err
		}
		fresh := f.Failed(t.Address)
		if onFallback != nil {
			onFallback(t.Address, err, fresh)
		}
	}
	c, err := overH2(ctx, t)
	return c, workloadapi.TunnelTransport_H2, err
}

// Failures remembers, per tunnel address, that QUIC failed there, so
// that tunnels to it go straight to HTTP/2 until the memory expires. It is
// bounded and safe for concurrent use.
type Failures struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu    sync.Mutex                   // guards until
	until map[netip.AddrPort]time.Time // address → end of its HTTP/2-only period
}

// NewFailures remembers a failure for ttl (DefaultRetryAfter if 0), at
// most max addresses (DefaultMaxRemembered if 0), by the clock now
// (time.Now if nil).
func NewFailures(ttl time.Duration, max int, now func() time.Time) *Failures {
	if ttl <= 0 {
		ttl = DefaultRetryAfter
	}
	if max <= 0 {
		max = DefaultMaxRemembered
	}
	if now == nil {
		now = time.Now
	}
	return &Failures{ttl: ttl, max: max, now: now, until: make(map[netip.AddrPort]time.Time)}
}

// RetryAfter is how long a failure is remembered.
func (f *Failures) RetryAfter() time.Duration { return f.ttl }

// Avoid reports whether QUIC to addr failed less than RetryAfter ago.
func (f *Failures) Avoid(addr netip.AddrPort) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	end, ok := f.until[addr]
	if !ok {
		return false
	}
	if !f.now().Before(end) {
		delete(f.until, addr)
		return false
	}
	return true
}

// Failed remembers a QUIC failure at addr for RetryAfter from now. It
// reports whether addr was not remembered already (to log once per
// period).
func (f *Failures) Failed(addr netip.AddrPort) bool {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	end, known := f.until[addr]
	fresh := !known || !now.Before(end)
	if !known && len(f.until) >= f.max {
		f.evictLocked(now)
	}
	f.until[addr] = now.Add(f.ttl)
	return fresh
}

// evictLocked makes room: it drops the expired entries, or if none, the
// one that expires first.
func (f *Failures) evictLocked(now time.Time) {
	var first netip.AddrPort
	var firstEnd time.Time
	for a, end := range f.until {
		if !now.Before(end) {
			delete(f.until, a)
			continue
		}
		if firstEnd.IsZero() || end.Before(firstEnd) {
			first, firstEnd = a, end
		}
	}
	if len(f.until) >= f.max {
		delete(f.until, first)
	}
}

// Len is the number of addresses remembered, expired ones included.
func (f *Failures) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.until)
}
