package identity_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
)

// fakeClock is a manual clock. Every NewTimer is reported on created, so a
// test knows when the rotation goroutine has finished a step and is waiting.
type fakeClock struct {
	created chan time.Duration

	mu sync.Mutex
	// mu guards the fields below.
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c     *fakeClock
	ch    chan time.Time
	at    time.Time
	armed bool
}

func newFakeClock(now time.Time) *fakeClock {
	return &fakeClock{now: now, created: make(chan time.Duration, 64)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) identity.Timer {
	c.mu.Lock()
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1), at: c.now.Add(d), armed: true}
	c.timers = append(c.timers, t)
	c.fireLocked()
	c.mu.Unlock()
	c.created <- d
	return t
}

// Advance moves the clock and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.fireLocked()
}

func (c *fakeClock) fireLocked() {
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.armed && !t.at.After(c.now) {
			t.armed = false
			t.ch <- c.now
			continue
		}
		if t.armed {
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

// nextTimer waits for the code under test to start a timer and returns its
// duration.
func (c *fakeClock) nextTimer(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.created:
		return d
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for the source to start a timer")
		return 0
	}
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.armed
	t.armed = false
	return was
}

var (
	workloadID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	start      = time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
)

// testCA is a CA on the fake clock plus a Fetch that goes through the real
// CSR path and can be made to fail.
type testCA struct {
	ca      *ca.Authority
	fail    atomic.Bool
	fetches atomic.Int32
	ttl     time.Duration
}

func newTestCA(t *testing.T, clock *fakeClock) *testCA {
	t.Helper()
	a, err := ca.NewSelfSigned(td, ca.Options{Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{ca: a, ttl: 24 * time.Hour}
}

func (c *testCA) fetch() identity.FetchFunc {
	sign := identity.CSRFetcher(func(_ context.Context, id spiffeid.ID, csrPEM []byte) ([]byte, []byte, error) {
		chain, err := c.ca.SignCSR(csrPEM, id, c.ttl)
		return chain, c.ca.RootsPEM(), err
	})
	return func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
		c.fetches.Add(1)
		if c.fail.Load() {
			return nil, nil, errors.New("CA unavailable")
		}
		return sign(ctx, id)
	}
}

func newSource(t *testing.T, clock *fakeClock, fetch identity.FetchFunc) *identity.Source {
	t.Helper()
	s, err := identity.NewSource(context.Background(), identity.SourceConfig{
		ID: workloadID, Fetch: fetch, Clock: clock, RetryBackoff: time.Second, MaxRetryBackoff: 8 * time.Second,
	})
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func serial(t *testing.T, s *identity.Source) string {
	t.Helper()
	svid, err := s.GetX509SVID()
	if err != nil {
		t.Fatalf("GetX509SVID: %v", err)
	}
	return svid.Certificates[0].SerialNumber.String()
}

func TestSource_RotatesAtHalfLife(t *testing.T) {
	leakCheck(t)
	clock := newFakeClock(start)
	tca := newTestCA(t, clock)
	s := newSource(t, clock, tca.fetch())

	first, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	leaf := first.Certificates[0]
	halfLife := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	if d := clock.nextTimer(t); d != halfLife.Sub(start) {
		t.Fatalf("rotation scheduled in %s, want %s (half of %s..%s)", d, halfLife.Sub(start), leaf.NotBefore, leaf.NotAfter)
	}

	clock.Advance(halfLife.Sub(start) - time.Second)
	if got := serial(t, s); got != leaf.SerialNumber.String() || tca.fetches.Load() != 1 {
		t.Fatalf("rotated before half life (fetches %d)", tca.fetches.Load())
	}
	clock.Advance(time.Second)
	clock.nextTimer(t) // the loop installed the new SVID and rescheduled
	if tca.fetches.Load() != 2 {
		t.Fatalf("fetches = %d, want 2", tca.fetches.Load())
	}
	second, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if second.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("still serving the first SVID after half life")
	}
	if !second.Certificates[0].NotAfter.After(leaf.NotAfter) {
		t.Errorf("new SVID expires %s, not after the old %s", second.Certificates[0].NotAfter, leaf.NotAfter)
	}
	if second.ID != workloadID {
		t.Errorf("ID = %s, want %s", second.ID, workloadID)
	}
}

func TestSource_NeverReturnsExpiredSVID(t *testing.T) {
	leakCheck(t)
	clock := newFakeClock(start)
	tca := newTestCA(t, clock)
	tca.ttl = time.Hour
	s := newSource(t, clock, tca.fetch())
	leaf := serial(t, s)
	first, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	notAfter := first.Certificates[0].NotAfter

	tca.fail.Store(true)
	// Half life, then retries after 1s, 2s, 4s, 8s, 8s, ... all failing.
	d := clock.nextTimer(t)
	var retries []time.Duration
	for clock.Now().Add(d).Before(notAfter) {
		clock.Advance(d)
		d = clock.nextTimer(t)
		if len(retries) < 5 {
			retries = append(retries, d)
		}
		if got := serial(t, s); got != leaf {
			t.Fatalf("serial changed while the CA is down")
		}
	}
	if want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second}; !slices.Equal(retries, want) {
		t.Errorf("retry delays = %v, want %v (doubling, capped)", retries, want)
	}

	deadline := clock.Now().Add(d) // of the pending retry, at or after NotAfter
	clock.Advance(notAfter.Sub(clock.Now()))
	if deadline.Equal(notAfter) {
		deadline = notAfter.Add(clock.nextTimer(t))
	}
	if svid, err := s.GetX509SVID(); !errors.Is(err, identity.ErrSVIDExpired) {
		t.Fatalf("GetX509SVID at NotAfter = %v, %v; want ErrSVIDExpired", svid, err)
	}

	tca.fail.Store(false)
	clock.Advance(deadline.Sub(clock.Now()))
	clock.nextTimer(t)
	svid, err := s.GetX509SVID()
	if err != nil {
		t.Fatalf("GetX509SVID after the CA came back: %v", err)
	}
	if !clock.Now().Before(svid.Certificates[0].NotAfter) || svid.Certificates[0].SerialNumber.String() == leaf {
		t.Errorf("still no fresh SVID after recovery")
	}
}

func TestNewSource_BlocksUntilFirstSVID(t *testing.T) {
	leakCheck(t)
	clock := newFakeClock(start)
	tca := newTestCA(t, clock)
	tca.fail.Store(true)
	type result struct {
		s   *identity.Source
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := identity.NewSource(context.Background(), identity.SourceConfig{ID: workloadID, Fetch: tca.fetch(), Clock: clock})
		done <- result{s, err}
	}()
	for i, want := range []time.Duration{time.Second, 2 * time.Second} {
		if d := clock.nextTimer(t); d != want {
			t.Fatalf("retry %d after %s, want %s", i+1, d, want)
		}
		select {
		case r := <-done:
			t.Fatalf("NewSource returned before an SVID arrived: %v", r.err)
		default:
		}
		if i == 1 {
			tca.fail.Store(false)
		}
		clock.Advance(want)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("NewSource: %v", r.err)
	}
	defer r.s.Close()
	if _, err := r.s.GetX509SVID(); err != nil {
		t.Errorf("GetX509SVID: %v", err)
	}
	if n := tca.fetches.Load(); n != 3 {
		t.Errorf("fetches = %d, want 3", n)
	}
}

func TestNewSource_GivesUpWhenContextEnds(t *testing.T) {
	leakCheck(t)
	clock := newFakeClock(start)
	tca := newTestCA(t, clock)
	tca.fail.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := identity.NewSource(ctx, identity.SourceConfig{ID: workloadID, Fetch: tca.fetch(), Clock: clock})
		done <- err
	}()
	clock.nextTimer(t)
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error = %v, want context.Canceled", err)
	}
	if err == nil || !strings.Contains(err.Error(), "CA unavailable") {
		t.Errorf("error %v should carry the last fetch error", err)
	}
}

func TestNewSource_RejectsBadFetchResults(t *testing.T) {
	leakCheck(t)
	clock := newFakeClock(start)
	tca := newTestCA(t, clock)
	other := newTestCA(t, clock)
	otherID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/someone-else")
	tests := []struct {
		name  string
		fetch identity.FetchFunc
		msg   string
	}{
		{"SVID for another ID", func(context.Context, spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
			svid, err := tca.ca.NewSVID(otherID, time.Hour)
			return svid, tca.ca.Bundle(), err
		}, "someone-else"},
		{"SVID not chaining to the bundle", func(_ context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
			svid, err := tca.ca.NewSVID(id, time.Hour)
			return svid, other.ca.Bundle(), err
		}, "unknown authority"},
		{"expired SVID", func(_ context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
			svid, err := tca.ca.NewSVIDAt(id, start.Add(-2*time.Hour), time.Hour)
			return svid, tca.ca.Bundle(), err
		}, "expired"},
		{"missing bundle", func(_ context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
			svid, err := tca.ca.NewSVID(id, time.Hour)
			return svid, nil, err
		}, "empty bundle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := identity.NewSource(ctx, identity.SourceConfig{ID: workloadID, Fetch: tt.fetch, Clock: clock})
				done <- err
			}()
			clock.nextTimer(t) // first attempt refused; backing off
			cancel()
			err := <-done
			if !errors.Is(err, identity.ErrInvalidSVID) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error = %v, want ErrInvalidSVID mentioning %q", err, tt.msg)
			}
		})
	}
}

func TestSource_RotateForcesRefresh(t *testing.T) {
	leakCheck(t)
	clock := newFakeClock(start)
	tca := newTestCA(t, clock)
	s := newSource(t, clock, tca.fetch())
	clock.nextTimer(t)
	before := serial(t, s)
	if err := s.Rotate(context.Background()); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	clock.nextTimer(t)
	if serial(t, s) == before {
		t.Error("Rotate did not install a new SVID")
	}
	tca.fail.Store(true)
	if err := s.Rotate(context.Background()); err == nil || !strings.Contains(err.Error(), "CA unavailable") {
		t.Errorf("Rotate with the CA down = %v, want the fetch error", err)
	}
	clock.nextTimer(t)
	if _, err := s.GetX509SVID(); err != nil {
		t.Errorf("a failed Rotate must keep the current SVID: %v", err)
	}
}

func TestSource_CloseStopsRotation(t *testing.T) {
	leakCheck(t)
	clock := newFakeClock(start)
	tca := newTestCA(t, clock)
	s, err := identity.NewSource(context.Background(), identity.SourceConfig{ID: workloadID, Fetch: tca.fetch(), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	clock.nextTimer(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.GetX509SVID(); !errors.Is(err, identity.ErrSourceClosed) {
		t.Errorf("GetX509SVID after Close: %v, want ErrSourceClosed", err)
	}
	if _, err := s.GetX509BundleForTrustDomain(td); !errors.Is(err, identity.ErrSourceClosed) {
		t.Errorf("GetX509BundleForTrustDomain after Close: %v, want ErrSourceClosed", err)
	}
	if err := s.Rotate(context.Background()); !errors.Is(err, identity.ErrSourceClosed) {
		t.Errorf("Rotate after Close: %v, want ErrSourceClosed", err)
	}
	clock.Advance(48 * time.Hour)
	if n := tca.fetches.Load(); n != 1 {
		t.Errorf("fetches after Close = %d, want 1", n)
	}
}

func TestSource_Bundle(t *testing.T) {
	leakCheck(t)
	clock := newFakeClock(start)
	tca := newTestCA(t, clock)
	s := newSource(t, clock, tca.fetch())
	b, err := s.GetX509BundleForTrustDomain(td)
	if err != nil || !b.Equal(tca.ca.Bundle()) {
		t.Errorf("GetX509BundleForTrustDomain(%s) = %v, %v; want the CA bundle", td, b, err)
	}
	if _, err := s.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.example")); !errors.Is(err, identity.ErrUnknownTrustDomain) {
		t.Errorf("other trust domain: %v, want ErrUnknownTrustDomain", err)
	}
}

func TestNewSource_ValidatesConfig(t *testing.T) {
	fetch := func(context.Context, spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) { return nil, nil, nil }
	if _, err := identity.NewSource(context.Background(), identity.SourceConfig{Fetch: fetch}); err == nil {
		t.Error("NewSource without ID succeeded")
	}
	if _, err := identity.NewSource(context.Background(), identity.SourceConfig{ID: workloadID}); err == nil {
		t.Error("NewSource without Fetch succeeded")
	}
}

// leakCheck verifies no goroutine outlives the test, after every other
// cleanup (such as closing sources) has run.
func leakCheck(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}
