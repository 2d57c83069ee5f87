package quicfallback

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// clock is a test's clock: it moves only when told.
type clock struct{ t time.Time }

func newFakeClock() *clock               { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestFailures_RememberedForTTLThenTriedAgain(t *testing.T) {
	clk := newFakeClock()
	m := NewFailures(5*time.Minute, 10, clk.now)
	a := netip.MustParseAddrPort("10.244.2.2:15008")
	if m.Avoid(a) {
		t.Fatal("an address never failed is avoided")
	}
	if !m.Failed(a) {
		t.Fatal("first failure not reported as new")
	}
	clk.advance(5*time.Minute - time.Nanosecond)
	if !m.Avoid(a) {
		t.Fatal("forgotten before the period ended")
	}
	if m.Avoid(netip.MustParseAddrPort("10.244.2.3:15008")) {
		t.Fatal("another address is avoided")
	}
	clk.advance(time.Nanosecond)
	if m.Avoid(a) {
		t.Fatal("still avoided once the period ended: QUIC is never tried again")
	}
	if m.Len() != 0 {
		t.Fatalf("expired entry kept: %d entries", m.Len())
	}
	if !m.Failed(a) {
		t.Fatal("failure after expiry not reported as new")
	}
}

func TestFailures_RepeatedFailureExtendsQuietly(t *testing.T) {
	clk := newFakeClock()
	m := NewFailures(time.Minute, 10, clk.now)
	a := netip.MustParseAddrPort("10.244.2.2:15008")
	m.Failed(a)
	clk.advance(30 * time.Second)
	if m.Failed(a) {
		t.Fatal("a failure while remembered is reported as new (would log per connection)")
	}
	clk.advance(45 * time.Second) // 75 s after the first, 45 s after the second
	if !m.Avoid(a) {
		t.Fatal("the second failure did not extend the period")
	}
}

func TestFailures_Bounded(t *testing.T) {
	clk := newFakeClock()
	m := NewFailures(time.Minute, 3, clk.now)
	addr := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, 2, byte(i)}), 15008)
	}
	for i := range 3 {
		m.Failed(addr(i))
		clk.advance(time.Second)
	}
	m.Failed(addr(3)) // full: the one expiring first (0) goes
	if m.Len() != 3 || m.Avoid(addr(0)) || !m.Avoid(addr(1)) || !m.Avoid(addr(3)) {
		t.Fatalf("after overflow: %d entries, avoid 0=%v 1=%v 3=%v; want 3 with 0 evicted",
			m.Len(), m.Avoid(addr(0)), m.Avoid(addr(1)), m.Avoid(addr(3)))
	}
	clk.advance(time.Minute) // all expired
	m.Failed(addr(4))
	if m.Len() != 1 || !m.Avoid(addr(4)) {
		t.Fatalf("expired entries not dropped to make room: %d entries", m.Len())
	}
}

func TestMayFallBack_OnlyBeforeThePeerAnswered(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name   string
		parent context.Context
		err    error
		want   bool
	}{
		{"handshake timeout", live, fmt.Errorf("hbone3: waiting for tunnel connection: %w", context.DeadlineExceeded), true},
		{"no route", live, errors.New("hbone3: QUIC handshake: sendmsg: network is unreachable"), true},
		{"stream reset before the reply", live, errors.New("hbone3: CONNECT: stream reset"), true},
		{"401 denied by policy", live, &hbone.StatusError{Code: 401}, false},
		{"400 bad destination", live, fmt.Errorf("wrapped: %w", &hbone.StatusError{Code: 400}), false},
		{"503 upstream failed", live, &hbone.StatusError{Code: 503}, false},
		{"caller gave up", cancelled, context.Canceled, false},
	} {
		if got := MayFallBack(tc.parent, tc.err); got != tc.want {
			t.Errorf("%s: MayFallBack = %v, want %v", tc.name, got, tc.want)
		}
	}
	if b := Budget(5 * time.Second); b <= 0 || b >= 5*time.Second {
		t.Errorf("QUIC budget %v leaves HTTP/2 no time within the connect timeout", b)
	}
}

// TestDial_ChoosesFallsBackAndRemembers: QUIC when asked for, HTTP/2
// after a QUIC failure before any answer (remembered: the next dial skips
// QUIC, and onFallback hears it once as fresh), never HTTP/2 after the
// peer answered over QUIC, and HTTP/2 alone when QUIC is not asked for.
func TestDial_ChoosesFallsBackAndRemembers(t *testing.T) {
	clk := newFakeClock()
	f := NewFailures(time.Minute, 10, clk.now)
	target := hbone.Target{Address: netip.MustParseAddrPort("10.244.2.2:15008")}
	var quicErr error
	var quicCalls, h2Calls atomic.Int32
	overQUIC := func(ctx context.Context, _ hbone.Target) (string, error) {
		quicCalls.Add(1)
		if _, ok := ctx.Deadline(); !ok {
			t.Error("the QUIC dial has no deadline (its budget)")
		}
		if quicErr != nil {
			return "", quicErr
		}
		return "quic", nil
	}
	overH2 := func(context.Context, hbone.Target) (string, error) { h2Calls.Add(1); return "h2", nil }
	var fallbacks []bool
	onFallback := func(addr netip.AddrPort, _ error, fresh bool) {
		if addr != target.Address {
			t.Errorf("onFallback heard of %s, want %s", addr, target.Address)
		}
		fallbacks = append(fallbacks, fresh)
	}
	dial := func(want bool) (string, workloadapi.TunnelTransport, error) {
		return Dial(context.Background(), f, target, want, time.Second, overQUIC, overH2, onFallback)
	}

	if c, tr, err := dial(true); c != "quic" || tr != workloadapi.TunnelTransport_QUIC || err != nil {
		t.Fatalf("QUIC works: %q %v %v", c, tr, err)
	}
	if c, tr, _ := dial(false); c != "h2" || tr != workloadapi.TunnelTransport_H2 || quicCalls.Load() != 1 {
		t.Fatalf("QUIC not asked for: %q %v, %d QUIC dials", c, tr, quicCalls.Load())
	}
	quicErr = &hbone.StatusError{Code: 401}
	if c, tr, err := dial(true); tr != workloadapi.TunnelTransport_QUIC || err == nil || c != "" || h2Calls.Load() != 1 {
		t.Fatalf("refused over QUIC: %q %v %v, %d HTTP/2 dials; want the refusal, no HTTP/2", c, tr, err, h2Calls.Load())
	}
	quicErr = errors.New("hbone3: QUIC handshake: timeout")
	if c, tr, err := dial(true); c != "h2" || tr != workloadapi.TunnelTransport_H2 || err != nil {
		t.Fatalf("QUIC failing: %q %v %v; want HTTP/2", c, tr, err)
	}
	before := quicCalls.Load()
	if c, _, _ := dial(true); c != "h2" || quicCalls.Load() != before {
		t.Fatalf("after a failure QUIC was tried again at once (%q)", c)
	}
	clk.advance(time.Minute)
	dial(true) // tried again after the period: fails again, a fresh failure
	if fmt.Sprint(fallbacks) != "[true true]" {
		t.Errorf("onFallback heard %v, want two fresh failures", fallbacks)
	}
}
