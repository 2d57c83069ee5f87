package resilience

import (
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func seeded() func() uint64 { return rand.New(rand.NewPCG(1, 2)).Uint64 }

// --- Limiter ---

func TestLimiter_OverflowReturnsErrOverflowWithoutBlocking(t *testing.T) {
	l := NewLimiter(Limits{MaxRequests: 2})
	r1, err := l.Acquire(Requests)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(Requests); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := l.Acquire(Requests); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrOverflow) {
			t.Fatalf("third Acquire: %v, want ErrOverflow", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Acquire blocked at the limit")
	}
	if got := l.Overflows(Requests); got != 1 {
		t.Errorf("Overflows = %d, want 1", got)
	}
	r1()
	if _, err := l.Acquire(Requests); err != nil {
		t.Fatalf("Acquire after a release: %v", err)
	}
	if got := l.Active(Requests); got != 2 {
		t.Errorf("Active = %d, want 2", got)
	}
}

func TestLimiter_ResourcesAreIndependentAndZeroIsUnlimited(t *testing.T) {
	l := NewLimiter(Limits{MaxConnections: 1, MaxPendingRequests: 1, MaxRetries: 4294967295})
	if _, err := l.Acquire(Connections); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(Connections); !errors.Is(err, ErrOverflow) {
		t.Fatalf("second connection: %v, want ErrOverflow", err)
	}
	if _, err := l.Acquire(PendingRequests); err != nil {
		t.Fatalf("pending while connections are full: %v", err)
	}
	if _, err := l.Acquire(PendingRequests); !errors.Is(err, ErrOverflow) {
		t.Fatalf("second pending: %v, want ErrOverflow", err)
	}
	for i := range 10_000 {
		if _, err := l.Acquire(Requests); err != nil {
			t.Fatalf("request %d with no limit: %v", i, err)
		}
		if _, err := l.Acquire(Retries); err != nil {
			t.Fatalf("retry %d with limit 2^32-1: %v", i, err)
		}
	}
}

func TestLimiter_ConcurrentNeverExceedsLimit(t *testing.T) {
	const limit = 8
	l := NewLimiter(Limits{MaxRequests: limit})
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := int64(0)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2000 {
				rel, err := l.Acquire(Requests)
				if err != nil {
					continue
				}
				if n := l.Active(Requests); n > limit {
					mu.Lock()
					peak = max(peak, n)
					mu.Unlock()
				}
				rel()
			}
		}()
	}
	wg.Wait()
	if peak > limit {
		t.Fatalf("active reached %d, limit %d", peak, limit)
	}
	if got := l.Active(Requests); got != 0 {
		t.Fatalf("Active after all releases = %d", got)
	}
}

func TestLimitsFrom_ReadsConnectionPool(t *testing.T) {
	got := LimitsFrom(&waypointapi.ConnectionPool{MaxConnections: 1, Http1MaxPendingRequests: 2, Http2MaxRequests: 3, MaxRetries: 4})
	if want := (Limits{1, 2, 3, 4}); got != want {
		t.Fatalf("LimitsFrom = %+v, want %+v", got, want)
	}
}

// --- Outlier ---

func TestOutlier_EjectsAfterExactlyFiveConsecutive5xxAndReturnsAfterEjectionTime(t *testing.T) {
	clk := newFakeClock()
	o := NewOutlier(OutlierConfig{Consecutive5xx: 5, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 100}, clk.Now)
	o.SetHosts([]string{"a", "b"})
	o.Healthy("a") // first call starts the sweep schedule
	clk.Advance(time.Second)
	for i := 1; i <= 4; i++ {
		if o.Observe("a", 500, nil) {
			t.Fatalf("ejected after %d errors", i)
		}
		if !o.Healthy("a") {
			t.Fatalf("unhealthy after %d errors", i)
		}
	}
	if !o.Observe("a", 503, nil) || o.Healthy("a") {
		t.Fatal("not ejected after the 5th consecutive 5xx")
	}
	if !o.Healthy("b") {
		t.Fatal("b ejected too")
	}
	ejectedAt := clk.Now()
	// Sweeps at +10s, +20s, ... from the start; ejection ends 30s after.
	clk.Advance(29 * time.Second)
	if o.Healthy("a") {
		t.Fatal("back before baseEjectionTime")
	}
	clk.Advance(10 * time.Second) // past ejectedAt+30s and a sweep
	if !o.Healthy("a") {
		t.Fatalf("still ejected %v after ejection", clk.Now().Sub(ejectedAt))
	}
}

func TestOutlier_SuccessResetsTheCount(t *testing.T) {
	clk := newFakeClock()
	o := NewOutlier(OutlierConfig{Consecutive5xx: 5, MaxEjectionPercent: 100}, clk.Now)
	for range 4 {
		o.Observe("a", 500, nil)
	}
	o.Observe("a", 200, nil)
	for range 4 {
		o.Observe("a", 502, nil)
	}
	if !o.Healthy("a") {
		t.Fatal("ejected though the errors were not consecutive")
	}
	o.Observe("a", 0, errors.New("connect: refused")) // local-origin: a 503
	if o.Healthy("a") {
		t.Fatal("a connect failure did not count as a 5xx")
	}
}

func TestOutlier_GatewayErrorsCountOnly502To504(t *testing.T) {
	clk := newFakeClock()
	o := NewOutlier(OutlierConfig{ConsecutiveGateway: 3, MaxEjectionPercent: 100}, clk.Now)
	for range 10 {
		o.Observe("a", 500, nil) // a 5xx, not a gateway error; 5xx detection off
	}
	if !o.Healthy("a") {
		t.Fatal("ejected by 500s with only gateway-error detection")
	}
	o.Observe("a", 502, nil)
	o.Observe("a", 504, nil)
	o.Observe("a", 500, nil) // breaks the gateway-error run
	o.Observe("a", 503, nil)
	o.Observe("a", 502, nil)
	if !o.Healthy("a") {
		t.Fatal("ejected though the gateway errors were not consecutive")
	}
	o.Observe("a", 504, nil)
	if o.Healthy("a") {
		t.Fatal("not ejected after 3 consecutive gateway errors")
	}
}

func TestOutlier_EjectionTimeGrowsWithRepeatedEjections(t *testing.T) {
	clk := newFakeClock()
	o := NewOutlier(OutlierConfig{Consecutive5xx: 1, Interval: time.Second, BaseEjectionTime: 10 * time.Second, MaxEjectionPercent: 100}, clk.Now)
	o.SetHosts([]string{"a"})
	o.Healthy("a")
	o.Observe("a", 500, nil) // 1st ejection: 10s
	clk.Advance(10 * time.Second)
	if !o.Healthy("a") {
		t.Fatal("first ejection lasted over 10s")
	}
	o.Observe("a", 500, nil) // 2nd in a row: 20s
	clk.Advance(15 * time.Second)
	if o.Healthy("a") {
		t.Fatal("second ejection lasted under 20s")
	}
	clk.Advance(5 * time.Second)
	if !o.Healthy("a") {
		t.Fatal("second ejection lasted over 20s")
	}
	// Healthy sweeps decrement the multiplier back to zero...
	for range 3 {
		clk.Advance(time.Second)
		o.Healthy("a")
	}
	o.Observe("a", 500, nil) // ...so this one is 10s again.
	clk.Advance(10 * time.Second)
	if !o.Healthy("a") {
		t.Fatal("ejection after recovery lasted over 10s")
	}
}

func TestOutlier_MaxEjectionPercentButAlwaysOne(t *testing.T) {
	clk := newFakeClock()
	o := NewOutlier(OutlierConfig{Consecutive5xx: 1}, clk.Now) // default 10 %
	o.SetHosts([]string{"a", "b", "c"})
	o.Observe("a", 500, nil)
	o.Observe("b", 500, nil)
	if o.Healthy("a") {
		t.Fatal("the first host was not ejected (10 % of 3 hosts must still allow one)")
	}
	if !o.Healthy("b") {
		t.Fatal("a second host was ejected past maxEjectionPercent")
	}
	if got := o.EjectedCount(); got != 1 {
		t.Fatalf("EjectedCount = %d", got)
	}

	o = NewOutlier(OutlierConfig{Consecutive5xx: 1, MaxEjectionPercent: 50}, clk.Now)
	o.SetHosts([]string{"a", "b", "c", "d"})
	for _, h := range []string{"a", "b", "c", "d"} {
		o.Observe(h, 500, nil)
	}
	if got := o.EjectedCount(); got != 2 {
		t.Fatalf("50 %% of 4: EjectedCount = %d, want 2", got)
	}
}

func TestOutlier_PanicModeBelowMinHealthPercentUsesAllHosts(t *testing.T) {
	clk := newFakeClock()
	o := NewOutlier(OutlierConfig{Consecutive5xx: 1, MaxEjectionPercent: 100, MinHealthPercent: 50}, clk.Now)
	o.SetHosts([]string{"a", "b", "c", "d"})
	o.Observe("a", 500, nil)
	o.Observe("b", 500, nil) // 2 of 4 healthy: 50 %, not below
	if o.Healthy("a") || o.Panicking() {
		t.Fatal("panic at exactly minHealthPercent")
	}
	o.Observe("c", 500, nil) // 1 of 4: 25 % < 50 %
	if !o.Panicking() || !o.Healthy("a") || !o.Healthy("c") {
		t.Fatal("no panic mode below minHealthPercent")
	}
	if !o.Ejected("a") {
		t.Fatal("panic mode unejected a host")
	}
}

func TestOutlier_SetHostsKeepsStateOfRemainingHosts(t *testing.T) {
	clk := newFakeClock()
	o := NewOutlier(OutlierConfig{Consecutive5xx: 1, MaxEjectionPercent: 100}, clk.Now)
	o.SetHosts([]string{"a", "b"})
	o.Observe("a", 500, nil)
	o.SetHosts([]string{"a", "c"})
	if o.Healthy("a") || !o.Healthy("c") || o.EjectedCount() != 1 {
		t.Fatal("SetHosts lost or invented state")
	}
	o.SetHosts([]string{"c"})
	if o.EjectedCount() != 0 {
		t.Fatal("a removed host still counts as ejected")
	}
}

func TestOutlierConfigFrom(t *testing.T) {
	if _, ok := OutlierConfigFrom(nil); ok {
		t.Fatal("nil policy enabled outlier detection")
	}
	cfg, ok := OutlierConfigFrom(&waypointapi.OutlierDetection{
		Consecutive_5XxErrors: 5, Interval: durationpb.New(time.Second),
		BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionPercent: 20, MinHealthPercent: 30,
	})
	want := OutlierConfig{Consecutive5xx: 5, Interval: time.Second, BaseEjectionTime: time.Minute, MaxEjectionPercent: 20, MinHealthPercent: 30}
	if !ok || cfg != want {
		t.Fatalf("OutlierConfigFrom = %+v, %v", cfg, ok)
	}
}

// --- Picker ---

func endpoints(addrs ...string) []*Endpoint {
	eps := make([]*Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = &Endpoint{Addr: a}
	}
	return eps
}

type unhealthy map[string]bool

func (u unhealthy) Healthy(a string) bool { return !u[a] }

func TestPicker_RoundRobinSkipsEjected(t *testing.T) {
	eps := endpoints("a", "b", "c", "d")
	p := NewPicker(RoundRobin)
	var got []string
	for range 6 {
		got = append(got, eps[p.Pick(eps, unhealthy{"b": true}, nil)].Addr)
	}
	want := []string{"a", "c", "d", "a", "c", "d"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("picks = %v, want %v", got, want)
		}
	}
}

func TestPicker_NoHealthyReturnsMinusOne(t *testing.T) {
	eps := endpoints("a", "b")
	for _, pol := range []Policy{RoundRobin, LeastRequest, Random} {
		if i := NewPicker(pol).Pick(eps, unhealthy{"a": true, "b": true}, seeded()); i != -1 {
			t.Errorf("policy %d: Pick = %d, want -1", pol, i)
		}
		if i := NewPicker(pol).Pick(nil, nil, seeded()); i != -1 {
			t.Errorf("policy %d: Pick(empty) = %d, want -1", pol, i)
		}
	}
}

func TestPicker_RandomIsUniformOverHealthy(t *testing.T) {
	eps := endpoints("a", "b", "c", "d")
	p, rnd := NewPicker(Random), seeded()
	counts := map[string]int{}
	for range 30_000 {
		counts[eps[p.Pick(eps, unhealthy{"c": true}, rnd)].Addr]++
	}
	if counts["c"] != 0 {
		t.Fatal("picked an ejected host")
	}
	for _, a := range []string{"a", "b", "d"} {
		if c := counts[a]; c < 9_500 || c > 10_500 {
			t.Errorf("%s picked %d times of 30,000, want ≈10,000", a, c)
		}
	}
}

func TestPicker_LeastRequestPrefersLessLoaded(t *testing.T) {
	eps := endpoints("a", "b", "c")
	for range 5 {
		eps[0].Start()
		eps[1].Start()
	}
	p, rnd := NewPicker(LeastRequest), seeded()
	counts := map[string]int{}
	for range 3000 {
		counts[eps[p.Pick(eps, nil, rnd)].Addr]++
	}
	// c is in 2 of the 3 possible pairs and wins both: ≈2/3.
	if c := counts["c"]; c < 1800 || c > 2200 {
		t.Fatalf("least loaded host picked %d of 3000 times, want ≈2000 (%v)", c, counts)
	}
	// Two choices never both land on the same host: with one idle host of
	// two, the idle one always wins.
	two := endpoints("x", "y")
	two[0].Start()
	for range 100 {
		if i := p.Pick(two, nil, rnd); two[i].Addr != "y" {
			t.Fatal("least request picked the busier of two hosts")
		}
	}
}

func TestPicker_SkipsHostsTheOutlierEjected(t *testing.T) {
	clk := newFakeClock()
	o := NewOutlier(OutlierConfig{Consecutive5xx: 5, MaxEjectionPercent: 100}, clk.Now)
	eps := endpoints("a", "b")
	o.SetHosts([]string{"a", "b"})
	for range 5 {
		o.Observe("a", 500, nil)
	}
	p := NewPicker(RoundRobin)
	for range 10 {
		if i := p.Pick(eps, o, nil); eps[i].Addr != "b" {
			t.Fatal("picked the ejected host")
		}
	}
}

// --- TokenBucket ---

func TestTokenBucket_100PerSecondOverTwoSecondsAdmitsRatePlusBurst(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const burst = 10
	b := NewTokenBucket(100, time.Second, burst, start)
	admitted, rejected := 0, 0
	// 1,000 requests per second for 2 s, evenly spaced.
	for i := range 2000 {
		if b.Allow(start.Add(time.Duration(i) * time.Millisecond)) {
			admitted++
		} else {
			rejected++
		}
	}
	if want := 200 + burst; admitted < want-2 || admitted > want+1 {
		t.Fatalf("admitted %d of 2000 in 2 s, want ≈%d", admitted, want)
	}
	if rejected != 2000-admitted {
		t.Fatal("lost requests")
	}
}

func TestTokenBucket_BurstDefaultsToRateAndRefills(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := NewTokenBucket(60, time.Minute, 0, start)
	n := 0
	for b.Allow(start) {
		n++
	}
	if n != 60 {
		t.Fatalf("a full bucket admitted %d at once, want 60", n)
	}
	if b.Allow(start.Add(999 * time.Millisecond)) {
		t.Fatal("refilled faster than 1 per second")
	}
	if !b.Allow(start.Add(time.Second)) {
		t.Fatal("no token after 1 s at 60/min")
	}
	if (*TokenBucket)(nil).Allow(start) != true {
		t.Fatal("a nil bucket refused")
	}
	if NewTokenBucket(0, time.Second, 5, start).Allow(start) {
		t.Fatal("a zero rate admitted a request")
	}
}

func TestTokenBucket_ConcurrentAdmitsExactlyTheBurst(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := NewTokenBucket(100, time.Second, 50, start)
	var wg sync.WaitGroup
	var mu sync.Mutex
	n := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if b.Allow(start) {
					mu.Lock()
					n++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if n != 50 {
		t.Fatalf("admitted %d at one instant, want the burst, 50", n)
	}
}

// --- Fault ---

func TestFault_Abort20PercentWithin1Point5(t *testing.T) {
	f := NewFault(0, 0, 503, 20)
	rnd := seeded()
	aborted := 0
	const n = 10_000
	for range n {
		d, st := f.Decide(rnd)
		if d != 0 {
			t.Fatal("delay without a delay configured")
		}
		switch st {
		case 503:
			aborted++
		case 0:
		default:
			t.Fatalf("abort status %d", st)
		}
	}
	if pct := float64(aborted) * 100 / n; pct < 18.5 || pct > 21.5 {
		t.Fatalf("aborted %.2f %%, want 20 ± 1.5", pct)
	}
}

func TestFault_DelayAndAbortAreIndependent(t *testing.T) {
	f := NewFault(2*time.Second, 50, 500, 50)
	rnd := seeded()
	var delayed, aborted, both int
	const n = 20_000
	for range n {
		d, st := f.Decide(rnd)
		if d != 0 && d != 2*time.Second {
			t.Fatalf("delay %v", d)
		}
		if d != 0 {
			delayed++
		}
		if st != 0 {
			aborted++
		}
		if d != 0 && st != 0 {
			both++
		}
	}
	for name, c := range map[string]int{"delayed": delayed, "aborted": aborted} {
		if c < 9_600 || c > 10_400 {
			t.Errorf("%s %d of %d, want ≈half", name, c, n)
		}
	}
	if both < 4_700 || both > 5_300 {
		t.Errorf("delayed and aborted %d of %d, want ≈a quarter", both, n)
	}
}

func TestFault_EdgePercentages(t *testing.T) {
	rnd := seeded()
	always, never := NewFault(time.Second, 100, 418, 100), NewFault(time.Second, 0, 418, 0)
	for range 1000 {
		if d, st := always.Decide(rnd); d != time.Second || st != 418 {
			t.Fatal("100 % did not always inject")
		}
		if d, st := never.Decide(rnd); d != 0 || st != 0 {
			t.Fatal("0 % injected")
		}
	}
	if d, st := (*Fault)(nil).Decide(rnd); d != 0 || st != 0 {
		t.Fatal("nil Fault injected")
	}
	f := FaultFrom(&waypointapi.FaultInjection{Abort: &waypointapi.FaultInjection_Abort{HttpStatus: 429, Percentage: 100}})
	if _, st := f.Decide(rnd); st != 429 {
		t.Fatal("FaultFrom lost the abort")
	}
}

// --- Benchmarks ---

func BenchmarkLimiterAcquireRelease(b *testing.B) {
	l := NewLimiter(Limits{MaxRequests: 1 << 20})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rel, err := l.Acquire(Requests)
			if err != nil {
				b.Fatal(err)
			}
			rel()
		}
	})
}

func BenchmarkOutlierObserveHealthy(b *testing.B) {
	clk := newFakeClock()
	o := NewOutlier(OutlierConfig{Consecutive5xx: 5}, clk.Now)
	o.SetHosts([]string{"10.0.0.1:80", "10.0.0.2:80"})
	b.ReportAllocs()
	for b.Loop() {
		o.Observe("10.0.0.1:80", 200, nil)
		o.Healthy("10.0.0.2:80")
	}
}

func BenchmarkPick(b *testing.B) {
	eps := endpoints("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")
	clk := newFakeClock()
	o := NewOutlier(OutlierConfig{Consecutive5xx: 5}, clk.Now)
	for _, pol := range []struct {
		name string
		p    Policy
	}{{"round_robin", RoundRobin}, {"least_request", LeastRequest}, {"random", Random}} {
		b.Run(pol.name, func(b *testing.B) {
			p, rnd := NewPicker(pol.p), seeded()
			b.ReportAllocs()
			for b.Loop() {
				p.Pick(eps, o, rnd)
			}
		})
	}
}

func BenchmarkTokenBucketAllow(b *testing.B) {
	start := time.Now()
	tb := NewTokenBucket(1_000_000_000, time.Second, 1_000_000, start)
	b.ReportAllocs()
	for b.Loop() {
		tb.Allow(start)
	}
}

func BenchmarkFaultDecide(b *testing.B) {
	f := NewFault(time.Millisecond, 10, 503, 20)
	rnd := seeded()
	b.ReportAllocs()
	for b.Loop() {
		f.Decide(rnd)
	}
}
