package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/certs"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/logtest"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/waypoint/proxy"
	"github.com/ambientmesh/ambient/ztunnel"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func id(sa string) string { return "spiffe://cluster.local/ns/shop/sa/" + sa }

// Addresses of the test mesh.
const (
	serverVIP   = "10.96.0.10"
	serverV1VIP = "10.96.0.11"
	serverV2VIP = "10.96.0.12"
	waypointVIP = "10.96.0.50"

	serverHost   = "server.shop.svc.cluster.local"
	serverV1Host = "server-v1.shop.svc.cluster.local"
	serverV2Host = "server-v2.shop.svc.cluster.local"
)

// findFlow waits until a flow with every field of want is in log.
func findFlow(t testing.TB, log *logtest.Buffer, want map[string]any) map[string]any {
	t.Helper()
	var found map[string]any
	waitFor(t, fmt.Sprintf("a flow with %v", want), func() bool {
		for _, f := range log.JSONLines(t) {
			ok := true
			for k, v := range want {
				if fmt.Sprint(f[k]) != fmt.Sprint(v) {
					ok = false
					break
				}
			}
			if ok {
				found = f
				return true
			}
		}
		return false
	})
	return found
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testMesh: node 1 runs the client pod (sa "client", captured) and the
// waypoint pod (sa "waypoint", not captured); node 2 the server pods v1 and
// v2 (sa "server", captured). A ztunnel per node, in process.
type testMesh struct {
	ca                 *ca.Authority
	topo               *testenv.Topology
	store              *state.Store
	client, wp, v1, v2 *testenv.Pod
	ztLogs             []*logtest.Buffer
	wpLog              *logtest.Buffer
	proxy              *proxy.Proxy
	reg                *prometheus.Registry
	flakyCalls         [2]atomic.Int64
	// sick makes an app answer "/sick/..." with 503; sickCalls counts
	// the calls. hold holds "/hold" requests (resilience_test.go).
	sick      [2]atomic.Bool
	sickCalls [2]atomic.Int64
	hold      gate
	// appConns follows the HTTP connections of each app (v1, v2).
	appConns [2]connTracker
}

func podUID(p *testenv.Pod) string { return fmt.Sprintf("pod-%d-%d", p.Node.Index, p.Index) }

// newTestMesh builds the mesh; opts adjust the waypoint's Config.
func newTestMesh(t *testing.T, opts ...func(*proxy.Config)) *testMesh {
	testenv.RequireRoot(t)
	m := &testMesh{topo: testenv.NewTopology(t, testenv.Spec{Nodes: 2, PodsPerNode: 2}), store: state.NewStore(), wpLog: &logtest.Buffer{}}
	m.client, m.wp, m.v1, m.v2 = m.topo.Pod(1, 1), m.topo.Pod(1, 2), m.topo.Pod(2, 1), m.topo.Pod(2, 2)
	var err error
	if m.ca, err = ca.NewSelfSigned(td, ca.Options{}); err != nil {
		t.Fatal(err)
	}
	ports := func(pp ...uint32) []*workloadapi.Port {
		var out []*workloadapi.Port
		for _, p := range pp {
			out = append(out, &workloadapi.Port{ServicePort: p, TargetPort: p})
		}
		return out
	}
	httpPorts := []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 9090, TargetPort: 9090, AppProtocol: workloadapi.AppProtocol_GRPC}, {ServicePort: 7070, TargetPort: 7070},
		{ServicePort: 2525, TargetPort: 2525, AppProtocol: workloadapi.AppProtocol_TCP}}
	workload := func(p *testenv.Pod, name, sa, version string, hbone bool, svcs map[string]*workloadapi.PortList) *workloadapi.Workload {
		w := &workloadapi.Workload{Uid: podUID(p), Name: name, Namespace: "shop", ServiceAccount: sa,
			Node: fmt.Sprintf("node-%d", p.Node.Index), Addresses: [][]byte{p.IP.AsSlice()},
			Status: workloadapi.WorkloadStatus_HEALTHY, CanonicalName: sa, CanonicalRevision: version, Services: svcs}
		if hbone {
			w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
		}
		return w
	}
	svcPorts := func(svcs ...string) map[string]*workloadapi.PortList {
		out := map[string]*workloadapi.PortList{}
		for _, s := range svcs {
			out["shop/"+s] = &workloadapi.PortList{Ports: httpPorts}
		}
		return out
	}
	service := func(name, vip string, pp []*workloadapi.Port, wp bool) *workloadapi.Service {
		s := &workloadapi.Service{Name: name, Namespace: "shop", Hostname: name + ".shop.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}}, Ports: pp}
		if wp {
			s.Waypoint = &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Hostname{
				Hostname: &workloadapi.NamespacedHostname{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}}}
		}
		return s
	}
	snap := state.Snapshot{
		Workloads: []*workloadapi.Workload{
			workload(m.client, "client-1", "client", "v1", true, nil),
			workload(m.wp, "waypoint-1", "waypoint", "", false, map[string]*workloadapi.PortList{
				"shop/waypoint.shop.svc.cluster.local": {Ports: ports(15008)}}),
			workload(m.v1, "server-v1-1", "server", "v1", true, svcPorts(serverHost, serverV1Host)),
			workload(m.v2, "server-v2-1", "server", "v2", true, svcPorts(serverHost, serverV2Host)),
		},
		Services: []*workloadapi.Service{
			service("waypoint", waypointVIP, ports(15008), false),
			service("server", serverVIP, httpPorts, true),
			service("server-v1", serverV1VIP, httpPorts, false),
			service("server-v2", serverV2VIP, httpPorts, false),
		},
	}
	if err := m.store.Replace(snap); err != nil {
		t.Fatal(err)
	}
	m.startApp(t, m.v1, "v1", 0)
	m.startApp(t, m.v2, "v2", 1)
	var zts []*ztunnel.Ztunnel
	for n, pods := range [][]*testenv.Pod{{m.client}, {m.v1, m.v2}} {
		log := &logtest.Buffer{}
		m.ztLogs = append(m.ztLogs, log)
		zts = append(zts, m.startZtunnel(t, n+1, pods, log))
	}
	waitFor(t, "ztunnels ready", func() bool {
		return zts[0].Ready() && zts[1].Ready() && len(zts[0].Pods()) == 1 && len(zts[1].Pods()) == 2
	})
	m.startWaypoint(t, opts...)
	return m
}

func (m *testMesh) startZtunnel(t *testing.T, n int, pods []*testenv.Pod, log *logtest.Buffer) *ztunnel.Ztunnel {
	cm, err := certs.New(certs.Config{Sign: certs.LocalSigner(m.ca, time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := telemetry.NewMetrics(prometheus.NewRegistry(), "Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	z, err := ztunnel.New(ztunnel.Config{Node: fmt.Sprintf("node-%d", n), Store: m.store, Certs: cm, Metrics: metrics,
		FlowLog: telemetry.NewFlowLog(log), DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		z.AddPod(podUID(p), p.Path)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); z.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; cm.Close() })
	return z
}

func (m *testMesh) startWaypoint(t *testing.T, opts ...func(*proxy.Config)) {
	svid, err := m.ca.NewSVID(spiffeid.RequireFromString(id("waypoint")), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	src := identity.NewStaticSource(svid, m.ca.Bundle())
	ln, err := m.wp.Listen("0.0.0.0:15008")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := netns.ListenUDP(m.wp.Path, "0.0.0.0:15008") // HBONE/3, as cmd/waypoint serves it
	if err != nil {
		t.Fatal(err)
	}
	m.reg = prometheus.NewRegistry()
	metrics, err := telemetry.NewHTTPMetrics(m.reg, "Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	path := m.wp.Path
	cfg := proxy.Config{
		Identity: svid.ID, SVIDs: src, Bundles: m.ca.Bundle(), Store: m.store,
		GatewayNamespace: "shop", GatewayName: "waypoint", Listener: ln, PacketConn: pc,
		DialTCP: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return netns.DialTCP(ctx, path, addr)
		},
		ListenPacket: func(context.Context, netip.AddrPort) (net.PacketConn, error) {
			c, err := netns.ListenUDP(path, "0.0.0.0:0")
			if err != nil {
				return nil, err // not a typed nil in the interface
			}
			return c, nil
		},
		FlowLog: telemetry.NewFlowLog(m.wpLog), Metrics: metrics, Seed: 1, DrainTimeout: 2 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("waypoint Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("waypoint did not stop within 15s")
		}
	})
	m.proxy = p
}

// startApp serves, in pod p: HTTP/1.1 and h2c on 8080 (answers name,
// "/untyped" "<html>"+name with no Content-Type, "/slow" after 2s, "/flaky" 503 on every other call, "/sick/..." 503
// while m.sick says so, "/hold" when m.hold opens), gRPC health on 9090,
// a TCP echo on 7070, and on 2525 a server-first protocol: a greeting
// line ("220 <name> ready"), then an echo.
func (m *testMesh) startApp(t *testing.T, p *testenv.Pod, name string, idx int) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Served-By", name)
		w.Header().Set("X-Remote-Addr", r.RemoteAddr)
		w.Header().Set("X-Proto", r.Proto)
		w.Header().Set("X-Seen-Path", r.URL.EscapedPath())
		w.Header().Set("X-Seen-Test", r.Header.Get("X-Test"))
		w.Header().Set("X-Seen-Traceparent", r.Header.Get("Traceparent"))
		w.Header().Set("X-Seen-User-Agent", fmt.Sprint(r.Header["User-Agent"]))
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, name)
	})
	mux.HandleFunc("/untyped", func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = nil // none sent, none sniffed
		io.WriteString(w, "<html>"+name)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
		io.WriteString(w, name)
	})
	mux.HandleFunc("/wait", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		io.WriteString(w, name)
	})
	mux.HandleFunc("/flaky", func(w http.ResponseWriter, r *http.Request) {
		if m.flakyCalls[idx].Add(1)%2 == 1 {
			http.Error(w, "flaky", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, name)
	})
	mux.HandleFunc("/sick/", func(w http.ResponseWriter, r *http.Request) {
		m.sickCalls[idx].Add(1)
		if m.sick[idx].Load() {
			http.Error(w, "sick", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, name)
	})
	mux.HandleFunc("/upgrade", func(w http.ResponseWriter, r *http.Request) {
		// A protocol of our own after 101: "echo", each line back upper-cased.
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\nX-Served-By: %s\r\n\r\n", name)
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString(strings.ToUpper(line))
			brw.Flush()
		}
	})
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		m.hold.wait(r.Context())
		io.WriteString(w, name)
	})
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protos, ConnState: m.appConns[idx].state}
	ln, err := p.Listen("0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	gln, err := p.Listen("0.0.0.0:9090")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(gln)
	t.Cleanup(gs.Stop)

	p.ServeTCP(t, "0.0.0.0:7070", testenv.Echo)
	p.ServeTCP(t, "0.0.0.0:2525", func(c net.Conn) {
		io.WriteString(c, "220 "+name+" ready\r\n")
		io.Copy(c, c)
	})
}

// httpClient talks from the client pod as an app would (captured).
func (m *testMesh) httpClient(t *testing.T, h2c bool) *http.Client {
	path := m.client.Path
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return netns.DialTCP(ctx, path, addr)
		},
		MaxIdleConnsPerHost: 4,
	}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

type result struct {
	code   int
	body   string
	header http.Header
	proto  int
}

func do(t *testing.T, c *http.Client, method, rawPath string, hdr map[string]string) result {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+serverVIP+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.URL.Path, req.URL.RawPath = rawPath, rawPath
	if i := strings.Index(rawPath, "%"); i >= 0 {
		req.URL.Path = strings.ReplaceAll(rawPath, "%2F", "/")
	}
	return roundTrip(t, c, req, hdr)
}

// roundTrip sends req with the headers hdr set and reads the whole answer.
func roundTrip(t *testing.T, c *http.Client, req *http.Request, hdr map[string]string) result {
	t.Helper()
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.RequestURI(), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL.RequestURI(), err)
	}
	return result{code: resp.StatusCode, body: string(b), header: resp.Header, proto: resp.ProtoMajor}
}

func (m *testMesh) grpcDial(t *testing.T) *grpc.ClientConn {
	path := m.client.Path
	cc, err := grpc.NewClient("passthrough:///"+serverVIP+":9090",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return netns.DialTCP(ctx, path, addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
