package caclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/caclient"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/xdsclient"
	"github.com/ambientmesh/ambient/istiod-lite/caserver"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
	capb "github.com/ambientmesh/ambient/proto/ca"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

var (
	td     = spiffeid.RequireTrustDomainFromString("cluster.local")
	webID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	cartID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/cart")
)

// fakeAuth maps tokens to callers.
type fakeAuth map[string]caserver.Caller

func (f fakeAuth) Authenticate(_ context.Context, token string) (caserver.Caller, error) {
	c, ok := f[token]
	if !ok {
		return caserver.Caller{}, fmt.Errorf("%w: token review: invalid bearer token", caserver.ErrUnauthenticated)
	}
	return c, nil
}

// fakePods holds "node/namespace/serviceaccount" entries.
type fakePods map[string]bool

func (f fakePods) HasPodOnNode(_ context.Context, node, ns, sa string) (bool, error) {
	return f[node+"/"+ns+"/"+sa], nil
}

// recorder is a unary interceptor keeping the last request and metadata.
type recorder struct {
	mu  sync.Mutex
	req *capb.IstioCertificateRequest
	md  metadata.MD
}

func (r *recorder) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	r.mu.Lock()
	r.req, _ = proto.Clone(req.(proto.Message)).(*capb.IstioCertificateRequest)
	r.md = md.Copy()
	r.mu.Unlock()
	return h(ctx, req)
}

// startCA serves a real caserver with fake authentication (token "tok-a":
// ztunnel on node-a, where a web pod runs) over TLS with pki's
// certificate for istiod.istio-system.svc.
func startCA(t *testing.T, pki *servingPKI, opts ...grpc.ServerOption) (string, *ca.Authority) {
	t.Helper()
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := caserver.New(caserver.Config{
		Authority:     authority,
		Authenticator: fakeAuth{"tok-a": {Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-a", NodeName: "node-a"}},
		Pods:          fakePods{"node-a/shop/web": true},
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := startTLSServer(t, pki.serverCert(t, caclient.DefaultServerName), srv.Register, opts...)
	return addr, authority
}

func newClient(t *testing.T, conn *grpc.ClientConn, tokenFile string, mod func(*caclient.Config)) *caclient.Client {
	t.Helper()
	cfg := caclient.Config{Conn: conn, TokenFile: tokenFile, Timeout: 10 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	c, err := caclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSign_SendsIstioRequestAndReturnsVerifiedSVID(t *testing.T) {
	pki := newServingPKI(t)
	rec := &recorder{}
	addr, authority := startCA(t, pki, grpc.UnaryInterceptor(rec.intercept))
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	writeToken(t, tokenFile, "tok-a")
	var calls countingMetrics
	c := newClient(t, dial(t, addr, pki.writeRoot(t)), tokenFile, func(cfg *caclient.Config) {
		cfg.ClusterID = "Kubernetes"
		cfg.Metrics = &calls
	})

	svid, bundle, err := identity.CSRFetcher(c.Sign)(testContext(t), webID)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != webID {
		t.Errorf("SVID ID = %s, want %s", svid.ID, webID)
	}
	if leaf := svid.Certificates[0]; len(leaf.URIs) != 1 || leaf.URIs[0].String() != webID.String() {
		t.Errorf("leaf URI SANs = %v, want exactly %s", leaf.URIs, webID)
	}
	if got := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore) - ca.Backdate; got < caclient.DefaultValidityDuration-time.Minute || got > caclient.DefaultValidityDuration+time.Minute {
		t.Errorf("leaf lifetime %s, want about %s", got, caclient.DefaultValidityDuration)
	}
	if roots := bundle.X509Authorities(); len(roots) != 1 || !roots[0].Equal(authority.Certificate()) {
		t.Errorf("bundle roots are not the CA's root")
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if got := rec.req.GetMetadata().GetFields()[caserver.MetadataImpersonatedIdentity].GetStringValue(); got != webID.String() {
		t.Errorf("ImpersonatedIdentity = %q, want %q", got, webID)
	}
	if got := rec.req.GetValidityDuration(); got != 86400 {
		t.Errorf("validity_duration = %d, want 86400", got)
	}
	if got := rec.md.Get("authorization"); len(got) != 1 || got[0] != "Bearer tok-a" {
		t.Errorf("authorization = %q, want [\"Bearer tok-a\"]", got)
	}
	if got := rec.md.Get("clusterid"); len(got) != 1 || got[0] != "Kubernetes" {
		t.Errorf("clusterid = %q", got)
	}
	if n, failed := calls.get(); n != 1 || failed != 0 {
		t.Errorf("metrics: %d requests, %d failed; want 1, 0", n, failed)
	}
}

type countingMetrics struct {
	mu           sync.Mutex
	calls, fails int
}

func (m *countingMetrics) Request(_ time.Duration, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if err != nil {
		m.fails++
	}
}

func (m *countingMetrics) get() (int, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls, m.fails
}

func TestSign_IdentityNotOnNodeIsRefusedWithHint(t *testing.T) {
	pki := newServingPKI(t)
	addr, _ := startCA(t, pki)
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	writeToken(t, tokenFile, "tok-a")
	c := newClient(t, dial(t, addr, pki.writeRoot(t)), tokenFile, nil)
	_, _, err := identity.CSRFetcher(c.Sign)(testContext(t), cartID)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("err = %v, want PermissionDenied", err)
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"istiod-lite refused", "no pod on this node", cartID.String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestSign_BadTokenFileFailsWithoutDialing(t *testing.T) {
	// Nothing listens here: a dial would fail with Unavailable.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	pki := newServingPKI(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	writeToken(t, empty, "  ")
	for name, file := range map[string]string{"missing": filepath.Join(dir, "missing"), "empty": empty} {
		t.Run(name, func(t *testing.T) {
			conn := dial(t, addr, pki.writeRoot(t))
			c := newClient(t, conn, file, nil)
			_, _, err := identity.CSRFetcher(c.Sign)(testContext(t), webID)
			if !errors.Is(err, caclient.ErrNoToken) {
				t.Fatalf("err = %v, want ErrNoToken", err)
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "token") {
				t.Errorf("error does not name the file: %v", err)
			}
			if st := conn.GetState(); st != connectivity.Idle {
				t.Errorf("connection state %v, want Idle: the client dialled", st)
			}
		})
	}
}

func TestSign_ServerWithForeignCertificateFailsTLS(t *testing.T) {
	trusted, foreign := newServingPKI(t), newServingPKI(t)
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	writeToken(t, tokenFile, "tok-a")
	for _, tc := range []struct {
		name string
		pki  *servingPKI
		dns  string
		want string
	}{
		{"foreign CA", foreign, caclient.DefaultServerName, "unknown authority"},
		{"wrong server name", trusted, "evil.example.com", "istiod.istio-system.svc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			authority, err := ca.NewSelfSigned(td, ca.Options{})
			if err != nil {
				t.Fatal(err)
			}
			srv, err := caserver.New(caserver.Config{Authority: authority, Authenticator: fakeAuth{"tok-a": {Namespace: "istio-system", ServiceAccount: "ztunnel", NodeName: "node-a"}}, Pods: fakePods{"node-a/shop/web": true}})
			if err != nil {
				t.Fatal(err)
			}
			addr := startTLSServer(t, tc.pki.serverCert(t, tc.dns), srv.Register)
			c := newClient(t, dial(t, addr, trusted.writeRoot(t)), tokenFile, func(cfg *caclient.Config) { cfg.Timeout = 5 * time.Second })
			_, _, err = identity.CSRFetcher(c.Sign)(testContext(t), webID)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("err = %v, want Unavailable (TLS failure)", err)
			}
			t.Logf("error: %v", err)
			for _, want := range []string{tc.want, "--ca-root-file"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
		})
	}
}

// fakeCA is a CertificateService answering with what respond builds.
type fakeCA struct {
	capb.UnimplementedIstioCertificateServiceServer
	respond func(csr *x509.CertificateRequest) ([]string, error)
}

func (f *fakeCA) CreateCertificate(_ context.Context, req *capb.IstioCertificateRequest) (*capb.IstioCertificateResponse, error) {
	blk, _ := pem.Decode([]byte(req.GetCsr()))
	if blk == nil {
		return nil, status.Error(codes.InvalidArgument, "no CSR")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	chain, err := f.respond(csr)
	if err != nil {
		return nil, err
	}
	return &capb.IstioCertificateResponse{CertChain: chain}, nil
}

// leafPEM issues a leaf for pub with uri SAN, signed by pki's root.
func leafPEM(t *testing.T, pki *servingPKI, pub any, uri string, notAfter time.Time) string {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		URIs:         []*url.URL{u},
		NotBefore:    time.Now().Add(-2 * time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, pki.root, pub, pki.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestSign_RejectsResponsesItCannotTrust(t *testing.T) {
	serving := newServingPKI(t)
	signer := newServingPKI(t) // the fake CA's root, which also signs leaves
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root := string(signer.rootPEM)
	later := time.Now().Add(time.Hour)
	tests := []struct {
		name    string
		respond func(csr *x509.CertificateRequest) []string
		want    string
	}{
		{"control: well-formed", func(csr *x509.CertificateRequest) []string {
			return []string{leafPEM(t, signer, csr.PublicKey, webID.String(), later), root}
		}, ""},
		{"leaf with another identity", func(csr *x509.CertificateRequest) []string {
			return []string{leafPEM(t, signer, csr.PublicKey, cartID.String(), later), root}
		}, "not the requested identity"},
		{"leaf with another key", func(*x509.CertificateRequest) []string {
			return []string{leafPEM(t, signer, &otherKey.PublicKey, webID.String(), later), root}
		}, "public key is not the CSR's"},
		{"empty chain", func(*x509.CertificateRequest) []string { return nil }, "empty cert_chain"},
		{"no root", func(csr *x509.CertificateRequest) []string {
			return []string{leafPEM(t, signer, csr.PublicKey, webID.String(), later)}
		}, "self-signed root"},
		{"root that did not sign the leaf", func(csr *x509.CertificateRequest) []string {
			return []string{leafPEM(t, signer, csr.PublicKey, webID.String(), later), string(serving.rootPEM)}
		}, "could not verify"},
		{"expired leaf", func(csr *x509.CertificateRequest) []string {
			return []string{leafPEM(t, signer, csr.PublicKey, webID.String(), time.Now().Add(-time.Minute)), root}
		}, "expired"},
		{"garbage", func(*x509.CertificateRequest) []string { return []string{"not PEM", root} }, "no PEM certificate"},
	}
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	writeToken(t, tokenFile, "tok")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeCA{respond: func(csr *x509.CertificateRequest) ([]string, error) { return tt.respond(csr), nil }}
			addr := startTLSServer(t, serving.serverCert(t, caclient.DefaultServerName), func(s grpc.ServiceRegistrar) { capb.RegisterIstioCertificateServiceServer(s, fake) })
			c := newClient(t, dial(t, addr, serving.writeRoot(t)), tokenFile, nil)
			svid, _, err := identity.CSRFetcher(c.Sign)(testContext(t), webID)
			if tt.want == "" {
				if err != nil || svid.ID != webID {
					t.Fatalf("control: %v", err)
				}
				return
			}
			if !errors.Is(err, caclient.ErrInvalidResponse) {
				t.Fatalf("err = %v, want ErrInvalidResponse", err)
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error lacks %q: %v", tt.want, err)
			}
		})
	}
}

func TestSign_TimeoutSaysWhatToCheck(t *testing.T) {
	pki := newServingPKI(t)
	release := make(chan struct{})
	defer close(release)
	fake := &fakeCA{respond: func(*x509.CertificateRequest) ([]string, error) {
		<-release
		return nil, status.Error(codes.Unavailable, "released")
	}}
	addr := startTLSServer(t, pki.serverCert(t, caclient.DefaultServerName), func(s grpc.ServiceRegistrar) { capb.RegisterIstioCertificateServiceServer(s, fake) })
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	writeToken(t, tokenFile, "tok")
	c := newClient(t, dial(t, addr, pki.writeRoot(t)), tokenFile, func(cfg *caclient.Config) { cfg.Timeout = 300 * time.Millisecond })
	start := time.Now()
	_, _, err := identity.CSRFetcher(c.Sign)(testContext(t), webID)
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "no answer within 300ms") {
		t.Fatalf("err = %v, want DeadlineExceeded with a hint", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s", d)
	}
}

func TestTransportCredentials_FollowRootFileRotation(t *testing.T) {
	oldPKI, newPKI := newServingPKI(t), newServingPKI(t)
	pki := oldPKI
	addr, _ := startCA(t, newPKI) // the server already has a certificate from the new root
	rootFile := pki.writeRoot(t)
	creds, err := caclient.NewTransportCredentials(caclient.TLSOptions{RootFile: rootFile})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	writeToken(t, tokenFile, "tok-a")
	sign := func() error {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, _, err = identity.CSRFetcher(newClient(t, conn, tokenFile, nil).Sign)(testContext(t), webID)
		return err
	}
	if err := sign(); status.Code(err) != codes.Unavailable {
		t.Fatalf("before rotation: err = %v, want a TLS failure", err)
	}
	if err := os.WriteFile(rootFile, append(append([]byte{}, oldPKI.rootPEM...), newPKI.rootPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sign(); err != nil {
		t.Fatalf("after the root file gained the new root: %v", err)
	}
	// A broken file keeps the last good roots.
	if err := os.WriteFile(rootFile, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sign(); err != nil {
		t.Fatalf("after the root file broke: %v, want the previous roots kept", err)
	}
}

func TestNewTransportCredentials_BadRootFile(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("nope"), 0o644); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{filepath.Join(dir, "missing.pem"): "no such file", garbage: "holds no PEM certificate"} {
		_, err := caclient.NewTransportCredentials(caclient.TLSOptions{RootFile: path})
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err = %v, want it to name the file and say %q", path, err, want)
		}
	}
}

// TestTokenCredentials_OneServerServesCAAndXDS runs the CA and the xDS
// server on one TLS gRPC server whose interceptors demand the bearer token,
// as istiod-lite's port 15012 does: the xDS client syncs with
// TokenCredentials and the CA client signs, over the same credentials.
func TestTokenCredentials_OneServerServesCAAndXDS(t *testing.T) {
	pki := newServingPKI(t)
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	casrv, err := caserver.New(caserver.Config{
		Authority:     authority,
		Authenticator: fakeAuth{"tok-a": {Namespace: "istio-system", ServiceAccount: "ztunnel", NodeName: "node-a"}},
		Pods:          fakePods{"node-a/shop/web": true},
	})
	if err != nil {
		t.Fatal(err)
	}
	cache := xds.NewCache()
	w := &workloadapi.Workload{Uid: "web-1", Name: "web-1", Namespace: "shop", Node: "node-a", Addresses: [][]byte{{10, 0, 0, 7}}}
	a := &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	if err := cache.Update(xds.TypeAddress, map[string]proto.Message{xds.AddressName(a): a}, nil); err != nil {
		t.Fatal(err)
	}
	xsrv, err := xds.New(xds.Config{Cache: cache, DebounceAfter: 5 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	streamAuth := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer tok-a" {
			return status.Errorf(codes.Unauthenticated, "authorization %q", got)
		}
		return h(srv, ss)
	}
	addr := startTLSServer(t, pki.serverCert(t, caclient.DefaultServerName), func(s grpc.ServiceRegistrar) {
		casrv.Register(s)
		xsrv.Register(s)
	}, grpc.StreamInterceptor(streamAuth))

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "istio-token")
	writeToken(t, tokenFile, "tok-a")
	rootFile := pki.writeRoot(t)
	creds, err := caclient.NewTransportCredentials(caclient.TLSOptions{RootFile: rootFile})
	if err != nil {
		t.Fatal(err)
	}
	store := state.NewStore()
	xc, err := xdsclient.New(xdsclient.Config{
		Target: addr, Store: store, NodeID: "ztunnel~node-a",
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithPerRPCCredentials(caclient.TokenCredentials{File: tokenFile})},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- xc.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-xc.SyncedCh():
	case <-time.After(10 * time.Second):
		t.Fatal("xDS not synced within 10s")
	}
	if got := store.Current().WorkloadsOnNode("node-a"); len(got) != 1 || got[0].GetUid() != "web-1" {
		t.Errorf("workloads on node-a = %v, want web-1", got)
	}

	conn := dial(t, addr, rootFile)
	if _, _, err := identity.CSRFetcher(newClient(t, conn, tokenFile, nil).Sign)(testContext(t), webID); err != nil {
		t.Fatalf("CA on the same server: %v", err)
	}
}

func TestTokenCredentials_MissingFileIsUnauthenticated(t *testing.T) {
	_, err := caclient.TokenCredentials{File: filepath.Join(t.TempDir(), "none")}.GetRequestMetadata(context.Background())
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "token file") {
		t.Errorf("err = %v, want Unauthenticated naming the token file", err)
	}
	md, err := caclient.TokenCredentials{File: writeTemp(t, " abc\n")}.GetRequestMetadata(context.Background())
	if err != nil || md["authorization"] != "Bearer abc" {
		t.Errorf("got %v, %v", md, err)
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestNew_RequiresConnAndTokenFile(t *testing.T) {
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(mustCreds(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for name, cfg := range map[string]caclient.Config{
		"no conn":           {TokenFile: "/t"},
		"no token file":     {Conn: conn},
		"negative validity": {Conn: conn, TokenFile: "/t", ValidityDuration: -time.Second},
	} {
		if _, err := caclient.New(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func mustCreds(t *testing.T) credentials.TransportCredentials {
	t.Helper()
	c, err := caclient.NewTransportCredentials(caclient.TLSOptions{RootFile: newServingPKI(t).writeRoot(t)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
