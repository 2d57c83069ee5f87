package proxy_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambientmesh/ambient/internal/metricstest"
	"github.com/ambientmesh/ambient/waypoint/proxy"
)

// fakeClock is the waypoint's resilience clock (proxy.Config.Now), moved
// by hand.
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

// gate holds requests until opened; arrived counts them.
type gate struct {
	mu      sync.Mutex
	open    chan struct{}
	arrived atomic.Int64
	left    atomic.Int64 // requests done waiting: released, or their context ended
}

func (g *gate) reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = make(chan struct{})
	g.arrived.Store(0)
	g.left.Store(0)
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.open)
}

func (g *gate) wait(ctx context.Context) {
	g.mu.Lock()
	ch := g.open
	g.mu.Unlock()
	g.arrived.Add(1)
	defer g.left.Add(1)
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// resilienceFor is a local config resilience section: one policy for the
// service named host in namespace shop.
func resilienceFor(host, policy string) string {
	return "resilience:\n- service_key: shop/" + host + "\n" + policy
}

// flagCount is istio_requests_total with response_flags flags and code.
func (m *testMesh) flagCount(t *testing.T, flags, code string) float64 {
	t.Helper()
	return metricstest.Sum(t, m.reg, "istio_requests_total", map[string]string{"response_flags": flags, "response_code": code})
}

// doAsync sends a GET from the client pod on a goroutine of its own.
func doAsync(c *http.Client, path string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		resp, err := c.Get("http://" + serverVIP + path)
		if err != nil {
			ch <- result{body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		ch <- result{code: resp.StatusCode, body: string(b), header: resp.Header}
	}()
	return ch
}

// TestWaypoint_Resilience runs the DestinationRule and LocalTrafficPolicy
// mechanisms end to end (client pod → ztunnel → waypoint → ztunnel →
// server pods), with the waypoint's resilience clock in the test's hands.
func TestWaypoint_Resilience(t *testing.T) {
	clk := newFakeClock()
	m := newTestMesh(t, func(c *proxy.Config) { c.Now = clk.Now })
	c := m.httpClient(t, false)
	defer func() { m.sick[0].Store(false); m.sick[1].Store(false) }()

	t.Run("ROUND_ROBIN alternates the endpoints", func(t *testing.T) {
		m.setL7(t, resilienceFor(serverHost, "  traffic_policy: {load_balancer: LB_ROUND_ROBIN}\n"))
		var got []string
		for range 10 {
			got = append(got, do(t, c, "GET", "/rr", nil).body)
		}
		for i := 1; i < len(got); i++ {
			if got[i] == got[i-1] || (got[i] != "v1" && got[i] != "v2") {
				t.Fatalf("round robin answered %v", got)
			}
		}
	})

	t.Run("local rate limit of 100/s answers 429 RL beyond the bucket", func(t *testing.T) {
		m.setL7(t, resilienceFor(serverHost, "  local_policy: {rate_limit: {requests_per_unit: 100, unit: 1s}}\n"))
		count := func(n int) (ok, limited int) {
			for range n {
				switch r := do(t, c, "GET", "/limited", nil); {
				case r.code == 200:
					ok++
				case r.code == 429 && r.body == "local_rate_limited":
					limited++
				default:
					t.Fatalf("got %d %q", r.code, r.body)
				}
			}
			return ok, limited
		}
		// The clock stands still: the full bucket, 100, then nothing.
		if ok, limited := count(130); ok != 100 || limited != 30 {
			t.Fatalf("130 requests at one instant: %d admitted, %d limited; want 100, 30", ok, limited)
		}
		clk.Advance(250 * time.Millisecond) // 25 tokens
		if ok, limited := count(30); ok != 25 || limited != 5 {
			t.Fatalf("30 requests 250ms later: %d admitted, %d limited; want 25, 5", ok, limited)
		}
		if n := m.flagCount(t, "RL", "429"); n != 35 {
			t.Fatalf("istio_requests_total{response_code=429,response_flags=RL} = %v, want 35", n)
		}
		findFlow(t, m.wpLog, map[string]any{"path": "/limited", "response_code": 429, "response_flags": "RL"})
	})

	t.Run("fault abort of 20% of 2000 requests, and a fault delay", func(t *testing.T) {
		m.setL7(t, resilienceFor(serverHost, "  local_policy: {fault: {abort: {http_status: 418, percentage: 20}}}\n"))
		const n = 2000
		aborted := 0
		for i := range n {
			switch r := do(t, c, "GET", "/fault", nil); {
			case r.code == 418 && r.body == "fault filter abort":
				aborted++
			case r.code != 200:
				t.Fatalf("request %d: %d %q", i, r.code, r.body)
			}
		}
		pct := float64(aborted) * 100 / n
		t.Logf("%d of %d aborted: %.2f%%", aborted, n, pct)
		if pct < 17 || pct > 23 {
			t.Fatalf("aborted %.2f%% of %d, want 20 ± 3", pct, n)
		}
		if got := m.flagCount(t, "FI", "418"); got != float64(aborted) {
			t.Fatalf("istio_requests_total{response_flags=FI} = %v, want %d", got, aborted)
		}

		m.setL7(t, resilienceFor(serverHost, "  local_policy: {fault: {delay: {fixed_delay: 0.2s, percentage: 100}}}\n"))
		start := time.Now()
		if r := do(t, c, "GET", "/delayed", nil); r.code != 200 {
			t.Fatalf("delayed request: %d %q", r.code, r.body)
		}
		if took := time.Since(start); took < 200*time.Millisecond {
			t.Fatalf("a 200ms fault delay answered after %v", took)
		}
		findFlow(t, m.wpLog, map[string]any{"path": "/delayed", "response_code": 200, "response_flags": "DI"})

		m.setL7(t, resilienceFor(serverHost, "  local_policy: {fault: {delay: {fixed_delay: 0.01s, percentage: 100}, abort: {http_status: 503, percentage: 100}}}\n"))
		if r := do(t, c, "GET", "/both", nil); r.code != 503 || r.body != "fault filter abort" {
			t.Fatalf("delay and abort: %d %q", r.code, r.body)
		}
		findFlow(t, m.wpLog, map[string]any{"path": "/both", "response_code": 503, "response_flags": "DI,FI"})
	})

	t.Run("outlier detection ejects after 5 consecutive 5xx and brings back after baseEjectionTime", func(t *testing.T) {
		m.setL7(t, resilienceFor(serverHost, `  traffic_policy:
    load_balancer: LB_ROUND_ROBIN
    outlier_detection: {consecutive_5xx_errors: 5, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 10}
`))
		m.sick[0].Store(true)
		defer m.sick[0].Store(false)
		m.sickCalls[0].Store(0)
		for range 10 { // round robin: 5 to the sick v1, 5 to v2
			do(t, c, "GET", "/sick/outlier", nil)
		}
		if n := m.sickCalls[0].Load(); n != 5 {
			t.Fatalf("v1 got %d of 10 round-robin requests, want 5", n)
		}
		for i := range 40 {
			if r := do(t, c, "GET", "/sick/outlier", nil); r.code != 200 || r.body != "v2" {
				t.Fatalf("request %d after the ejection: %d %q, want 200 from v2", i, r.code, r.body)
			}
		}
		if n := m.sickCalls[0].Load(); n != 5 {
			t.Fatalf("v1 got %d requests, want 5: the ejected endpoint kept receiving", n)
		}
		clk.Advance(29 * time.Second)
		for range 4 {
			do(t, c, "GET", "/sick/outlier", nil)
		}
		if n := m.sickCalls[0].Load(); n != 5 {
			t.Fatalf("v1 back after 29s of a 30s ejection (%d requests)", n)
		}
		clk.Advance(2 * time.Second) // past baseEjectionTime and a sweep
		for range 4 {
			do(t, c, "GET", "/sick/outlier", nil)
		}
		if n := m.sickCalls[0].Load(); n == 5 {
			t.Fatal("v1 still ejected 31s after a 30s ejection")
		}
	})

	t.Run("mirrors go through the mirror service's outlier detection, which is exported", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		reg.MustRegister(m.proxy.OutlierCollector())
		m.setL7(t, serverRoute(`    backends: [{destination: {service: shop/`+serverV1Host+`, port: 80}, weight: 1}]
    filters: [{request_mirror: {backend: {service: shop/`+serverV2Host+`, port: 80}}}]
`)+resilienceFor(serverV2Host, `  traffic_policy:
    outlier_detection: {consecutive_5xx_errors: 5, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 100}
`))
		m.sick[1].Store(true)
		defer m.sick[1].Store(false)
		for range 5 {
			if r := do(t, c, "GET", "/sick/mirrored", nil); r.code != 200 || r.body != "v1" {
				t.Fatalf("got %d %q, want 200 from v1 (only the mirror goes to the sick v2)", r.code, r.body)
			}
		}
		v2 := map[string]string{"destination_service": serverV2Host, "destination_service_namespace": "shop", "destination_port": "80"}
		waitFor(t, "server-v2's endpoint ejected by its mirrored 503s", func() bool {
			return metricstest.Sum(t, reg, "ambient_outlier_ejections_active", v2) == 1
		})
		if got := metricstest.Sum(t, reg, "ambient_outlier_ejections_total", v2); got != 1 {
			t.Fatalf("ambient_outlier_ejections_total = %v, want 1", got)
		}
	})

	t.Run("a config push keeps the rate limit and the ejections of unchanged policies", func(t *testing.T) {
		policy := func(rps int) string {
			return resilienceFor(serverHost, `  traffic_policy:
    load_balancer: LB_ROUND_ROBIN
    outlier_detection: {consecutive_5xx_errors: 5, interval: 1s, base_ejection_time: 300s, max_ejection_percent: 50}
  local_policy: {rate_limit: {requests_per_unit: `+strconv.Itoa(rps)+`, unit: 1s}}
`)
		}
		m.setL7(t, policy(12))
		m.sick[0].Store(true)
		defer m.sick[0].Store(false)
		m.sickCalls[0].Store(0)
		for range 10 { // 5 to v1, which is then ejected; 2 tokens left
			do(t, c, "GET", "/sick/push", nil)
		}
		if n := m.sickCalls[0].Load(); n != 5 {
			t.Fatalf("v1 got %d of 10 requests, want 5", n)
		}
		// An unrelated push: a route table for another service.
		m.setL7(t, policy(12)+`routes:
- service_key: shop/`+serverV2Host+`
  port: 80
  matches: [{rule: 0}]
  rules: [{route: shop/server-v2, backends: [{destination: {service: shop/`+serverV1Host+`, port: 80}, weight: 1}]}]
`)
		for i := range 2 {
			if r := do(t, c, "GET", "/sick/push", nil); r.code != 200 || r.body != "v2" {
				t.Fatalf("request %d after the push: %d %q, want 200 from v2 (v1 still ejected)", i, r.code, r.body)
			}
		}
		if r := do(t, c, "GET", "/sick/push", nil); r.code != 429 {
			t.Fatalf("the push refilled the rate limit: %d %q, want 429", r.code, r.body)
		}
		// A changed rate limit starts a full bucket; the ejection stays.
		m.setL7(t, policy(13))
		if r := do(t, c, "GET", "/sick/push", nil); r.code != 200 || r.body != "v2" {
			t.Fatalf("after the rate limit changed: %d %q, want 200 from v2", r.code, r.body)
		}
		if n := m.sickCalls[0].Load(); n != 5 {
			t.Fatalf("v1 got %d requests, want 5: a push un-ejected it", n)
		}
	})

	t.Run("http2MaxRequests 3: of 5 concurrent requests 2 get 503 UO at once", func(t *testing.T) {
		m.setL7(t, resilienceFor(serverHost, "  traffic_policy: {connection_pool: {http2_max_requests: 3}}\n"))
		m.poolOverflow(t, c, 5, 2, 3)
	})

	t.Run("maxConnections 1 and http1MaxPendingRequests 2: 1 in flight, 2 wait, 2 get 503 UO at once", func(t *testing.T) {
		m.setL7(t, resilienceFor(serverHost, "  traffic_policy: {connection_pool: {max_connections: 1, http1_max_pending_requests: 2}}\n"))
		m.poolOverflow(t, c, 5, 2, 1)
	})

	t.Run("maxRetries 1: a second concurrent retry is refused, flag UO", func(t *testing.T) {
		m.setL7(t, serverRoute(toV1+"    retry: {attempts: 1, codes: [503], backoff: 1s}\n")+
			resilienceFor(serverV1Host, "  traffic_policy: {connection_pool: {max_retries: 1}}\n"))
		m.sick[0].Store(true)
		defer m.sick[0].Store(false)
		a, b := doAsync(c, "/sick/retry"), doAsync(c, "/sick/retry")
		for _, ch := range []<-chan result{a, b} {
			if r := <-ch; r.code != 503 {
				t.Fatalf("got %d %q, want the backend's 503", r.code, r.body)
			}
		}
		findFlow(t, m.wpLog, map[string]any{"path": "/sick/retry", "response_flags": "UO"})
		findFlow(t, m.wpLog, map[string]any{"path": "/sick/retry", "response_flags": "URX"})
	})

	// HTTP/2 to the backend: each open connection holds one of
	// maxConnections; a request that would need one more is refused at
	// once (503 UO), not counted against the endpoint; one that can
	// share an open connection goes through. Round robin alternates the
	// two endpoints, so every other request needs the second connection.
	t.Run("maxConnections 1 over HTTP/2: one connection, the second refused", func(t *testing.T) {
		h2c := m.httpClient(t, true)
		m.setL7(t, resilienceFor(serverHost, "  traffic_policy: {load_balancer: LB_ROUND_ROBIN, connection_pool: {max_connections: 1}}\n"))
		m.proxy.CloseIdleConnections()
		before := m.flagCount(t, "UO", "503")
		served := map[string]int{}
		for i := range 6 {
			r := do(t, h2c, "GET", "/h2-conns", nil)
			switch {
			case r.code == 200 && r.header.Get("X-Proto") == "HTTP/2.0":
				served[r.body]++
			case r.code == 503 && r.header.Get("X-Envoy-Overloaded") == "true":
			default:
				t.Fatalf("request %d: %d %q (%s)", i, r.code, r.body, r.header.Get("X-Proto"))
			}
		}
		if len(served) != 1 || m.flagCount(t, "UO", "503")-before != 3 {
			t.Fatalf("served by %v, %v overflows; want one endpoint's connection serving 3, 3 refused", served, m.flagCount(t, "UO", "503")-before)
		}
		// A connection closed gives its slot back: with the idle one
		// closed before each request, every endpoint's turn gets one.
		seen := map[string]int{}
		for i := range 4 {
			m.proxy.CloseIdleConnections()
			r := do(t, h2c, "GET", "/h2-conns", nil)
			if r.code != 200 {
				t.Fatalf("request %d after the open connection closed: %d %q", i, r.code, r.body)
			}
			seen[r.body]++
		}
		if len(seen) != 2 {
			t.Fatalf("served by %v, want both endpoints in turn", seen)
		}
	})

	// Requests that arrive while the cluster's only HTTP/2 connection is
	// being dialled wait for it and share it, as Envoy's pending
	// requests do; none of them needs a connection of its own.
	t.Run("maxConnections 1 over HTTP/2: a burst on a cold cluster shares the connection being dialled", func(t *testing.T) {
		h2c := m.httpClient(t, true)
		m.setL7(t, serverRoute(toV1)+resilienceFor(serverV1Host, "  traffic_policy: {connection_pool: {max_connections: 1}}\n"))
		for round := range 3 {
			m.proxy.CloseIdleConnections()
			var results []<-chan result
			for range 8 {
				results = append(results, doAsync(h2c, "/h2-burst"))
			}
			conns := map[string]bool{}
			for i, ch := range results {
				r := <-ch
				if r.code != 200 || r.header.Get("X-Proto") != "HTTP/2.0" {
					t.Fatalf("round %d, request %d: %d %q (%s)", round, i, r.code, r.body, r.header.Get("X-Proto"))
				}
				conns[r.header.Get("X-Remote-Addr")] = true
			}
			if len(conns) != 1 {
				t.Fatalf("round %d: 8 requests over connections %v, want one", round, conns)
			}
		}
	})

	// Envoy's connection pools are per cluster: an HTTP/2 connection that
	// another service's requests opened to the same endpoint (server-v1's,
	// without limits) is not one of server's, so server's requests may
	// not ride on it past their own maxConnections.
	t.Run("maxConnections 1 over HTTP/2: another service's connection to the same endpoint is not shared", func(t *testing.T) {
		h2c := m.httpClient(t, true)
		limited := resilienceFor(serverHost, "  traffic_policy: {load_balancer: LB_ROUND_ROBIN, connection_pool: {max_connections: 1}}\n")
		m.setL7(t, serverRoute(toV1)+limited)
		m.proxy.CloseIdleConnections()
		if r := do(t, h2c, "GET", "/h2-conns", nil); r.code != 200 || r.header.Get("X-Proto") != "HTTP/2.0" {
			t.Fatalf("through server-v1: %d %q (%s)", r.code, r.body, r.header.Get("X-Proto"))
		}
		m.setL7(t, limited) // server-v1's connection to v1 stays open and idle
		before := m.flagCount(t, "UO", "503")
		served := map[string]int{}
		for i := range 6 {
			r := do(t, h2c, "GET", "/h2-conns", nil)
			switch {
			case r.code == 200:
				served[r.body]++
			case r.code == 503 && r.header.Get("X-Envoy-Overloaded") == "true":
			default:
				t.Fatalf("request %d: %d %q", i, r.code, r.body)
			}
		}
		if len(served) != 1 || m.flagCount(t, "UO", "503")-before != 3 {
			t.Fatalf("served by %v, %v overflows; want server's one connection serving 3, 3 refused", served, m.flagCount(t, "UO", "503")-before)
		}
	})

	// Over HTTP/1.1 and, from an h2c client, over HTTP/2 to the backend,
	// where the n-th request's connection takes no further request.
	t.Run("maxRequestsPerConnection", func(t *testing.T) {
		for _, h2 := range []bool{false, true} {
			client := c
			if h2 {
				client = m.httpClient(t, true)
			}
			for _, perConn := range []int{1, 2} {
				m.setL7(t, serverRoute(toV1)+resilienceFor(serverV1Host,
					"  traffic_policy: {connection_pool: {max_requests_per_connection: "+strconv.Itoa(perConn)+"}}\n"))
				m.proxy.CloseIdleConnections()
				uses := map[string]int{}
				for range 6 {
					r := do(t, client, "GET", "/per-conn", nil)
					if r.code != 200 || r.header.Get("X-Proto") != map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2] {
						t.Fatalf("got %d %q over %s", r.code, r.body, r.header.Get("X-Proto"))
					}
					uses[r.header.Get("X-Remote-Addr")]++
				}
				most := 0
				for _, n := range uses {
					most = max(most, n)
				}
				t.Logf("HTTP/2 %t, maxRequestsPerConnection %d: 6 requests on %d connections", h2, perConn, len(uses))
				if most > perConn || (perConn > 1 && most < 2) {
					t.Fatalf("HTTP/2 %t, maxRequestsPerConnection %d: requests per connection %v", h2, perConn, uses)
				}
			}
		}
	})
}

// poolOverflow sends total concurrent requests that the backend holds:
// over of them must come back 503 UO while held are at the backend (and
// the rest wait at the waypoint); once the backend lets go, all but the
// over complete.
func (m *testMesh) poolOverflow(t *testing.T, c *http.Client, total, over, held int) {
	t.Helper()
	m.hold.reset()
	released := false
	defer func() {
		if !released {
			m.hold.release()
		}
	}()
	before := m.flagCount(t, "UO", "503")
	results := make(chan result, total)
	for range total {
		go func() { results <- <-doAsync(c, "/hold") }()
	}
	for i := range over {
		select {
		case r := <-results:
			if r.code != 503 || !strings.HasPrefix(r.body, "upstream connect error") || r.header.Get("X-Envoy-Overloaded") != "true" {
				t.Fatalf("answer %d while the others are held: %d %q, want 503 overflow", i, r.code, r.body)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d answers while the backend holds the others, want %d at once", i, over)
		}
	}
	waitFor(t, "the requests in flight at the backend", func() bool { return m.hold.arrived.Load() == int64(held) })
	m.hold.release()
	released = true
	for i := range total - over {
		if r := <-results; r.code != 200 {
			t.Fatalf("held request %d: %d %q, want 200", i, r.code, r.body)
		}
	}
	if n := m.hold.arrived.Load(); n != int64(total-over) {
		t.Fatalf("the backend got %d requests, want %d", n, total-over)
	}
	if n := m.flagCount(t, "UO", "503") - before; n != float64(over) {
		t.Fatalf("istio_requests_total{response_flags=UO} grew by %v, want %d", n, over)
	}
}

// TestWaypoint_HTTP2PendingRequests: an HTTP/2 request that waits for its
// endpoint's connection to be dialled is a pending request, as in
// Envoy's HTTP/2 pool: http1MaxPendingRequests of them wait, the others
// get 503 UO at once. The waypoint's HBONE dials are held so that the
// requests all come while the first connection is being dialled.
func TestWaypoint_HTTP2PendingRequests(t *testing.T) {
	var dials gate
	dials.reset()
	m := newTestMesh(t, func(c *proxy.Config) {
		dial := c.DialTCP
		c.DialTCP = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.wait(ctx)
			return dial(ctx, network, addr)
		}
	})
	released := false
	defer func() {
		if !released {
			dials.release()
		}
	}()
	h2c := m.httpClient(t, true)
	m.setL7(t, serverRoute(toV1)+resilienceFor(serverV1Host, "  traffic_policy: {connection_pool: {max_connections: 1, http1_max_pending_requests: 2}}\n"))

	results := make(chan result, 5)
	for range 5 {
		go func() { results <- <-doAsync(h2c, "/h2-pending") }()
	}
	for i := range 3 {
		select {
		case r := <-results:
			if r.code != 503 || r.header.Get("X-Envoy-Overloaded") != "true" {
				t.Fatalf("answer %d while the connection is dialled: %d %q, want 503 overflow", i, r.code, r.body)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d answers while the connection is dialled, want 3 at once", i)
		}
	}
	dials.release()
	released = true
	for i := range 2 {
		if r := <-results; r.code != 200 || r.header.Get("X-Proto") != "HTTP/2.0" {
			t.Fatalf("pending request %d: %d %q (%s), want 200 over HTTP/2", i, r.code, r.body, r.header.Get("X-Proto"))
		}
	}
	// With the connection open, nothing is pending: a burst goes through.
	var burst []<-chan result
	for range 8 {
		burst = append(burst, doAsync(h2c, "/h2-pending"))
	}
	for i, ch := range burst {
		if r := <-ch; r.code != 200 {
			t.Fatalf("request %d with the connection open: %d %q", i, r.code, r.body)
		}
	}
}
