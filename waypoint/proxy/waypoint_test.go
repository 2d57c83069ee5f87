package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/ambientmesh/ambient/internal/metricstest"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/waypoint/l7authz"
)

// setL7 compiles the routes and policies of a waypoint local config
// document and puts them in force.
func (m *testMesh) setL7(t *testing.T, doc string) {
	t.Helper()
	m.proxy.SetL7(mustCompileL7(t, doc))
}

// route is a one-rule table for the server service on port 80.
func serverRoute(rule string) string {
	return `
routes:
- service_key: shop/` + serverHost + `
  port: 80
  matches: [{rule: 0}]
  rules:
  - route: shop/server
` + rule
}

// v2ByHeader is a table for the server service on port 80: "x-version:
// v2" to server-v2 (with v2Filters, a rule's YAML filters line or ""),
// everything else to server-v1.
func v2ByHeader(v2Filters string) string {
	return `
routes:
- service_key: shop/` + serverHost + `
  port: 80
  matches:
  - {rule: 1, headers: [{name: x-version, value: v2}]}
  - {rule: 0}
  rules:
  - route: shop/server
    backends: [{destination: {service: shop/` + serverV1Host + `, port: 80}, weight: 1}]
  - route: shop/server
    index: 1
` + v2Filters + `    backends: [{destination: {service: shop/` + serverV2Host + `, port: 80}, weight: 1}]
`
}

const toV1 = `    backends: [{destination: {service: shop/` + serverV1Host + `, port: 80}, weight: 1}]
`

// echo sends msg from the client pod to addr (captured) and expects it
// back whole, as the test apps' TCP echo answers.
func (m *testMesh) echo(addr, msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := m.client.Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// TestWaypoint_OverQUIC: with the waypoint and the servers asking for
// QUIC (tunnel_transport, as istiod-lite sets it from the namespace's
// annotation), the client's ztunnel reaches the waypoint over HBONE/3 and
// the waypoint the servers' ztunnel too: requests are routed and
// answered, and every hop's flow records name the transport.
func TestWaypoint_OverQUIC(t *testing.T) {
	m := newTestMesh(t)
	var quic []*workloadapi.Workload
	for _, p := range []*testenv.Pod{m.wp, m.v1, m.v2} {
		w := proto.Clone(m.store.Current().Workload(podUID(p))).(*workloadapi.Workload)
		w.TunnelTransport = workloadapi.TunnelTransport_QUIC
		quic = append(quic, w)
	}
	if err := m.store.Apply(state.Update{Workloads: quic}); err != nil {
		t.Fatal(err)
	}
	c := m.httpClient(t, false)
	for range 5 {
		if r := do(t, c, "GET", "/quic", nil); r.code != 200 || (r.body != "v1" && r.body != "v2") {
			t.Fatalf("got %d %q, want 200 from v1 or v2", r.code, r.body)
		}
	}
	findFlow(t, m.wpLog, map[string]any{"reporter": "waypoint", "transport": "hbone3", "src.identity": id("client"),
		"src.workload": "client-1", "path": "/quic", "response_code": 200, "dst.identity": id("server")})
	c.CloseIdleConnections() // the client's flow is logged when its connection ends
	findFlow(t, m.ztLogs[0], map[string]any{"reporter": "source", "transport": "hbone3", "src.identity": id("client"),
		"dst.identity": id("waypoint"), "dst.service": serverHost})
	m.proxy.CloseIdleConnections()
	findFlow(t, m.ztLogs[1], map[string]any{"reporter": "destination", "transport": "hbone3", "src.identity": id("waypoint"),
		"dst.identity": id("server")})
}

// TestWaypoint_EndToEnd runs a client pod, a waypoint pod and two server
// pods in network namespaces, with in-process ztunnels capturing the
// client and the servers; the server Service is bound to the waypoint.
func TestWaypoint_EndToEnd(t *testing.T) {
	m := newTestMesh(t)
	c := m.httpClient(t, false)

	t.Run("HTTP/1.1 through the waypoint; the server's ztunnel sees the waypoint", func(t *testing.T) {
		m.setL7(t, "")
		r := do(t, c, "GET", "/hello", map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
		if r.code != 200 || (r.body != "v1" && r.body != "v2") {
			t.Fatalf("got %d %q, want 200 from v1 or v2", r.code, r.body)
		}
		if tp := r.header.Get("X-Seen-Traceparent"); tp != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
			t.Errorf("the backend saw traceparent %q; with tracing off the caller's passes untouched", tp)
		}
		// A tunnel's flow is logged when it ends: end the pooled ones.
		m.proxy.CloseIdleConnections()
		c.CloseIdleConnections()
		findFlow(t, m.ztLogs[1], map[string]any{"reporter": "destination", "src.identity": id("waypoint"),
			"dst.identity": id("server"), "transport": "hbone"})
		findFlow(t, m.ztLogs[0], map[string]any{"reporter": "source", "src.identity": id("client"),
			"dst.identity": id("waypoint"), "dst.service": serverHost})
		findFlow(t, m.wpLog, map[string]any{"reporter": "waypoint", "src.identity": id("client"),
			"src.workload": "client-1", "dst.service": serverHost, "dst.identity": id("server"),
			"method": "GET", "path": "/hello", "response_code": 200, "decision": "allow"})
	})

	// A proxy passes the client's User-Agent and adds none of its own
	// (Go's HTTP clients would send theirs).
	t.Run("the client's User-Agent passes, none is added", func(t *testing.T) {
		m.setL7(t, "")
		for _, client := range []*http.Client{c, m.httpClient(t, true)} {
			for ua, want := range map[string]string{"": "[]", "curl/8.5.0": "[curl/8.5.0]"} {
				// An empty User-Agent: Go's client sends none.
				r := do(t, client, "GET", "/ua", map[string]string{"User-Agent": ua})
				if r.code != 200 || r.header.Get("X-Seen-User-Agent") != want {
					t.Errorf("%s, client User-Agent %q: %d, the backend saw %s, want %s",
						r.header.Get("X-Proto"), ua, r.code, r.header.Get("X-Seen-User-Agent"), want)
				}
			}
		}
	})

	// A response passes with the backend's fields: none sniffed or
	// added (Go's server would add a Content-Type from the body).
	t.Run("a response without Content-Type gets none", func(t *testing.T) {
		m.setL7(t, "")
		for proto, client := range map[string]*http.Client{"HTTP/1.1": c, "HTTP/2": m.httpClient(t, true)} {
			r := do(t, client, "GET", "/untyped", nil)
			if ct, ok := r.header["Content-Type"]; r.code != 200 || !strings.HasPrefix(r.body, "<html>") || ok {
				t.Errorf("%s: %d %q, Content-Type %q; want 200 and none", proto, r.code, r.body, ct)
			}
		}
	})

	// A client that goes away mid-request ends the upstream request too
	// (the backend's context ends) and the record says DC, as Envoy's.
	t.Run("a client gone mid-request cancels it upstream", func(t *testing.T) {
		m.setL7(t, serverRoute(toV1))
		m.hold.reset()
		defer m.hold.release()
		ctx, cancel := context.WithCancel(context.Background())
		req, err := http.NewRequestWithContext(ctx, "GET", "http://"+serverVIP+"/hold", nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			resp, err := c.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		waitFor(t, "the request at the backend", func() bool { return m.hold.arrived.Load() == 1 })
		cancel() // closes the client's connection: HTTP/1.1 cannot cancel otherwise
		if err := <-done; err == nil {
			t.Fatal("the cancelled request got a response")
		}
		findFlow(t, m.wpLog, map[string]any{"reporter": "waypoint", "path": "/hold", "response_flags": "DC"})
		waitFor(t, "the backend's request to end", func() bool { return m.hold.left.Load() == 1 })
	})

	t.Run("weighted split 90/10 over 500 requests", func(t *testing.T) {
		m.setL7(t, serverRoute(`    backends:
    - {destination: {service: shop/`+serverV1Host+`, port: 80}, weight: 90}
    - {destination: {service: shop/`+serverV2Host+`, port: 80}, weight: 10}
`))
		counts := map[string]int{}
		const n = 500
		for i := 0; i < n; i++ {
			r := do(t, c, "GET", "/split", nil)
			if r.code != 200 {
				t.Fatalf("request %d: %d %q", i, r.code, r.body)
			}
			counts[r.body]++
		}
		share := float64(counts["v2"]) / n
		t.Logf("v1 %d, v2 %d: v2 share %.1f%%", counts["v1"], counts["v2"], 100*share)
		if share < 0.05 || share > 0.15 {
			t.Fatalf("v2 got %.1f%% of %d requests, want 10%% ± 5%%", 100*share, n)
		}
	})

	t.Run("header match goes to v2, the rest to v1; header mutation applied", func(t *testing.T) {
		m.setL7(t, v2ByHeader("    filters: [{request_header_modifier: {set: [{name: x-test, value: canary}]}}]\n"))
		for i := 0; i < 20; i++ {
			if r := do(t, c, "GET", "/", map[string]string{"X-Version": "v2"}); r.body != "v2" || r.header.Get("X-Seen-Test") != "canary" {
				t.Fatalf("with x-version: v2 got %d %q (x-test %q), want v2 with x-test canary", r.code, r.body, r.header.Get("X-Seen-Test"))
			}
			if r := do(t, c, "GET", "/", nil); r.body != "v1" {
				t.Fatalf("without the header got %d %q, want v1", r.code, r.body)
			}
		}
	})

	t.Run("L7 DENY of POST /admin, with path normalization", func(t *testing.T) {
		m.setL7(t, serverRoute(toV1)+`
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: deny-admin, namespace: shop}
  spec:
    targetRefs: [{kind: Service, group: "", name: server}]
    action: DENY
    rules: [{to: [{operation: {methods: [POST], paths: ["/admin", "/admin/*"]}}]}]
`)
		for _, path := range []string{"/admin", "//admin", "/%2Fadmin", "/public/../admin", "/admin;x=y"} {
			r := do(t, c, "POST", path, nil)
			if r.code != 403 || r.body != "RBAC: access denied" {
				t.Errorf("POST %s: got %d %q, want 403 RBAC: access denied", path, r.code, r.body)
			}
		}
		if r := do(t, c, "GET", "/public", nil); r.code != 200 || r.body != "v1" {
			t.Errorf("GET /public: got %d %q, want 200 v1", r.code, r.body)
		}
		if r := do(t, c, "GET", "/admin", nil); r.code != 200 {
			t.Errorf("GET /admin: got %d, want 200 (only POST is denied)", r.code)
		}
		findFlow(t, m.wpLog, map[string]any{"reporter": "waypoint", "method": "POST", "path": "/admin",
			"response_code": 403, "decision": "deny", "policy": "shop/deny-admin", "src.identity": id("client")})
	})

	t.Run("request timeout 200ms against a 2s backend answers 504 UT", func(t *testing.T) {
		m.setL7(t, serverRoute(toV1+"    timeouts: {request: 0.2s}\n"))
		start := time.Now()
		r := do(t, c, "GET", "/slow", nil)
		took := time.Since(start)
		t.Logf("504 after %v", took)
		if r.code != 504 || r.body != "upstream request timeout" {
			t.Fatalf("got %d %q, want 504 upstream request timeout", r.code, r.body)
		}
		// Generous: the point is that it did not wait for the backend's 2s.
		if took < 200*time.Millisecond || took > 1500*time.Millisecond {
			t.Fatalf("answered after %v, want after the 200ms timeout and well before the backend's 2s", took)
		}
		findFlow(t, m.wpLog, map[string]any{"path": "/slow", "response_code": 504, "response_flags": "UT"})
	})

	t.Run("retries on 503 hide a backend failing half the time", func(t *testing.T) {
		m.setL7(t, serverRoute(toV1+"    retry: {attempts: 3, codes: [503], backoff: 0.001s}\n"))
		ok := 0
		const n = 1000
		for i := 0; i < n; i++ {
			if r := do(t, c, "GET", "/flaky", nil); r.code == 200 {
				ok++
			}
		}
		calls := m.flakyCalls[0].Load()
		t.Logf("%d/%d succeeded; the backend saw %d calls", ok, n, calls)
		if ok < n*99/100 {
			t.Fatalf("%d/%d succeeded, want ≥ 99%%", ok, n)
		}
		if calls < n*3/2 {
			t.Fatalf("the backend saw %d calls for %d requests: it did not fail half the time", calls, n)
		}
	})

	t.Run("a config change does not drop requests in flight", func(t *testing.T) {
		m.setL7(t, serverRoute(toV1))
		const n = 10
		errs := make(chan string, n)
		for i := 0; i < n; i++ {
			go func() {
				req, _ := http.NewRequest("GET", "http://"+serverVIP+"/wait", nil)
				resp, err := c.Do(req)
				if err != nil {
					errs <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				// Routed by whichever table was in force when it arrived.
				if resp.StatusCode != 200 || (string(b) != "v1" && string(b) != "v2") {
					errs <- fmt.Sprintf("%d %q", resp.StatusCode, b)
					return
				}
				errs <- ""
			}()
		}
		// Swap tables while the requests wait at the backend: to v2, and back.
		for i := 0; i < 20; i++ {
			if i%2 == 0 {
				m.setL7(t, serverRoute(strings.ReplaceAll(toV1, serverV1Host, serverV2Host)))
			} else {
				m.setL7(t, serverRoute(toV1))
			}
			time.Sleep(5 * time.Millisecond)
		}
		for i := 0; i < n; i++ {
			select {
			case e := <-errs:
				if e != "" {
					t.Errorf("request in flight during config swaps: %s", e)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("requests did not finish")
			}
		}
	})

	t.Run("h2c client", func(t *testing.T) {
		m.setL7(t, serverRoute(toV1))
		h2 := m.httpClient(t, true)
		r := do(t, h2, "GET", "/h2", nil)
		if r.code != 200 || r.proto != 2 || r.header.Get("X-Proto") != "HTTP/2.0" {
			t.Fatalf("got %d %q over HTTP/%d, server saw %q; want 200 over HTTP/2 end to end", r.code, r.body, r.proto, r.header.Get("X-Proto"))
		}
	})

	t.Run("gRPC health check", func(t *testing.T) {
		m.setL7(t, "")
		cc := m.grpcDial(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check: %v, %v; want SERVING", resp, err)
		}
		findFlow(t, m.wpLog, map[string]any{"reporter": "waypoint", "path": "/grpc.health.v1.Health/Check", "response_code": 200})
	})

	t.Run("non-HTTP traffic is forwarded at L4", func(t *testing.T) {
		if err := m.echo(serverVIP+":7070", "\x00\x01binary hello"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a server-first protocol on a port declared tcp", func(t *testing.T) {
		m.setL7(t, serverRoute(toV1))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := m.client.Dial(ctx, serverVIP+":2525")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// The client waits for the greeting: the waypoint must not wait
		// for the client's first bytes to choose HTTP or L4.
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "220 ") {
			t.Fatalf("greeting %q, %v; want 220 …", line, err)
		}
	})

	t.Run("the waypoint's policies judge tunnels that are not HTTP as TCP", func(t *testing.T) {
		const allowGetPublic = `
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: allow-get-public, namespace: shop}
  spec:
    targetRefs: [{kind: Service, group: "", name: server}]
    rules: [{to: [{operation: {methods: [GET], paths: ["/public"]}}]}]
`
		m.setL7(t, serverRoute(toV1)+allowGetPublic)
		if r := do(t, c, "GET", "/public", nil); r.code != 200 || r.body != "v1" {
			t.Fatalf("GET /public: got %d %q, want 200 v1", r.code, r.body)
		}
		// An ALLOW with HTTP fields never matches a connection: bytes that
		// are not HTTP, or HTTP the proxy does not parse (a lower-case
		// method), cannot slip past it at L4.
		if err := m.echo(serverVIP+":7070", "\x00\x01binary hello"); err == nil {
			t.Fatal("an L4 tunnel passed an ALLOW of GET /public")
		}
		if err := m.echo(serverVIP+":80", "get /admin HTTP/1.1\r\nHost: x\r\n\r\n"); err == nil {
			t.Fatal("a lower-case request passed an ALLOW of GET /public at L4")
		}
		findFlow(t, m.wpLog, map[string]any{"reporter": "waypoint", "decision": "deny", "dst.service": serverHost,
			"error": "denied: " + l7authz.ReasonNoAllowMatched, "src.identity": id("client")})

		// A rule without HTTP fields allows the connection.
		m.setL7(t, serverRoute(toV1)+allowGetPublic+`- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: allow-echo-port, namespace: shop}
  spec:
    targetRefs: [{kind: Service, group: "", name: server}]
    rules: [{to: [{operation: {ports: ["7070"]}}]}]
`)
		if err := m.echo(serverVIP+":7070", "\x00\x01binary hello"); err != nil {
			t.Fatalf("an L4 tunnel an ALLOW of its port admits: %v", err)
		}
		findFlow(t, m.wpLog, map[string]any{"reporter": "waypoint", "decision": "allow", "dst.service": serverHost, "policy": "shop/allow-echo-port"})
	})

	t.Run("metrics", func(t *testing.T) {
		denied := metricstest.Sum(t, m.reg, "istio_requests_total", map[string]string{"response_code": "403", "reporter": "waypoint",
			"source_principal": strings.TrimPrefix(id("client"), "spiffe://"), "destination_service": serverHost})
		if denied < 5 {
			t.Errorf("istio_requests_total{response_code=403} = %v, want ≥ 5", denied)
		}
		for _, n := range []string{"istio_requests_total", "istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"} {
			if len(metricstest.Series(t, m.reg, n)) == 0 {
				t.Errorf("metric %s missing", n)
			}
		}
	})
}
