package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/istiod-lite/caserver"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/ztunnel/admin"
)

func TestParseFlags_CAAddressDefaultsToXDSAddress(t *testing.T) {
	o, err := parseFlags([]string{"--node", "n", "--xds-address", "istiod.istio-system.svc:15012"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.caAddress != o.xdsAddress || o.caRootFile != "/var/run/secrets/istio/root-cert.pem" ||
		o.tokenFile != "/var/run/secrets/tokens/istio-token" || o.xdsServerName != "istiod.istio-system.svc" {
		t.Errorf("options = %+v", o)
	}
	o, err = parseFlags([]string{"--node", "n", "--xds-address", "istiod:15012", "--ca-address", "ca:15012"}, io.Discard)
	if err != nil || o.caAddress != "ca:15012" {
		t.Errorf("--ca-address: %q, %v", o.caAddress, err)
	}
}

// testIstiod is istiod-lite's port 15012 built in the test: the real CA and
// xDS servers on one TLS gRPC server that demands the bearer token "tok".
type testIstiod struct {
	addr     string
	rootFile string
	lis      net.Listener
	gs       *grpc.Server
	cache    *xds.Cache
}

// newTestIstiod takes lis (nil: a new loopback port) but does not serve
// until serve. pods answers node authorization (nil: no pods anywhere).
func newTestIstiod(t *testing.T, lis net.Listener, pods caserver.PodLister) *testIstiod {
	t.Helper()
	rootPEM, cert := servingCert(t, "istiod.istio-system.svc")
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(rootFile, rootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if pods == nil {
		pods = podSet{}
	}
	authority, err := ca.NewSelfSigned(spiffeid.RequireTrustDomainFromString("cluster.local"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	casrv, err := caserver.New(caserver.Config{Authority: authority, Authenticator: tokenAuth{}, Pods: pods})
	if err != nil {
		t.Fatal(err)
	}
	cache := xds.NewCache()
	xsrv, err := xds.New(xds.Config{Cache: cache, DebounceAfter: 5 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	requireToken := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer tok" {
			return status.Errorf(codes.Unauthenticated, "authorization %q", got)
		}
		return h(srv, ss)
	}
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})),
		grpc.StreamInterceptor(requireToken),
	)
	casrv.Register(gs)
	xsrv.Register(gs)
	if lis == nil {
		if lis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	s := &testIstiod{addr: lis.Addr().String(), rootFile: rootFile, lis: lis, gs: gs, cache: cache}
	t.Cleanup(func() { gs.Stop(); lis.Close() })
	return s
}

func (s *testIstiod) serve() { go s.gs.Serve(s.lis) }

func (s *testIstiod) putWorkload(t *testing.T, w *workloadapi.Workload) {
	t.Helper()
	a := &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	if err := s.cache.Update(xds.TypeAddress, map[string]proto.Message{xds.AddressName(a): a}, nil); err != nil {
		t.Fatal(err)
	}
}

type tokenAuth struct{}

func (tokenAuth) Authenticate(_ context.Context, token string) (caserver.Caller, error) {
	if token != "tok" {
		return caserver.Caller{}, caserver.ErrUnauthenticated
	}
	return caserver.Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", NodeName: "node-1"}, nil
}

// podSet holds "node/namespace/serviceaccount" of every pod.
type podSet map[string]bool

func (p podSet) HasPodOnNode(_ context.Context, node, ns, sa string) (bool, error) {
	return p[node+"/"+ns+"/"+sa], nil
}

// servingCert returns a fresh root and a serving certificate for dnsName
// signed by it.
func servingCert(t *testing.T, dnsName string) ([]byte, tls.Certificate) {
	t.Helper()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test istiod root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, root, &key.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestZtunnel_XDSConfigReadyOnlyAfterSync runs the binary against an
// in-test istiod-lite: /healthz/ready answers 503 while istiod-lite does not
// serve yet, turns 200 once xDS has synced, and the config dump and metrics
// show what arrived.
func TestZtunnel_XDSConfigReadyOnlyAfterSync(t *testing.T) {
	requireRoot(t)
	ist := newTestIstiod(t, nil, nil)
	ist.putWorkload(t, &workloadapi.Workload{Uid: "shop/web-1", Name: "web-1", Namespace: "shop", Node: "node-1",
		ServiceAccount: "web", Addresses: [][]byte{{10, 0, 0, 7}}})
	tokenFile := writeFile(t, t.TempDir(), "istio-token", "tok\n")
	readyAddr, adminAddr, metricsAddr := freePort(t), freePort(t), freePort(t)
	cmd := exec.Command(binary, "--node", "node-1", "--xds-address", ist.addr,
		"--ca-root-file", ist.rootFile, "--token-file", tokenFile, "--log-level", "debug",
		"--admin-addr", adminAddr, "--metrics-addr", metricsAddr, "--ready-addr", readyAddr)
	exited, _ := startZtunnel(t, cmd)

	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(addr, path string) (int, string) {
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 15s", what)
			}
			select {
			case err := <-exited:
				t.Fatalf("ztunnel exited early: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	// istiod-lite accepts connections but does not answer yet.
	waitFor("/healthz/ready answers", func() bool { code, _ := get(readyAddr, "/healthz/ready"); return code != 0 })
	if code, _ := get(readyAddr, "/healthz/ready"); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz/ready before xDS sync: %d, want 503", code)
	}
	ist.serve()
	waitFor("/healthz/ready 200", func() bool { code, _ := get(readyAddr, "/healthz/ready"); return code == http.StatusOK })

	if code, body := get(adminAddr, "/config_dump"); code != http.StatusOK || !strings.Contains(body, "shop/web-1") {
		t.Errorf("/config_dump: %d, lacks the workload from xDS:\n%s", code, body)
	}
	_, body := get(metricsAddr, "/metrics")
	for _, want := range []string{
		`istio_xds_message_total{url="type.googleapis.com/istio.workload.Address"}`,
		`istio_xds_message_total{url="type.googleapis.com/istio.security.Authorization"}`,
		"istio_xds_connected 1",
		`istio_agent_num_outgoing_requests{request_type="csr"} 0`,
		"ztunnel_idle_parked_connections 0",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("after SIGTERM: %v, want exit code 0", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ztunnel still running 5s after SIGTERM")
	}
}

// TestZtunnel_XDSBadCredentialsExitWithAHint: a missing root or token file
// is reported at start, naming the flag to fix.
func TestZtunnel_XDSBadCredentialsExitWithAHint(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	rootPEM, _ := servingCert(t, "istiod.istio-system.svc")
	root := writeFile(t, dir, "root-cert.pem", string(rootPEM))
	token := writeFile(t, dir, "istio-token", "tok\n")
	for _, tc := range []struct {
		name, root, token string
		want              []string
	}{
		{"missing root file", filepath.Join(dir, "none.pem"), token, []string{"none.pem", "no such file", "--ca-root-file"}},
		{"missing token file", root, filepath.Join(dir, "no-token"), []string{"no-token", "no such file", "--token-file"}},
		{"empty token file", root, writeFile(t, dir, "empty-token", "\n"), []string{"empty-token", "is empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := exitCode(t, "--node", "n", "--xds-address", "127.0.0.1:1",
				"--ca-root-file", tc.root, "--token-file", tc.token,
				"--admin-addr", freePort(t), "--metrics-addr", freePort(t), "--ready-addr", freePort(t))
			if code != 1 {
				t.Errorf("exit code %d, want 1; stderr:\n%s", code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// readySource is an admin.Source whose readiness is set by the test.
type readySource struct {
	admin.Source
	ready bool
}

func (r readySource) Ready() bool { return r.ready }

func TestReadyWhenSynced_NeedsBothSyncAndZtunnel(t *testing.T) {
	for _, tc := range []struct{ synced, ready, want bool }{
		{false, false, false}, {false, true, false}, {true, false, false}, {true, true, true},
	} {
		src := readyWhenSynced{Source: readySource{ready: tc.ready}, synced: func() bool { return tc.synced }}
		if got := src.Ready(); got != tc.want {
			t.Errorf("synced=%v ztunnel ready=%v: Ready() = %v, want %v", tc.synced, tc.ready, got, tc.want)
		}
	}
}

// TestZtunnel_XDSPodCertificateComesFromIstiod runs the binary in a node
// namespace with one pod, against an in-test istiod-lite in the same
// namespace: the pod's workload arrives over xDS, its certificate is signed
// by istiod-lite's CA through caclient, and only then is ztunnel ready.
func TestZtunnel_XDSPodCertificateComesFromIstiod(t *testing.T) {
	requireRoot(t)
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 1, PodsPerNode: 1})
	node, pod := topo.Nodes[0], topo.Pod(1, 1)
	lis, err := node.Listen("127.0.0.1:15012")
	if err != nil {
		t.Fatal(err)
	}
	ist := newTestIstiod(t, lis, podSet{"node-1/shop/web": true})
	ist.putWorkload(t, &workloadapi.Workload{Uid: "shop/web-1", Name: "web-1", Namespace: "shop", Node: "node-1",
		ServiceAccount: "web", Addresses: [][]byte{pod.IP.AsSlice()}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE})
	ist.serve()
	tokenFile := writeFile(t, t.TempDir(), "istio-token", "tok\n")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := node.Command(ctx, binary, "--node", "node-1", "--xds-address", "127.0.0.1:15012",
		"--ca-root-file", ist.rootFile, "--token-file", tokenFile, "--log-level", "debug",
		"--pod", "shop/web-1="+pod.Path, "--flow-log", filepath.Join(t.TempDir(), "flows.log"),
		"--admin-addr", "127.0.0.1:15000", "--metrics-addr", "127.0.0.1:15020", "--ready-addr", "127.0.0.1:15021")
	exited, stderr := startZtunnel(t, cmd)

	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return node.Dial(ctx, addr) },
	}}
	get := func(addr, path string) (int, string) {
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if code, _ := get("127.0.0.1:15021", "/healthz/ready"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/healthz/ready not 200 within 20s")
		}
		select {
		case err := <-exited:
			t.Fatalf("ztunnel exited early: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	_, dump := get("127.0.0.1:15000", "/config_dump")
	for _, want := range []string{`"spiffe://cluster.local/ns/shop/sa/web"`, `"Available"`} {
		if !strings.Contains(dump, want) {
			t.Errorf("/config_dump lacks %s:\n%s", want, dump)
		}
	}
	_, metrics := get("127.0.0.1:15020", "/metrics")
	for _, want := range []string{
		`istio_agent_num_outgoing_requests{request_type="csr"} 1`,
		`istio_agent_num_failed_outgoing_requests{request_type="csr"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("after SIGTERM: %v, want exit code 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ztunnel still running 10s after SIGTERM")
	}
	if !strings.Contains(stderr.String(), "ztunnel drained") {
		t.Errorf("no drain log line:\n%s", stderr.String())
	}
}
