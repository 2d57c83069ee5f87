package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/certs"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/ztunnel"
	"github.com/ambientmesh/ambient/ztunnel/admin"
	"github.com/ambientmesh/ambient/ztunnel/localconfig"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSource is a Source over fixed values; ready can flip.
type fakeSource struct {
	ready atomic.Bool
	view  *state.View
	certs []admin.Certificate
	debug ztunnel.DebugSnapshot
}

func (f *fakeSource) Ready() bool                       { return f.ready.Load() }
func (f *fakeSource) Debug() ztunnel.DebugSnapshot      { return f.debug }
func (f *fakeSource) View() *state.View                 { return f.view }
func (f *fakeSource) Certificates() []admin.Certificate { return f.certs }

func emptyView(t *testing.T) *state.View {
	t.Helper()
	v, err := state.NewView(state.Snapshot{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func get(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestReadyHandler_503UntilReadyThen200(t *testing.T) {
	src := &fakeSource{view: emptyView(t)}
	for _, h := range []struct {
		name string
		h    http.Handler
		path string
	}{
		{"readiness port", admin.ReadinessHandler(src), "/healthz/ready"},
		{"admin port", admin.AdminHandler(src), "/ready"},
	} {
		src.ready.Store(false)
		if rec := get(t, h.h, h.path); rec.Code != http.StatusServiceUnavailable {
			t.Errorf("%s %s before ready: %d, want 503", h.name, h.path, rec.Code)
		}
		src.ready.Store(true)
		if rec := get(t, h.h, h.path); rec.Code != http.StatusOK {
			t.Errorf("%s %s when ready: %d, want 200", h.name, h.path, rec.Code)
		}
	}
}

func TestReadinessHandler_OnlyServesHealthzReady(t *testing.T) {
	src := &fakeSource{view: emptyView(t)}
	src.ready.Store(true)
	if rec := get(t, admin.ReadinessHandler(src), "/config_dump"); rec.Code != http.StatusNotFound {
		t.Errorf("/config_dump on the readiness port: %d, want 404", rec.Code)
	}
}

// testCerts mints a deterministic-in-time chain: a root and a leaf with
// fixed validity (keys and serials are random and scrubbed by the test).
func testCerts(t *testing.T) []admin.Certificate {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	authority, err := ca.NewSelfSigned(td, ca.Options{Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	frontend := spiffeid.RequireFromPath(td, "/ns/shop/sa/frontend")
	svid, err := authority.NewSVIDAt(frontend, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return []admin.Certificate{
		{Identity: frontend.String(), State: "Available", CertChain: []admin.Cert{
			admin.NewCert(svid.Certificates[0]), admin.NewCert(authority.Certificate()),
		}},
		{Identity: "spiffe://cluster.local/ns/shop/sa/backend", State: "Initializing", CertChain: []admin.Cert{}},
	}
}

func TestConfigDump_MatchesGolden(t *testing.T) {
	snap, err := localconfig.Load("testdata/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	view, err := state.NewView(snap, 1)
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{view: view, certs: testCerts(t)}
	rec := get(t, admin.AdminHandler(src), "/config_dump")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /config_dump: %d %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var dump admin.Dump
	if err := json.Unmarshal(rec.Body.Bytes(), &dump); err != nil {
		t.Fatalf("config dump is not a Dump: %v", err)
	}
	// Keys and serials are random; everything else is fixed.
	for i := range dump.Certificates {
		for j := range dump.Certificates[i].CertChain {
			c := &dump.Certificates[i].CertChain[j]
			if !strings.HasPrefix(c.PEM, "-----BEGIN CERTIFICATE-----\n") || c.SerialNumber == "" {
				t.Errorf("certificate %d/%d: pem %.30q serial %q", i, j, c.PEM, c.SerialNumber)
			}
			c.PEM, c.SerialNumber = "REDACTED", "REDACTED"
		}
	}
	got, err := json.MarshalIndent(dump, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	golden(t, "testdata/config_dump.golden.json", got)

	// The raw output has Istio's top-level keys and field names.
	var raw map[string][]map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"workloads", "services", "policies", "certificates"} {
		if len(raw[k]) == 0 {
			t.Errorf("config dump has no %s", k)
		}
	}
	for _, k := range []string{"uid", "workloadIps", "protocol", "name", "namespace", "serviceAccount", "node", "trustDomain", "status", "canonicalName"} {
		if _, ok := raw["workloads"][0][k]; !ok {
			t.Errorf("workload has no %q field", k)
		}
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run go test -update and review the diff); got:\n%s", path, got)
	}
}

func TestConfigDump_EmptyStateHasEmptyLists(t *testing.T) {
	rec := get(t, admin.AdminHandler(&fakeSource{view: emptyView(t)}), "/config_dump")
	var raw map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"workloads", "services", "policies", "certificates"} {
		if l, ok := raw[k].([]any); !ok || len(l) != 0 {
			t.Errorf("%s = %#v, want []", k, raw[k])
		}
	}
}

func TestManagerCertificates_DescribesHeldIdentities(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := certs.New(certs.Config{Sign: certs.LocalSigner(authority, time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got := admin.ManagerCertificates(m); len(got) != 0 {
		t.Fatalf("before any Acquire: %v, want none", got)
	}
	id := spiffeid.RequireFromPath(td, "/ns/shop/sa/frontend")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.Acquire(ctx, id); err != nil {
		t.Fatal(err)
	}
	defer m.Release(id)
	got := admin.ManagerCertificates(m)
	if len(got) != 1 || got[0].Identity != id.String() || got[0].State != "Available" {
		t.Fatalf("got %+v, want %s Available", got, id)
	}
	chain := got[0].CertChain
	if len(chain) != 2 {
		t.Fatalf("chain has %d certificates, want leaf and root", len(chain))
	}
	exp, err := time.Parse(time.RFC3339, chain[0].ExpirationTime)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(exp); d <= 0 || d > time.Hour+time.Minute {
		t.Errorf("leaf expires in %v, want about 1h", d)
	}
	if root := admin.NewCert(authority.Certificate()); chain[1] != root {
		t.Errorf("last certificate is not the root")
	}
}

func TestMetricsHandler_ExposesIstioTCPMetricsAfterOneFlow(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := telemetry.NewMetrics(reg, "cluster1")
	if err != nil {
		t.Fatal(err)
	}
	f := telemetry.Flow{
		Start: time.Now(), Reporter: "destination", Decision: telemetry.Allow, Security: "mutual_tls", Transport: "hbone",
		Src:       telemetry.Peer{Workload: "frontend-1", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/frontend"},
		Dst:       telemetry.Peer{Workload: "backend-1", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/backend"},
		BytesSent: 100, BytesRecv: 200,
	}
	m.Opened(f)
	m.Closed(f)
	rec := get(t, admin.MetricsHandler(reg), "/metrics")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", rec.Code)
	}
	body := rec.Body.String()
	for _, want := range []string{
		"istio_tcp_connections_opened_total{",
		"istio_tcp_connections_closed_total{",
		"istio_tcp_sent_bytes_total{",
		"istio_tcp_received_bytes_total{",
		`source_workload="frontend-1"`,
		`destination_principal="cluster.local/ns/shop/sa/backend"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(body, "} 200\n") {
		t.Errorf("/metrics lacks received bytes 200:\n%s", body)
	}
}

func TestDebugConnections_ListsPodsAndTheirConnections(t *testing.T) {
	src := &fakeSource{view: emptyView(t), debug: ztunnel.DebugSnapshot{Pods: []ztunnel.PodDebug{{
		UID: "cluster1//v1/Pod/shop/backend-1", Name: "backend-1", Namespace: "shop",
		Identity: "spiffe://cluster.local/ns/shop/sa/backend", IP: "10.244.1.6", Netns: "/run/netns/backend-1", Serving: true,
		Connections: []ztunnel.ConnDebug{{Direction: "inbound", Local: "10.244.1.6:40000", Remote: "10.244.1.6:8080",
			Peer: "spiffe://cluster.local/ns/shop/sa/frontend", SrcIP: "10.244.1.5", Port: 8080}},
	}}}}
	rec := get(t, admin.AdminHandler(src), "/debug/connections")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /debug/connections: %d", rec.Code)
	}
	var got struct {
		Pods []struct {
			UID, Identity, IP, Netns string
			Connections              []map[string]any
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Pods) != 1 || got.Pods[0].Netns != "/run/netns/backend-1" || got.Pods[0].IP != "10.244.1.6" ||
		len(got.Pods[0].Connections) != 1 || got.Pods[0].Connections[0]["peer"] != "spiffe://cluster.local/ns/shop/sa/frontend" {
		t.Errorf("got %s", rec.Body)
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// TestServer_ServesARealZtunnel runs the Server over a real (pod-less)
// ztunnel, store and certificate manager on loopback listeners.
func TestServer_ServesARealZtunnel(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := certs.New(certs.Config{Sign: certs.LocalSigner(authority, 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	store := state.NewStore()
	z, err := ztunnel.New(ztunnel.Config{Node: "node-1", Store: store, Certs: mgr})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics, err := telemetry.NewMetrics(reg, "")
	if err != nil {
		t.Fatal(err)
	}
	metrics.Opened(telemetry.Flow{Reporter: "source"})
	adminLn, metricsLn, readyLn := listen(t), listen(t), listen(t)
	srv, err := admin.New(admin.Config{
		Admin: adminLn, Metrics: metricsLn, Readiness: readyLn,
		Source: admin.NewSource(z, store, mgr), Gatherer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	zDone, sDone := make(chan error, 1), make(chan error, 1)
	go func() { zDone <- z.Run(ctx) }()
	go func() { sDone <- srv.Run(ctx) }()
	defer func() {
		cancel()
		for _, ch := range []chan error{zDone, sDone} {
			select {
			case err := <-ch:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
		}
	}()

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	fetch := func(ln net.Listener, path string) (int, string) {
		t.Helper()
		resp, err := client.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := fetch(readyLn, "/healthz/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("ready before any config: %d, want 503", code)
	}
	if err := store.Replace(state.Snapshot{}); err != nil { // first config: an empty mesh
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for code, _ := fetch(readyLn, "/healthz/ready"); code != http.StatusOK; code, _ = fetch(readyLn, "/healthz/ready") {
		if time.Now().After(deadline) {
			t.Fatalf("not ready 5s after the first config: %d", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := fetch(adminLn, "/debug/connections"); code != http.StatusOK || !strings.Contains(body, `"pods": []`) {
		t.Errorf("/debug/connections: %d %s", code, body)
	}
	if code, body := fetch(adminLn, "/config_dump"); code != http.StatusOK || !strings.Contains(body, `"workloads": []`) {
		t.Errorf("/config_dump: %d %s", code, body)
	}
	if code, body := fetch(metricsLn, "/metrics"); code != http.StatusOK || !strings.Contains(body, "istio_tcp_connections_opened_total") {
		t.Errorf("/metrics: %d %.200s", code, body)
	}
}

func TestNew_RequiresSourceAndGatherer(t *testing.T) {
	if _, err := admin.New(admin.Config{}); err == nil {
		t.Error("New without Source: no error")
	}
	ln := listen(t)
	defer ln.Close()
	if _, err := admin.New(admin.Config{Source: &fakeSource{}, Metrics: ln}); err == nil {
		t.Error("New with a metrics listener and no Gatherer: no error")
	}
}

func TestAdminHandler_ServesProfiles(t *testing.T) {
	h := admin.AdminHandler(&fakeSource{view: emptyView(t)})
	rec := get(t, h, "/debug/pprof/")
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "goroutine") {
		t.Fatalf("/debug/pprof/ = %d %q", rec.Code, rec.Body.String())
	}
	if rec := get(t, h, "/debug/pprof/goroutine?debug=1"); rec.Code != http.StatusOK {
		t.Fatalf("goroutine profile = %d", rec.Code)
	}
}
