package proxy_test

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/waypoint/proxy"
)

// connTracker follows an app's connections by their remote address, the
// app's X-Remote-Addr.
type connTracker struct {
	mu    sync.Mutex
	ended map[string]chan struct{} // closed when the connection ends
}

// state is the app server's ConnState hook.
func (c *connTracker) state(nc net.Conn, s http.ConnState) {
	addr := nc.RemoteAddr().String()
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := c.endedLocked(addr)
	switch s {
	case http.StateNew: // an address used again starts afresh
		select {
		case <-ch:
			c.ended[addr] = make(chan struct{})
		default:
		}
	case http.StateClosed, http.StateHijacked:
		select {
		case <-ch:
		default:
			close(ch)
		}
	}
}

// endOf is closed when the connection from addr has ended.
func (c *connTracker) endOf(addr string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.endedLocked(addr)
}

func (c *connTracker) endedLocked(addr string) chan struct{} {
	if c.ended == nil {
		c.ended = make(map[string]chan struct{})
	}
	ch := c.ended[addr]
	if ch == nil {
		ch = make(chan struct{})
		c.ended[addr] = ch
	}
	return ch
}

const blackHoleHost = "blackhole.shop.svc.cluster.local"

// addBlackHole adds workload blackhole-1, an endpoint of the services
// blackhole and server, whose tunnels never complete: its address is node
// 2's, where a listener on 15008 accepts connections and never answers
// (no TLS handshake).
func (m *testMesh) addBlackHole(t *testing.T) {
	node := m.topo.Nodes[1]
	ln, err := node.Listen(netip.AddrPortFrom(node.IP, 15008).String())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	ports := []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}
	w := &workloadapi.Workload{Uid: "blackhole-1", Name: "blackhole-1", Namespace: "shop", ServiceAccount: "server",
		Node: "node-3", Addresses: [][]byte{node.IP.AsSlice()}, Status: workloadapi.WorkloadStatus_HEALTHY,
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE, CanonicalName: "blackhole",
		Services: map[string]*workloadapi.PortList{"shop/" + blackHoleHost: {Ports: ports}, "shop/" + serverHost: {Ports: ports}}}
	svc := &workloadapi.Service{Name: "blackhole", Namespace: "shop", Hostname: blackHoleHost, Ports: ports,
		Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr("10.96.0.13").AsSlice()}}}
	if err := m.store.Apply(state.Update{Workloads: []*workloadapi.Workload{w}, Services: []*workloadapi.Service{svc}}); err != nil {
		t.Fatal(err)
	}
}

// send makes a request from the client pod to the server service.
func send(t *testing.T, c *http.Client, method, path string, body io.Reader, hdr map[string]string) result {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+serverVIP+path, body)
	if err != nil {
		t.Fatal(err)
	}
	return roundTrip(t, c, req, hdr)
}

// TestWaypoint_ConnectionPoolTimeouts runs a DestinationRule's
// connectionPool connectTimeout and idleTimeout end to end: the waypoint's
// upstream tunnels are real HBONE to the endpoints' ztunnels, or to a
// listener that never completes the handshake.
func TestWaypoint_ConnectionPoolTimeouts(t *testing.T) {
	m := newTestMesh(t, func(c *proxy.Config) { c.DefaultConnectTimeout = 3 * time.Second })
	m.addBlackHole(t)
	c := m.httpClient(t, false)
	toBlackHole := `    backends: [{destination: {service: shop/` + blackHoleHost + `, port: 80}, weight: 1}]
    retry: {attempts: 0}
`

	t.Run("connectTimeout 300ms to a tunnel that never completes: 503 UF connection timeout", func(t *testing.T) {
		m.setL7(t, serverRoute(toBlackHole)+resilienceFor(blackHoleHost, "  traffic_policy: {connection_pool: {connect_timeout: 0.3s}}\n"))
		before := m.flagCount(t, "UF", "503")
		start := time.Now()
		r := send(t, c, "GET", "/connect-timeout", nil, nil)
		took := time.Since(start)
		t.Logf("%d after %v", r.code, took)
		const want = "upstream connect error or disconnect/reset before headers. reset reason: connection timeout"
		if r.code != 503 || r.body != want {
			t.Fatalf("got %d %q, want 503 %q", r.code, r.body, want)
		}
		// Generous: after the 300ms, and well before the mesh's 3s default
		// (Istio's is 10s).
		if took < 300*time.Millisecond || took > 2500*time.Millisecond {
			t.Fatalf("answered after %v, want after the 300ms connect timeout and well before the 3s default", took)
		}
		findFlow(t, m.wpLog, map[string]any{"path": "/connect-timeout", "response_code": 503, "response_flags": "UF"})
		if n := m.flagCount(t, "UF", "503") - before; n != 1 {
			t.Fatalf("istio_requests_total{response_code=503,response_flags=UF} grew by %v, want 1", n)
		}
	})

	t.Run("without a connectTimeout the connect is bounded by the default", func(t *testing.T) {
		m.setL7(t, serverRoute(toBlackHole)) // DefaultConnectTimeout: 3s
		start := time.Now()
		r := send(t, c, "GET", "/default-connect-timeout", nil, nil)
		took := time.Since(start)
		if r.code != 503 || !strings.HasSuffix(r.body, "reset reason: connection timeout") {
			t.Fatalf("got %d %q, want 503 connection timeout", r.code, r.body)
		}
		if took < 3*time.Second || took > 9*time.Second {
			t.Fatalf("answered after %v, want after the 3s default connect timeout", took)
		}
	})

	t.Run("connectTimeout with a retry: a second endpoint answers", func(t *testing.T) {
		// server: v1, v2 and the black hole, in turn.
		m.setL7(t, serverRoute(`    backends: [{destination: {service: shop/`+serverHost+`, port: 80}, weight: 1}]
    retry: {attempts: 2, backoff: 0.001s}
`)+resilienceFor(serverHost, "  traffic_policy: {load_balancer: LB_ROUND_ROBIN, connection_pool: {connect_timeout: 0.3s}}\n"))
		slow := 0
		for i := range 6 {
			start := time.Now()
			r := send(t, c, "GET", "/connect-retry", nil, nil)
			took := time.Since(start)
			if r.code != 200 || (r.body != "v1" && r.body != "v2") {
				t.Fatalf("request %d: %d %q after %v, want 200 from v1 or v2", i, r.code, r.body, took)
			}
			if took >= 300*time.Millisecond {
				slow++
			}
		}
		if slow == 0 {
			t.Fatal("no request went to the black hole first (none took the 300ms connect timeout)")
		}
		t.Logf("%d of 6 requests answered after a connect timeout and a retry", slow)
	})

	t.Run("idleTimeout 200ms closes the idle upstream connection, 1h keeps it", func(t *testing.T) {
		m.setL7(t, v2ByHeader("")+`resilience:
- service_key: shop/`+serverV1Host+`
  traffic_policy: {connection_pool: {idle_timeout: 0.2s}}
- service_key: shop/`+serverV2Host+`
  traffic_policy: {connection_pool: {connect_timeout: 10s, idle_timeout: 3600s}}
`)
		h2 := m.httpClient(t, true)
		for _, tc := range []struct {
			name   string
			client *http.Client
			method string
			body   func() io.Reader
		}{
			{"HTTP/1.1, no body (h1client)", c, "GET", func() io.Reader { return nil }},
			// A body of unknown length is streamed (http.Transport).
			{"HTTP/1.1, streamed body", c, "POST", func() io.Reader { return io.MultiReader(strings.NewReader("streamed")) }},
			{"h2c", h2, "GET", func() io.Reader { return nil }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				start := time.Now()
				a := send(t, tc.client, tc.method, "/idle", tc.body(), nil)
				b := send(t, tc.client, tc.method, "/idle", tc.body(), map[string]string{"X-Version": "v2"})
				if a.code != 200 || a.body != "v1" || b.code != 200 || b.body != "v2" {
					t.Fatalf("got %d %q and %d %q, want 200 from v1 and v2", a.code, a.body, b.code, b.body)
				}
				addrA, addrB := a.header.Get("X-Remote-Addr"), b.header.Get("X-Remote-Addr")
				select {
				case <-m.appConns[0].endOf(addrA):
				case <-time.After(10 * time.Second):
					t.Fatalf("v1's connection %s still open 10s after its request, with idleTimeout 200ms", addrA)
				}
				if took := time.Since(start); took < 200*time.Millisecond {
					t.Fatalf("v1's connection closed %v after its request began, before the 200ms idle timeout", took)
				}
				select {
				case <-m.appConns[1].endOf(addrB):
					t.Fatalf("v2's connection %s closed with idleTimeout 1h", addrB)
				default:
				}
				again := send(t, tc.client, tc.method, "/idle", tc.body(), nil)
				if again.code != 200 || again.body != "v1" {
					t.Fatalf("after the idle close: %d %q, want 200 from v1", again.code, again.body)
				}
				if next := again.header.Get("X-Remote-Addr"); next == addrA {
					t.Fatalf("the request after the idle close came on the closed connection %s", addrA)
				}
			})
		}
	})
}
