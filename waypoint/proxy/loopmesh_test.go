package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/bench/load"
	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/hbone3"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/logtest"
	"github.com/ambientmesh/ambient/internal/metricstest"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/waypoint/proxy"
	"github.com/ambientmesh/ambient/waypoint/wpconfig"
)

// Addresses of the loopback mesh: every one in 127.0.0.0/8, so that no
// packet leaves the machine. The service VIPs are only ever :authority
// values; the workloads' addresses are where their apps listen.
const (
	loopServerVIP   = "127.0.10.10"
	loopServerV1VIP = "127.0.10.11"
	loopServerV2VIP = "127.0.10.12"
	loopClientIP    = "127.0.0.4"
	loopV1IP        = "127.0.0.2"
	loopV2IP        = "127.0.0.3"

	// The server service and workloads are dual-stack: these IPv6
	// addresses are only ever :authority values too (the servers' ztunnel
	// below reaches the app at the workload's IPv4 address).
	loopServerVIP6 = "fd00:96::10"
	loopV1IP6      = "fd00:10::2"
	loopV2IP6      = "fd00:10::3"
)

// loopIPv4Of is the IPv4 address of a dual-stack workload's IPv6 one.
var loopIPv4Of = map[netip.Addr]string{
	netip.MustParseAddr(loopV1IP6): loopV1IP,
	netip.MustParseAddr(loopV2IP6): loopV2IP,
}

// loopMesh is the waypoint on loopback, without network namespaces or
// root: a client tunnel (HBONE, as the client's ztunnel opens it) to the
// real Proxy, which forwards over HBONE to an hbone.Server standing in
// for the servers' ztunnel, which splices each tunnel to the bench/load
// HTTP echo backend of workload server-v1 (127.0.0.2) or server-v2
// (127.0.0.3). Services: server (both workloads), server-v1, server-v2,
// port 80. The server service and its workloads are dual-stack.
type loopMesh struct {
	proxy   *proxy.Proxy
	reg     *prometheus.Registry
	flowLog *logtest.Buffer // nil: the flow log is discarded (benchmarks)

	tunnel net.Conn // the client's tunnel to loopServerVIP:80
	br     *bufio.Reader

	// openTunnel opens another tunnel of the client to loopServerVIP:80.
	openTunnel func(testing.TB) net.Conn
	// dialAuthority opens a tunnel of the client to the waypoint for an
	// authority of its choice; dialAuthority3 the same over HBONE/3
	// (QUIC), to the waypoint's UDP listener.
	dialAuthority, dialAuthority3 func(authority string) (net.Conn, error)
	// dialUDP opens a connect-udp tunnel of the client to the waypoint
	// over HBONE (h2) or HBONE/3 (h3).
	dialUDP func(h3 bool, authority string) error

	mu      sync.Mutex
	streams map[netip.Addr]int // tunnels the servers' ztunnel accepted, by destination
}

// streamsTo is how many tunnels the servers' ztunnel accepted to ip.
func (m *loopMesh) streamsTo(ip string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.streams[netip.MustParseAddr(ip)]
}

// newLoopMesh starts the loopback mesh. With a flowLog the waypoint writes
// each flow at once; without, it buffers them as cmd/waypoint does and
// discards them.
func newLoopMesh(tb testing.TB, flowLog *logtest.Buffer) *loopMesh {
	tb.Helper()
	m := &loopMesh{reg: prometheus.NewRegistry(), flowLog: flowLog, streams: map[netip.Addr]int{}}
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	source := func(sa string) (spiffeid.ID, *identity.StaticSource) {
		svid, err := authority.NewSVID(spiffeid.RequireFromString(id(sa)), time.Hour)
		if err != nil {
			tb.Fatal(err)
		}
		return svid.ID, identity.NewStaticSource(svid, authority.Bundle())
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stops []chan error
	tb.Cleanup(func() {
		cancel()
		for _, done := range stops {
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				tb.Error("the loopback mesh did not stop within 15s")
			}
		}
	})
	run := func(f func(context.Context) error) {
		done := make(chan error, 1)
		stops = append(stops, done)
		go func() { done <- f(ctx) }()
	}
	listen := func(addr string) net.Listener {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			tb.Fatal(err)
		}
		return ln
	}

	// The apps: one echo backend per server workload.
	appPorts := map[string]uint32{}
	for _, ip := range []string{loopV1IP, loopV2IP} {
		be, err := load.NewHTTPBackend(load.HTTPBackendConfig{Listener: listen(ip + ":0")})
		if err != nil {
			tb.Fatal(err)
		}
		appPorts[ip] = uint32(netip.MustParseAddrPort(be.Addr()).Port())
		run(be.Run)
	}

	// The servers' ztunnel: terminates the waypoint's tunnels as the
	// server identity and splices them to the app (TCP to :authority).
	_, serverSrc := source("server")
	zt, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig: identity.ServerConfig(serverSrc, authority.Bundle(), td),
		Authorize: func(_ context.Context, st *hbone.Stream) error {
			m.mu.Lock()
			m.streams[st.Authority.Addr()]++
			m.mu.Unlock()
			return nil
		},
		Dial: func(ctx context.Context, st *hbone.Stream) (net.Conn, error) {
			addr := st.Authority.String()
			if v4, ok := loopIPv4Of[st.Authority.Addr()]; ok {
				addr = net.JoinHostPort(v4, strconv.Itoa(int(st.Authority.Port())))
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		DrainTimeout: time.Second,
	})
	if err != nil {
		tb.Fatal(err)
	}
	ztLn := listen(loopV1IP + ":0")
	run(func(ctx context.Context) error { return zt.Serve(ctx, ztLn) })

	// The mesh.
	store := state.NewStore()
	port := func(target uint32) *workloadapi.PortList {
		return &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: target}}}
	}
	workload := func(name, sa, version string, ips []string, svcs map[string]*workloadapi.PortList) *workloadapi.Workload {
		var addrs [][]byte
		for _, ip := range ips {
			addrs = append(addrs, netip.MustParseAddr(ip).AsSlice())
		}
		return &workloadapi.Workload{Uid: name, Name: name, Namespace: "shop", ServiceAccount: sa, Node: "node-1",
			Addresses: addrs, Status: workloadapi.WorkloadStatus_HEALTHY,
			TunnelProtocol: workloadapi.TunnelProtocol_HBONE, CanonicalName: sa, CanonicalRevision: version, Services: svcs}
	}
	service := func(host string, vips ...string) *workloadapi.Service {
		name, _, _ := strings.Cut(host, ".")
		var addrs []*workloadapi.NetworkAddress
		for _, vip := range vips {
			addrs = append(addrs, &workloadapi.NetworkAddress{Address: netip.MustParseAddr(vip).AsSlice()})
		}
		return &workloadapi.Service{Name: name, Namespace: "shop", Hostname: host, Addresses: addrs,
			Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}
	}
	// bound makes the waypoint below the service's, as the server
	// Service's is in the netns mesh.
	bound := func(s *workloadapi.Service) *workloadapi.Service {
		s.Waypoint = &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Hostname{
			Hostname: &workloadapi.NamespacedHostname{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}}}
		return s
	}
	if err := store.Replace(state.Snapshot{
		Workloads: []*workloadapi.Workload{
			workload("client-1", "client", "v1", []string{loopClientIP}, nil),
			workload("server-v1-1", "server", "v1", []string{loopV1IP, loopV1IP6}, map[string]*workloadapi.PortList{
				"shop/" + serverHost: port(appPorts[loopV1IP]), "shop/" + serverV1Host: port(appPorts[loopV1IP])}),
			workload("server-v2-1", "server", "v2", []string{loopV2IP, loopV2IP6}, map[string]*workloadapi.PortList{
				"shop/" + serverHost: port(appPorts[loopV2IP]), "shop/" + serverV2Host: port(appPorts[loopV2IP])}),
		},
		Services: []*workloadapi.Service{
			bound(service(serverHost, loopServerVIP, loopServerVIP6)), service(serverV1Host, loopServerV1VIP), service(serverV2Host, loopServerV2VIP),
			service("waypoint.shop.svc.cluster.local", waypointVIP),
		},
	}); err != nil {
		tb.Fatal(err)
	}

	// The waypoint. Its tunnels to a workload's ztunnel (ip:15008) reach
	// the one above.
	wpID, wpSrc := source("waypoint")
	metrics, err := telemetry.NewHTTPMetrics(m.reg, "Kubernetes")
	if err != nil {
		tb.Fatal(err)
	}
	flows := telemetry.NewBufferedFlowLog(io.Discard, time.Second)
	if flowLog != nil {
		flows = telemetry.NewFlowLog(flowLog)
	}
	wpLn := listen("127.0.0.1:0")
	wpPC, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var d net.Dialer
	m.proxy, err = proxy.New(proxy.Config{
		Identity: wpID, SVIDs: wpSrc, Bundles: authority.Bundle(), Store: store,
		GatewayNamespace: "shop", GatewayName: "waypoint", Listener: wpLn, PacketConn: wpPC,
		DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Port() == 15008 {
				addr = ztLn.Addr().String()
			}
			return d.DialContext(ctx, network, addr)
		},
		FlowLog: flows, Metrics: metrics, Seed: 1, DrainTimeout: time.Second,
	})
	if err != nil {
		tb.Fatal(err)
	}
	run(m.proxy.Run)
	m.proxy.SetL7(mustCompileL7(tb, ""))

	// The client's tunnel to the server service, from the client pod's
	// address, as the client's ztunnel opens it.
	clientID, clientSrc := source("client")
	cl, err := hbone.NewClient(hbone.ClientConfig{
		TLSConfig: func(_, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientConfig(clientSrc, authority.Bundle(), dst), nil
		},
		Dial: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(loopClientIP)}}).DialContext,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cl.Close() })
	cl3, err := hbone3.NewClient(hbone3.ClientConfig{
		TLSConfig: func(_, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientConfig(clientSrc, authority.Bundle(), dst), nil
		},
		ListenPacket: func(context.Context, spiffeid.ID, netip.AddrPort) (net.PacketConn, error) {
			return net.ListenPacket("udp", loopClientIP+":0")
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cl3.Close() })
	target := func(wp net.Addr, authority string) hbone.Target {
		return hbone.Target{Source: clientID, Destination: wpID,
			Address:   netip.MustParseAddrPort(wp.String()),
			Authority: netip.MustParseAddrPort(authority),
			Header:    http.Header{"Forwarded": {"for=" + loopClientIP}}}
	}
	m.dialAuthority = func(authority string) (net.Conn, error) {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		return cl.Dial(dctx, target(wpLn.Addr(), authority))
	}
	m.dialAuthority3 = func(authority string) (net.Conn, error) {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		return cl3.Dial(dctx, target(wpPC.LocalAddr(), authority))
	}
	m.dialUDP = func(h3 bool, authority string) error {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		var t io.Closer
		var err error
		if h3 {
			t, err = cl3.DialUDP(dctx, target(wpPC.LocalAddr(), authority))
		} else {
			t, err = cl.DialUDP(dctx, target(wpLn.Addr(), authority))
		}
		if err == nil {
			t.Close()
		}
		return err
	}
	m.openTunnel = func(tb testing.TB) net.Conn {
		c, err := m.dialAuthority(loopServerVIP + ":80")
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		return c
	}
	m.tunnel = m.openTunnel(tb)
	m.br = bufio.NewReaderSize(m.tunnel, 16<<10)
	return m
}

// mustCompileL7 compiles the routes and policies of a waypoint local
// config document.
func mustCompileL7(tb testing.TB, doc string) *proxy.Compiled {
	tb.Helper()
	_, l7, err := wpconfig.Parse([]byte(doc))
	if err != nil {
		tb.Fatal(err)
	}
	c, errs := proxy.Compile(l7)
	if len(errs) > 0 {
		tb.Fatalf("compile: %v", errs)
	}
	return c
}

// roundTrip sends req (a whole HTTP/1.1 request) on the client's tunnel
// and reads the response into buf, which must be the body's exact size.
func (m *loopMesh) roundTrip(req, buf []byte) error {
	if _, err := m.tunnel.Write(req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(m.br, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return errors.New("status " + resp.Status + ": " + string(b))
	}
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return err
	}
	if n, _ := resp.Body.Read(buf[:1]); n > 0 || resp.Close {
		return errors.New("a longer body, or the connection closed")
	}
	return nil
}

// benchL7 is the L7 configuration of the benchmark's policy-and-routing
// variant: an ALLOW policy on the server service (the client's principal,
// POST or GET, /echo or /api/*), a DENY policy on the waypoint Gateway
// (/admin), and the server service's HTTPRoute splitting between
// server-v1 and server-v2.
var benchL7 = serverRoute(`    backends:
    - {destination: {service: shop/`+serverV1Host+`, port: 80}, weight: 50}
    - {destination: {service: shop/`+serverV2Host+`, port: 80}, weight: 50}
`) + `
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: allow-client, namespace: shop}
  spec:
    targetRefs: [{kind: Service, group: "", name: server}]
    action: ALLOW
    rules:
    - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
      to: [{operation: {methods: [GET, POST], paths: ["/echo", "/api/*"]}}]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: deny-admin, namespace: shop}
  spec:
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
    action: DENY
    rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
`

// benchBody is the request and response body size: 1 KB, as the perf
// measurements' load.
const benchBody = 1024

// TestLoopMesh_ServesOnlyWhatIsBoundToIt: the waypoint refuses (400) a
// tunnel for a destination that does not use it. Otherwise any client
// could relay through it and reach that destination as the waypoint's
// identity — or the waypoint itself, which then tunnelled to itself
// without end.
func TestLoopMesh_ServesOnlyWhatIsBoundToIt(t *testing.T) {
	m := newLoopMesh(t, nil)
	for _, tc := range []struct {
		authority string
		refused   bool
	}{
		{loopServerVIP + ":80", false},  // the server Service uses the waypoint
		{loopServerV1VIP + ":80", true}, // server-v1 does not
		{loopV1IP + ":8080", true},      // nor does its workload
		{waypointVIP + ":15008", true},  // the waypoint's own Service
		{"10.96.200.200:80", true},      // nothing of the mesh
	} {
		c, err := m.dialAuthority(tc.authority)
		var se *hbone.StatusError
		switch {
		case tc.refused && !(errors.As(err, &se) && se.Code == http.StatusBadRequest):
			t.Errorf("%s: %v, want refused with 400", tc.authority, err)
		case !tc.refused && err != nil:
			t.Errorf("%s: %v, want served", tc.authority, err)
		}
		if c != nil {
			c.Close()
		}
	}
}

// TestLoopMesh_ServesHBONE3: a client whose tunnel to the waypoint goes
// over QUIC (UDP 15008) is served as over HTTP/2: its keep-alive requests
// are routed and answered, and the flow records name the caller and the
// transport; the waypoint's refusals apply the same (a destination not
// bound to it: 400), and a connect-udp tunnel is refused over either
// transport (a waypoint carries TCP only).
func TestLoopMesh_ServesHBONE3(t *testing.T) {
	log := &logtest.Buffer{}
	m := newLoopMesh(t, log)
	c, err := m.dialAuthority3(loopServerVIP + ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tm := &loopMesh{tunnel: c, br: bufio.NewReader(c)}
	buf := make([]byte, benchBody)
	for range 3 {
		if err := tm.roundTrip(load.HTTPRequest(loopServerVIP, benchBody), buf); err != nil {
			t.Fatal(err)
		}
	}
	f := findFlow(t, log, map[string]any{"reporter": "waypoint", "transport": "hbone3", "response_code": 200,
		"src.identity": id("client"), "src.workload": "client-1", "dst.service": serverHost})
	if a, _ := f["src.addr"].(string); !strings.HasPrefix(a, loopClientIP+":") {
		t.Errorf("flow %v: src.addr, want the client's address %s", f, loopClientIP)
	}

	var se *hbone.StatusError
	if _, err := m.dialAuthority3(loopServerV1VIP + ":80"); !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Errorf("over QUIC to a service not bound to the waypoint: %v, want 400", err)
	}
	findFlow(t, log, map[string]any{"reporter": "waypoint", "transport": "hbone3", "decision": "deny",
		"dst.addr": loopServerV1VIP + ":80"})
	for h3, want := range map[bool]int{false: http.StatusBadRequest, true: http.StatusNotImplemented} {
		if err := m.dialUDP(h3, loopServerVIP+":53"); !errors.As(err, &se) || se.Code != want {
			t.Errorf("connect-udp (h3 %t) to the waypoint: %v, want %d", h3, err, want)
		}
	}
}

// TestLoopMesh_IPv6VIPReachesEndpointsOverIPv6: a request to the
// dual-stack service's IPv6 VIP goes to its endpoints' IPv6 addresses, as
// ztunnel routes a connection (state.Endpoint.AddrFor), with the default
// route and with an HTTPRoute's backends alike; one to the IPv4 VIP
// still goes over IPv4.
func TestLoopMesh_IPv6VIPReachesEndpointsOverIPv6(t *testing.T) {
	m := newLoopMesh(t, nil)
	buf := make([]byte, benchBody)
	for _, l7 := range []string{"", benchL7} {
		m.proxy.SetL7(mustCompileL7(t, l7))
		m.proxy.CloseIdleConnections()
		for _, vip := range []string{loopServerVIP6, loopServerVIP} {
			c, err := m.dialAuthority(net.JoinHostPort(vip, "80"))
			if err != nil {
				t.Fatalf("tunnel to %s: %v", vip, err)
			}
			v6Before := m.streamsTo(loopV1IP6) + m.streamsTo(loopV2IP6)
			v4Before := m.streamsTo(loopV1IP) + m.streamsTo(loopV2IP)
			tm := &loopMesh{tunnel: c, br: bufio.NewReader(c)}
			for range 4 {
				if err := tm.roundTrip(load.HTTPRequest(vip, benchBody), buf); err != nil {
					t.Fatalf("policies %t, VIP %s: %v", l7 != "", vip, err)
				}
			}
			c.Close()
			m.proxy.CloseIdleConnections()
			v6 := m.streamsTo(loopV1IP6) + m.streamsTo(loopV2IP6) - v6Before
			v4 := m.streamsTo(loopV1IP) + m.streamsTo(loopV2IP) - v4Before
			if wantV6 := vip == loopServerVIP6; (v6 > 0) != wantV6 || (v4 > 0) == wantV6 {
				t.Errorf("policies %t, VIP %s: upstream tunnels to IPv6 %d, to IPv4 %d", l7 != "", vip, v6, v4)
			}
		}
	}
}

// TestLoopMesh_RequestsRecordedAsBefore runs the benchmark's requests
// through the loopback mesh, with and without policies and routes, and
// checks what each request leaves behind: the echoed body, its flow
// record and its istio_requests_total sample, label by label.
func TestLoopMesh_RequestsRecordedAsBefore(t *testing.T) {
	log := &logtest.Buffer{}
	m := newLoopMesh(t, log)
	req := load.HTTPRequest(loopServerVIP, benchBody)
	buf := make([]byte, benchBody)
	for _, v := range []struct {
		name, l7, policy string
		services         []string // the destination services the requests may go to
	}{
		{"default-route", "", "", []string{serverHost}},
		{"authz+route", benchL7, "shop/allow-client", []string{serverV1Host, serverV2Host}},
	} {
		t.Run(v.name, func(t *testing.T) {
			m.proxy.SetL7(mustCompileL7(t, v.l7))
			const n = 20
			for range n {
				if err := m.roundTrip(req, buf); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf, req[len(req)-benchBody:]) {
					t.Fatal("the body did not come back as sent")
				}
			}
			want := map[string]any{"reporter": "waypoint", "method": "POST", "path": "/echo", "response_code": 200,
				"decision": "allow", "security": "mutual_tls", "transport": "hbone",
				"src.identity": id("client"), "src.workload": "client-1", "src.namespace": "shop",
				"dst.identity": id("server"), "dst.namespace": "shop",
				"bytes_sent": benchBody, "bytes_received": benchBody}
			if v.policy != "" {
				want["policy"] = v.policy
			}
			for _, svc := range v.services {
				want["dst.service"] = svc
				f := findFlow(t, log, want)
				if _, ok := f["response_flags"]; ok {
					t.Errorf("flow %v has response flags, want none", f)
				}
				if f["src.addr"] == nil || f["dst.addr"] == nil || f["dst.workload"] == nil {
					t.Errorf("flow %v lacks an address or the endpoint workload", f)
				}
			}
		})
	}

	// The requests went upstream over pooled HTTP/2 tunnels to the
	// server's endpoints, which Tunnels shows with their paths.
	tunnels := m.proxy.Tunnels()
	if len(tunnels) == 0 {
		t.Error("no pooled upstream tunnel")
	}
	for _, tun := range tunnels {
		if tun.Transport != "hbone" || tun.Source != id("waypoint") || tun.Peer != id("server") || tun.Path == nil || tun.Path.Sent == 0 {
			t.Errorf("upstream tunnel %+v (path %+v): want hbone from the waypoint to the server with TCP_INFO", tun, tun.Path)
		}
	}

	var total float64
	for _, s := range metricstest.Series(t, m.reg, "istio_requests_total") {
		labels := s.Labels
		want := map[string]string{"reporter": "waypoint", "source_workload": "client-1", "source_canonical_service": "client",
			"source_canonical_revision": "v1", "source_workload_namespace": "shop", "source_principal": "cluster.local/ns/shop/sa/client",
			"source_app": "client", "source_version": "v1", "source_cluster": "Kubernetes",
			"destination_service_namespace": "shop", "destination_workload_namespace": "shop",
			"destination_canonical_service": "server", "destination_app": "server",
			"destination_principal": "cluster.local/ns/shop/sa/server", "destination_cluster": "Kubernetes",
			"request_protocol": "http", "response_code": "200", "grpc_response_status": "unknown",
			"response_flags": "-", "connection_security_policy": "mutual_tls"}
		for k, v := range want {
			if labels[k] != v {
				t.Errorf("istio_requests_total%v: %s=%q, want %q", labels, k, labels[k], v)
			}
		}
		svc, wl, ver := labels["destination_service"], labels["destination_workload"], labels["destination_version"]
		name, _, _ := strings.Cut(svc, ".")
		if labels["destination_service_name"] != name || wl != "server-"+ver+"-1" || labels["destination_canonical_revision"] != ver {
			t.Errorf("istio_requests_total%v: destination labels disagree", labels)
		}
		total += s.Value
	}
	if total != 40 {
		t.Errorf("istio_requests_total sums to %v, want 40", total)
	}
}

// exchange sends one request on a tunnel, its body chunked (streamed,
// of unknown length) or with a Content-Length, and returns the status
// and body of the response.
func exchange(c net.Conn, br *bufio.Reader, method, path string, body []byte, chunked bool) (int, []byte, error) {
	var req bytes.Buffer
	req.WriteString(method + " " + path + " HTTP/1.1\r\nHost: " + loopServerVIP + "\r\n")
	switch {
	case chunked:
		req.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		for len(body) > 0 {
			n := min(len(body), 5000)
			req.WriteString(strconv.FormatInt(int64(n), 16) + "\r\n")
			req.Write(body[:n])
			req.WriteString("\r\n")
			body = body[n:]
		}
		req.WriteString("0\r\n\r\n")
	default:
		req.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n")
		req.Write(body)
	}
	if _, err := c.Write(req.Bytes()); err != nil {
		return 0, nil, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// mirrorL7 routes the server service to server-v1 and mirrors every
// request to server-v2.
var mirrorL7 = serverRoute(`    backends: [{destination: {service: shop/` + serverV1Host + `, port: 80}, weight: 1}]
    filters: [{request_mirror: {backend: {service: shop/` + serverV2Host + `, port: 80}}}]
`)

// TestLoopMesh_ConcurrentRequestsKeepTheirOwn runs requests of every body
// kind (none; buffered for retries; too large to buffer; chunked, of
// unknown length) on several tunnels at once, with routes and policies,
// mirrors, and neither, and checks that each gets its own body back and
// its own flow record: the parts requests reuse (pooled records, body
// buffers, memoized peers) are never shared by two at a time, nor taken
// from a mirror still sending. Run it with -race.
func TestLoopMesh_ConcurrentRequestsKeepTheirOwn(t *testing.T) {
	log := &logtest.Buffer{}
	m := newLoopMesh(t, log)
	const tunnels, perTunnel = 4, 12
	sizes := []int{0, benchBody, 70 << 10, 3000}
	pathOf := func(v, g, i int) string { // under /api/: benchL7 allows it
		return "/api/" + strconv.Itoa(v) + "/" + strconv.Itoa(g) + "/" + strconv.Itoa(i)
	}
	variants := []string{mirrorL7, "", benchL7} // mirrors first: only they go to server-v2
	for v, l7 := range variants {
		m.proxy.SetL7(mustCompileL7(t, l7))
		errs := make(chan error, tunnels)
		for g := range tunnels {
			c := m.openTunnel(t)
			go func() {
				br := bufio.NewReader(c)
				for i := range perTunnel {
					size, chunked := sizes[i%len(sizes)], i%len(sizes) == 3
					body := bytes.Repeat([]byte{byte('a' + g), byte('0' + i%10)}, size/2)
					method := "POST"
					if size == 0 {
						method = "GET"
					}
					path := pathOf(v, g, i)
					code, got, err := exchange(c, br, method, path, body, chunked)
					if err == nil && (code != 200 || !bytes.Equal(got, body)) {
						err = errors.New(path + ": status " + strconv.Itoa(code) + ", " + strconv.Itoa(len(got)) +
							" bytes not the " + strconv.Itoa(len(body)) + " sent")
					}
					if err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		for range tunnels {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if l7 == mirrorL7 {
			waitFor(t, "mirrors reaching server-v2", func() bool { return m.streamsTo(loopV2IP) > 0 })
		}
	}
	for v := range variants {
		for g := range tunnels {
			for i := range perTunnel {
				size := sizes[i%len(sizes)] / 2 * 2
				findFlow(t, log, map[string]any{"path": pathOf(v, g, i), "bytes_sent": size, "bytes_received": size,
					"response_code": 200, "src.workload": "client-1", "dst.identity": id("server")})
			}
		}
	}

}
