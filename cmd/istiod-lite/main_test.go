package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/istiod-lite/leader"
	"github.com/ambientmesh/ambient/istiod-lite/server"
	"github.com/ambientmesh/ambient/istiod-lite/waypointctl"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
	capb "github.com/ambientmesh/ambient/proto/ca"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

const waitTimeout = 30 * time.Second

func TestParseFlags_Defaults(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	t.Setenv("POD_NAMESPACE", "")
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.grpcAddr != ":15012" || o.monitoringAddr != ":15014" || o.readyAddr != ":8080" || o.namespace != "istio-system" ||
		o.rootNamespace != "istio-system" || o.trustDomain != "cluster.local" || o.kubeconfig != "" {
		t.Errorf("defaults = %+v", o)
	}
	if _, err := parseFlags([]string{"extra"}, io.Discard); err == nil {
		t.Error("positional argument accepted")
	}
	if o.waypointImage != "ambient/waypoint:dev" || !o.waypoints {
		t.Errorf("waypoint defaults: image %q, controller %v", o.waypointImage, o.waypoints)
	}
	if o.waypointTracing != (waypointctl.Tracing{SamplingPercent: 1}) {
		t.Errorf("waypoint tracing defaults %+v: want off, sampling 1%% (Istio's)", o.waypointTracing)
	}
}

func TestParseFlags_LeaderElection(t *testing.T) {
	t.Setenv("POD_NAME", "istiod-lite-7d9f-x2k4q")
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.election.Identity != "istiod-lite-7d9f-x2k4q" {
		t.Errorf("identity %q, want $POD_NAME", o.election.Identity)
	}
	if !o.leaderElect || o.election.LeaseDuration != 15*time.Second || o.election.RenewDeadline != 10*time.Second || o.election.RetryPeriod != 2*time.Second {
		t.Errorf("defaults: leader-elect %v, %+v; want on, 15s/10s/2s as kube-controller-manager", o.leaderElect, o.election)
	}
	if _, err := parseFlags([]string{"--leader-elect-renew-deadline=20s"}, io.Discard); err == nil || !strings.Contains(err.Error(), "lease duration > renew deadline") {
		t.Errorf("renew deadline above the lease duration: %v, want refused", err)
	}
	if _, err := parseFlags([]string{"--leader-elect-retry-period=0s"}, io.Discard); err == nil {
		t.Error("zero retry period accepted")
	}
	if o, err := parseFlags([]string{"--leader-elect=false", "--leader-elect-retry-period=0s"}, io.Discard); err != nil || o.leaderElect {
		t.Errorf("--leader-elect=false: %v, %v; want off, its timing unchecked", o.leaderElect, err)
	}
}

func TestParseFlags_WaypointTracing(t *testing.T) {
	o, err := parseFlags([]string{"--waypoint-otlp-endpoint", "otel-collector.observability:4317", "--waypoint-otlp-insecure",
		"--waypoint-trace-sampling", "12.5"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := (waypointctl.Tracing{OTLPEndpoint: "otel-collector.observability:4317", OTLPInsecure: true, SamplingPercent: 12.5}); o.waypointTracing != want {
		t.Errorf("tracing %+v, want %+v", o.waypointTracing, want)
	}
	if _, err := parseFlags([]string{"--waypoint-trace-sampling", "101"}, io.Discard); err == nil || !strings.Contains(err.Error(), "--waypoint-trace-sampling") {
		t.Errorf("--waypoint-trace-sampling 101: %v, want an error naming the flag", err)
	}
}

func TestParseFlags_DefaultTunnelTransport(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil || o.defaultTransport != workloadapi.TunnelTransport_H2 {
		t.Fatalf("default: %v, %v; want h2", o.defaultTransport, err)
	}
	if o, err = parseFlags([]string{"--default-tunnel-transport=quic"}, io.Discard); err != nil || o.defaultTransport != workloadapi.TunnelTransport_QUIC {
		t.Fatalf("quic: %v, %v", o.defaultTransport, err)
	}
	if _, err := parseFlags([]string{"--default-tunnel-transport=http3"}, io.Discard); err == nil || !strings.Contains(err.Error(), "default-tunnel-transport") {
		t.Errorf("http3: %v, want an error naming the flag", err)
	}
}

func TestParseFlags_WaypointController(t *testing.T) {
	o, err := parseFlags([]string{"--waypoint-image", "registry.example/waypoint:v1", "--waypoint-controller=false"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.waypointImage != "registry.example/waypoint:v1" || o.waypoints {
		t.Errorf("options = %+v", o)
	}
	if _, err := parseFlags([]string{"--waypoint-image="}, io.Discard); err == nil {
		t.Error("empty --waypoint-image accepted with the controller on")
	}
}

func TestParseFlags_RepeatableAndAliases(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "mesh")
	o, err := parseFlags([]string{"--xds-addr", "127.0.0.1:1", "--tls-san", "127.0.0.1", "--tls-san", "istiod.example",
		"--node-proxy", "kube-system/ztunnel"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.grpcAddr != "127.0.0.1:1" || o.namespace != "mesh" || len(o.tlsSANs) != 2 ||
		len(o.nodeProxies) != 1 || o.nodeProxies[0].Namespace != "kube-system" || o.nodeProxies[0].ServiceAccount != "ztunnel" {
		t.Errorf("options = %+v", o)
	}
	if _, err := parseFlags([]string{"--node-proxy", "ztunnel"}, io.Discard); err == nil {
		t.Error("--node-proxy without namespace accepted")
	}
}

const clusterYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: ztunnel, namespace: istio-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-a, namespace: istio-system}
spec:
  nodeName: node-a
  serviceAccountName: ztunnel
  containers: [{name: ztunnel, image: ztunnel}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{name: web, image: web}]
`

const webUID = "Kubernetes//Pod/shop/web-1"

// istiod is one in-process run of istiod-lite.
type istiod struct {
	addrs  server.Addrs
	root   string // --root-cert-out
	cancel context.CancelFunc
	done   chan error
}

// startIstiod runs istiod-lite against c on free loopback ports. Inside the
// Listening hook, before the CA is loaded, it checks that /ready says 503.
func startIstiod(t *testing.T, c *kubetest.Cluster, log *slog.Logger) *istiod {
	t.Helper()
	return startIstiodWith(t, c, log, nil)
}

// startIstiodWith is startIstiod with options changed by change (if not nil).
func startIstiodWith(t *testing.T, c *kubetest.Cluster, log *slog.Logger, change func(*options)) *istiod {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in := &istiod{root: filepath.Join(t.TempDir(), "root-cert.pem"), cancel: cancel, done: make(chan error, 1)}
	addrc := make(chan server.Addrs, 1)
	notReady := make(chan string, 1)
	o := options{kubeconfig: c.Kubeconfig, namespace: "istio-system", grpcAddr: "127.0.0.1:0", monitoringAddr: "127.0.0.1:0",
		readyAddr: "127.0.0.1:0", tlsSANs: []string{"127.0.0.1"}, rootCertOut: in.root, rootNamespace: "istio-system",
		trustDomain: "cluster.local", clusterID: "Kubernetes"}
	if change != nil {
		change(&o)
	}
	go func() {
		in.done <- run(ctx, o, log, func(a server.Addrs) {
			code, body, err := httpGet("http://" + a.Ready.String() + "/ready")
			notReady <- fmt.Sprintf("%d %s %v", code, strings.TrimSpace(body), err)
			addrc <- a
		})
	}()
	t.Cleanup(func() { in.stop(t) })
	select {
	case in.addrs = <-addrc:
	case err := <-in.done:
		t.Fatalf("run returned %v before listening", err)
	case <-time.After(waitTimeout):
		t.Fatal("istiod-lite did not listen")
	}
	if got := <-notReady; got != "503 not ready: CA not loaded yet <nil>" {
		t.Errorf("/ready before the CA loaded = %q, want 503", got)
	}
	return in
}

// exited waits for run to return on its own and returns its error.
func (in *istiod) exited(t *testing.T) error {
	t.Helper()
	defer func() { in.cancel(); in.cancel = nil }()
	select {
	case err := <-in.done:
		return err
	case <-time.After(waitTimeout):
		t.Fatal("run did not return")
		return nil
	}
}

// stop cancels the run and checks that it returns nil.
func (in *istiod) stop(t *testing.T) {
	t.Helper()
	if in.cancel == nil {
		return
	}
	in.cancel()
	in.cancel = nil
	select {
	case err := <-in.done:
		if err != nil {
			t.Errorf("run after cancel = %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("run did not return after cancel")
	}
}

// waitReady polls /ready until 200.
func (in *istiod) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		code, body, err := httpGet("http://" + in.addrs.Ready.String() + "/ready")
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/ready = %d %q %v after %v", code, body, err, waitTimeout)
		}
		select {
		case err := <-in.done:
			t.Fatalf("run returned %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// dial opens a TLS connection verified against the root istiod-lite wrote,
// for server name istiod.istio-system.svc.
func (in *istiod) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	rootPEM, err := os.ReadFile(in.root)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("no certificate in %s", in.root)
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "istiod.istio-system.svc", MinVersion: tls.VersionTLS13})
	conn, err := grpc.NewClient(in.addrs.GRPC.String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func httpGet(url string) (int, string, error) {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

func kubectl(t *testing.T, c *kubetest.Cluster, args ...string) string {
	t.Helper()
	out, err := c.Kubectl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func token(t *testing.T, c *kubetest.Cluster, ns, sa string, args ...string) string {
	t.Helper()
	return kubectl(t, c, append([]string{"create", "token", sa, "-n", ns, "--audience", "istio-ca"}, args...)...)
}

func startCluster(t *testing.T) *kubetest.Cluster {
	t.Helper()
	c := kubetest.Start(t, kubetest.Options{})
	if err := c.ApplyYAML(clusterYAML); err != nil {
		t.Fatal(err)
	}
	// No kubelet runs: report the pod running ourselves.
	kubectl(t, c, "patch", "pod", "web-1", "-n", "shop", "--subresource=status", "--type=merge", "-p",
		`{"status":{"phase":"Running","podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"}],"conditions":[{"type":"Ready","status":"True"}]}}`)
	return c
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// createCertificate asks the CA for a certificate for id (impersonated if
// not empty) with token.
func createCertificate(t *testing.T, conn *grpc.ClientConn, tok, impersonate string) (*capb.IstioCertificateResponse, error) {
	t.Helper()
	id := impersonate
	if id == "" {
		id = "spiffe://cluster.local/ns/shop/sa/web"
	}
	_, csrPEM, err := ca.NewCSR(mustID(t, id))
	if err != nil {
		t.Fatal(err)
	}
	req := &capb.IstioCertificateRequest{Csr: string(csrPEM), ValidityDuration: 3600}
	if impersonate != "" {
		req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{"ImpersonatedIdentity": structpb.NewStringValue(impersonate)}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	return capb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
}

// verifyChain checks that resp's leaf verifies to rootPEM for id.
func verifyChain(t *testing.T, resp *capb.IstioCertificateResponse, rootPEM []byte, id string) {
	t.Helper()
	var certs []*x509.Certificate
	for _, p := range resp.GetCertChain() {
		cs, err := parsePEMCerts([]byte(p))
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, cs...)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatal("no root")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("issued certificate does not chain to the expected root: %v", err)
	}
	if len(certs[0].URIs) != 1 || certs[0].URIs[0].String() != id {
		t.Errorf("leaf URIs = %v, want %s", certs[0].URIs, id)
	}
}

// xdsStream opens a Delta ADS stream with the given authorization (none if
// empty) and subscribes to addresses.
func xdsStream(t *testing.T, conn *grpc.ClientConn, auth string) (grpc.BidiStreamingClient[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse], context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	if auth != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
	}
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeAddress}); err != nil && !errors.Is(err, io.EOF) {
		cancel()
		t.Fatal(err)
	}
	return st, cancel
}

func TestRun_SelfSignedRoot_ServesCAAndAuthenticatedXDSOverTLS(t *testing.T) {
	c := startCluster(t)
	in := startIstiod(t, c, testLogger(t))
	in.waitReady(t)

	rootPEM, err := os.ReadFile(in.root)
	if err != nil {
		t.Fatal(err)
	}
	if got := kubectl(t, c, "get", "secret", "istio-ca-secret", "-n", "istio-system", "-o", "jsonpath={.type}"); got != "istio.io/ca-root" {
		t.Errorf("istio-ca-secret type = %q", got)
	}
	if got := kubectl(t, c, "get", "configmap", "istio-ca-root-cert", "-n", "istio-system", "-o", `jsonpath={.data.root-cert\.pem}`); got != strings.TrimSpace(string(rootPEM)) {
		t.Errorf("ConfigMap root-cert.pem = %q, want the root %q", got, rootPEM)
	}
	// The ConfigMap is kept: a deleted one comes back.
	kubectl(t, c, "delete", "configmap", "istio-ca-root-cert", "-n", "istio-system")
	deadline := time.Now().Add(waitTimeout)
	for {
		out, err := c.Kubectl("get", "configmap", "istio-ca-root-cert", "-n", "istio-system", "-o", `jsonpath={.data.root-cert\.pem}`)
		if err == nil && strings.TrimSpace(string(out)) == strings.TrimSpace(string(rootPEM)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deleted ConfigMap not restored: %s %v", out, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// TLS 1.2 is refused.
	if conn, err := tls.Dial("tcp", in.addrs.GRPC.String(), &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}); err == nil {
		conn.Close()
		t.Error("TLS 1.2 handshake succeeded")
	}

	conn := in.dial(t)
	ztunnelA := token(t, c, "istio-system", "ztunnel", "--bound-object-kind", "Pod", "--bound-object-name", "ztunnel-a")
	web := token(t, c, "shop", "web")

	t.Run("CreateCertificateForPodOnCallersNode", func(t *testing.T) {
		resp, err := createCertificate(t, conn, ztunnelA, "spiffe://cluster.local/ns/shop/sa/web")
		if err != nil {
			t.Fatal(err)
		}
		verifyChain(t, resp, rootPEM, "spiffe://cluster.local/ns/shop/sa/web")
	})
	t.Run("CreateCertificateRefusedWithoutToken", func(t *testing.T) {
		_, err := createCertificate(t, conn, "bogus", "")
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("err = %v, want Unauthenticated", err)
		}
	})
	t.Run("XDSWithoutTokenUnauthenticated", func(t *testing.T) {
		st, cancel := xdsStream(t, conn, "")
		defer cancel()
		_, err := st.Recv()
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "no authorization metadata") {
			t.Errorf("Recv = %v, want Unauthenticated saying no authorization metadata", err)
		}
	})
	t.Run("XDSWithWorkloadTokenPermissionDenied", func(t *testing.T) {
		st, cancel := xdsStream(t, conn, "Bearer "+web)
		defer cancel()
		_, err := st.Recv()
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "only node proxies (istio-system/ztunnel)") {
			t.Errorf("Recv = %v, want PermissionDenied naming the node proxies", err)
		}
	})
	t.Run("XDSWithZtunnelTokenGetsAmbientWorkload", func(t *testing.T) {
		st, cancel := xdsStream(t, conn, "Bearer "+ztunnelA)
		defer cancel()
		for {
			resp, err := st.Recv()
			if err != nil {
				t.Fatalf("Recv: %v (workload %s never arrived)", err, webUID)
			}
			for _, r := range resp.GetResources() {
				var a workloadapi.Address
				if err := r.GetResource().UnmarshalTo(&a); err != nil {
					t.Fatal(err)
				}
				if w := a.GetWorkload(); w.GetUid() == webUID {
					if w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
						t.Errorf("workload %s tunnel protocol = %v, want HBONE (ambient namespace)", webUID, w.GetTunnelProtocol())
					}
					return
				}
			}
			if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeAddress, ResponseNonce: resp.GetNonce()}); err != nil {
				t.Fatal(err)
			}
		}
	})

	// The push counter moves after Send returns, which can be after the client
	// has read the response: poll until every series is there.
	wantMetrics := []string{
		`xds_pushes_total{type="type.googleapis.com/istio.workload.Address"}`,
		"xds_push_latency_seconds_bucket",
		"citadel_server_csr_count 2",
		"citadel_server_success_cert_issuance_count 1",
		"citadel_server_authentication_failure_count 1",
		`citadel_server_csr_refused_count{reason="unauthenticated"} 1`,
		"citadel_server_root_cert_expiry_timestamp",
	}
	var missing []string
	var body string
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(20 * time.Millisecond) {
		_, body, err = httpGet("http://" + in.addrs.Monitoring.String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		missing = missing[:0]
		for _, want := range wantMetrics {
			if !strings.Contains(body, want) {
				missing = append(missing, want)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(missing) > 0 {
		t.Errorf("/metrics lacks %q after %v:\n%s", missing, waitTimeout, body)
	}

	// A restart reuses the root kept in istio-ca-secret.
	in.stop(t)
	in2 := startIstiod(t, c, testLogger(t))
	in2.waitReady(t)
	rootPEM2, err := os.ReadFile(in2.root)
	if err != nil {
		t.Fatal(err)
	}
	if string(rootPEM2) != string(rootPEM) {
		t.Errorf("root changed across restart")
	}
	resp, err := createCertificate(t, in2.dial(t), ztunnelA, "spiffe://cluster.local/ns/shop/sa/web")
	if err != nil {
		t.Fatal(err)
	}
	verifyChain(t, resp, rootPEM, "spiffe://cluster.local/ns/shop/sa/web")
}

func TestRun_CacertsSecret_PluggedRootAndBrokenSecretRefused(t *testing.T) {
	c := startCluster(t)
	rootPEM, data := pluginCA(t)
	applySecret(t, c, "cacerts", data)

	in := startIstiod(t, c, testLogger(t))
	in.waitReady(t)
	if got, _ := os.ReadFile(in.root); string(got) != string(rootPEM) {
		t.Errorf("published root = %q, want the cacerts root", got)
	}
	if _, err := c.Kubectl("get", "secret", "istio-ca-secret", "-n", "istio-system"); err == nil {
		t.Error("istio-ca-secret created although cacerts exists")
	}
	resp, err := createCertificate(t, in.dial(t), token(t, c, "shop", "web"), "")
	if err != nil {
		t.Fatal(err)
	}
	verifyChain(t, resp, rootPEM, "spiffe://cluster.local/ns/shop/sa/web")
	if len(resp.GetCertChain()) != 3 {
		t.Errorf("cert chain has %d certificates, want leaf, intermediate, root", len(resp.GetCertChain()))
	}
	in.stop(t)

	// A broken cacerts Secret: refuse to start, naming the Secret and key.
	data[ca.SecretCAKey] = []byte("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
	applySecret(t, c, "cacerts", data)
	err = startIstiod(t, c, slog.New(slog.DiscardHandler)).exited(t)
	if err == nil {
		t.Fatal("istiod-lite started with a broken cacerts Secret")
	}
	t.Logf("start with broken cacerts: %v", err)
	for _, want := range []string{"Secret istio-system/cacerts", "ca-key.pem"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if _, err := c.Kubectl("get", "secret", "istio-ca-secret", "-n", "istio-system"); err == nil {
		t.Error("fell back to a self-signed root")
	}
}

// TestRun_TwoReplicas_OneWritesAndHandsOver: two replicas with leader
// election both serve (ready, the CA answers), one holds the Lease and runs
// the writers; when it shuts down the other takes over at once (the Lease
// is released) and publishes the root in a namespace created afterwards.
func TestRun_TwoReplicas_OneWritesAndHandsOver(t *testing.T) {
	c := startCluster(t)
	replica := func(id string) *istiod {
		return startIstiodWith(t, c, testLogger(t).With("replica", id), func(o *options) {
			o.leaderElect = true
			o.election = leader.Config{Identity: id, LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 200 * time.Millisecond}
		})
	}
	leading := func(in *istiod) string {
		_, body, err := httpGet("http://" + in.addrs.Monitoring.String() + "/metrics")
		if err != nil {
			return err.Error()
		}
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, `leader_election_master_status{name="istiod-lite-leader"}`) {
				return line[strings.LastIndexByte(line, ' ')+1:]
			}
		}
		return "absent"
	}
	waitLeading := func(in *istiod, want string) {
		t.Helper()
		deadline := time.Now().Add(waitTimeout)
		for got := leading(in); got != want; got = leading(in) {
			if time.Now().After(deadline) {
				t.Fatalf("leader_election_master_status = %s, want %s", got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	holder := func() string {
		return kubectl(t, c, "get", "lease", "istiod-lite-leader", "-n", "istio-system", "-o", "jsonpath={.spec.holderIdentity}")
	}

	a := replica("a")
	a.waitReady(t)
	waitLeading(a, "1")
	b := replica("b")
	b.waitReady(t) // a follower serves too
	waitLeading(b, "0")
	if h := holder(); h != "a" {
		t.Fatalf("Lease holder %q, want a", h)
	}
	tok := token(t, c, "shop", "web")
	if _, err := createCertificate(t, b.dial(t), tok, ""); err != nil {
		t.Fatalf("the follower's CA: %v", err)
	}

	a.stop(t)
	// a released the Lease on its way out: b need not wait for it to expire.
	if h := holder(); h != "" && h != "b" {
		t.Errorf("Lease holder after a stopped %q, want released (or b)", h)
	}
	waitLeading(b, "1")
	if h := holder(); h != "b" {
		t.Errorf("Lease holder %q, want b", h)
	}
	kubectl(t, c, "create", "namespace", "after-failover")
	deadline := time.Now().Add(waitTimeout)
	for {
		out, err := c.Kubectl("get", "configmap", "istio-ca-root-cert", "-n", "after-failover", "-o", `jsonpath={.data.root-cert\.pem}`)
		if err == nil && strings.Contains(string(out), "BEGIN CERTIFICATE") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no root ConfigMap in a namespace created after the failover: %s %v", out, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
