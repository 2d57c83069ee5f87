package caserver_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/istiod-lite/caserver"
	capb "github.com/ambientmesh/ambient/proto/ca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// fakeAuth maps tokens to callers; unknown tokens are unauthenticated and
// the token "broken" simulates an unreachable apiserver.
type fakeAuth map[string]caserver.Caller

func (f fakeAuth) Authenticate(_ context.Context, token string) (caserver.Caller, error) {
	if token == "broken" {
		return caserver.Caller{}, errors.New("token review: connection refused")
	}
	c, ok := f[token]
	if !ok {
		return caserver.Caller{}, fmt.Errorf("%w: token review: invalid bearer token", caserver.ErrUnauthenticated)
	}
	return c, nil
}

// fakePods holds "node/namespace/serviceaccount" entries, one per pod.
type fakePods struct {
	mu      sync.Mutex
	pods    map[string]bool
	queries []string
}

func (f *fakePods) HasPodOnNode(_ context.Context, node, ns, sa string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := node + "/" + ns + "/" + sa
	f.queries = append(f.queries, key)
	if node == "node-broken" {
		return false, errors.New("apiserver unavailable")
	}
	return f.pods[key], nil
}

var (
	ztunnelA = caserver.Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-a", PodUID: "u1", NodeName: "node-a"}
	cart     = caserver.Caller{Namespace: "shop", ServiceAccount: "cart"}
)

// startServer serves cfg on a real gRPC server on 127.0.0.1 through Run and
// returns a client.
func startServer(t *testing.T, cfg caserver.Config) capb.IstioCertificateServiceClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = lis
	srv, err := caserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return capb.NewIstioCertificateServiceClient(conn)
}

// newRequest builds a request with a fresh CSR for csrID ("" for none).
func newRequest(t *testing.T, csrID, impersonate string, validity int64) *capb.IstioCertificateRequest {
	t.Helper()
	req := &capb.IstioCertificateRequest{ValidityDuration: validity}
	if csrID != "" {
		_, csr, err := ca.NewCSR(spiffeid.RequireFromString(csrID))
		if err != nil {
			t.Fatal(err)
		}
		req.Csr = string(csr)
	}
	if impersonate != "" {
		md, err := structpb.NewStruct(map[string]any{caserver.MetadataImpersonatedIdentity: impersonate})
		if err != nil {
			t.Fatal(err)
		}
		req.Metadata = md
	}
	return req
}

func call(client capb.IstioCertificateServiceClient, token string, req *capb.IstioCertificateRequest) (*capb.IstioCertificateResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return client.CreateCertificate(ctx, req)
}

func checkCode(t *testing.T, err error, want codes.Code, wantMsg string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != want {
		t.Fatalf("code = %v (%q), want %v", st.Code(), st.Message(), want)
	}
	if !strings.Contains(st.Message(), wantMsg) {
		t.Errorf("message = %q, want it to contain %q", st.Message(), wantMsg)
	}
}

// checkChain checks the Istio-style chain: one PEM per element, the leaf
// with exactly wantID as its SAN and lifetime wantTTL (plus backdating),
// verifying to the authority's root, which comes last.
func checkChain(t *testing.T, a *ca.Authority, resp *capb.IstioCertificateResponse, wantID string, wantTTL time.Duration) {
	t.Helper()
	chain := resp.GetCertChain()
	if len(chain) != 2 {
		t.Fatalf("cert_chain has %d elements, want leaf and root", len(chain))
	}
	var certs []*x509.Certificate
	for i, p := range chain {
		blk, rest := pem.Decode([]byte(p))
		if blk == nil || len(strings.TrimSpace(string(rest))) != 0 {
			t.Fatalf("cert_chain[%d] is not exactly one PEM block", i)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	leaf, root := certs[0], certs[1]
	if !root.Equal(a.Certificate()) {
		t.Errorf("last element is not the CA root")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wantID || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf SANs URIs=%v DNS=%v IP=%v, want exactly URI %s", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, wantID)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore) - ca.Backdate; got < wantTTL-5*time.Second || got > wantTTL+5*time.Second {
		t.Errorf("leaf lifetime = %s, want %s", got, wantTTL)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("leaf does not verify to the root: %v", err)
	}
}

func newAuthority(t *testing.T) *ca.Authority {
	t.Helper()
	a, err := ca.NewSelfSigned(td, ca.Options{MaxTTL: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestCreateCertificate(t *testing.T) {
	authority := newAuthority(t)
	pods := &fakePods{pods: map[string]bool{
		"node-a/shop/web":  true,
		"node-b/shop/cart": true,
	}}
	auth := fakeAuth{
		"ztunnel-a":        ztunnelA,
		"ztunnel-nonode":   {Namespace: "istio-system", ServiceAccount: "ztunnel"},
		"ztunnel-broken":   {Namespace: "istio-system", ServiceAccount: "ztunnel", NodeName: "node-broken"},
		"cart":             cart,
		"other-ns-ztunnel": {Namespace: "kube-system", ServiceAccount: "ztunnel", NodeName: "node-a"},
		"custom-proxy":     {Namespace: "mesh", ServiceAccount: "proxy", NodeName: "node-a"},
	}
	client := startServer(t, caserver.Config{Authority: authority, Authenticator: auth, Pods: pods, MaxTTL: 12 * time.Hour})

	const (
		web      = "spiffe://cluster.local/ns/shop/sa/web"
		cartID   = "spiffe://cluster.local/ns/shop/sa/cart"
		ztunnel  = "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
		wrongTD  = "spiffe://example.org/ns/shop/sa/web"
		notAWkld = "spiffe://cluster.local/foo"
	)
	tests := []struct {
		name        string
		token       string
		csrID       string
		impersonate string
		validity    int64
		wantCode    codes.Code
		wantMsg     string
		wantID      string
		wantTTL     time.Duration
	}{
		{name: "own identity, default lifetime", token: "cart", csrID: cartID, wantID: cartID, wantTTL: ca.DefaultTTL},
		{name: "own identity, requested lifetime", token: "cart", csrID: cartID, validity: 1800, wantID: cartID, wantTTL: 30 * time.Minute},
		{name: "lifetime capped by Config.MaxTTL", token: "cart", csrID: cartID, validity: 7 * 24 * 3600, wantID: cartID, wantTTL: 12 * time.Hour},
		{name: "huge lifetime capped", token: "cart", csrID: cartID, validity: 1 << 62, wantID: cartID, wantTTL: 12 * time.Hour},
		{name: "impersonating itself needs no node check", token: "cart", csrID: cartID, impersonate: cartID, wantID: cartID, wantTTL: ca.DefaultTTL},
		{name: "ztunnel own identity", token: "ztunnel-a", csrID: ztunnel, wantID: ztunnel, wantTTL: ca.DefaultTTL},
		{name: "ztunnel impersonates pod on its node", token: "ztunnel-a", csrID: web, impersonate: web, validity: 3600, wantID: web, wantTTL: time.Hour},

		{name: "no token", csrID: cartID, wantCode: codes.Unauthenticated, wantMsg: "no authorization metadata"},
		{name: "unknown token", token: "forged", csrID: cartID, wantCode: codes.Unauthenticated, wantMsg: "invalid bearer token"},
		{name: "authenticator unavailable", token: "broken", csrID: cartID, wantCode: codes.Unavailable, wantMsg: "connection refused"},

		{name: "ztunnel identity not on its node", token: "ztunnel-a", csrID: cartID, impersonate: cartID,
			wantCode: codes.PermissionDenied, wantMsg: "no pod with service account shop/cart runs on node node-a"},
		{name: "workload impersonating", token: "cart", csrID: web, impersonate: web,
			wantCode: codes.PermissionDenied, wantMsg: "only node proxies (istio-system/ztunnel)"},
		{name: "ztunnel SA name in another namespace", token: "other-ns-ztunnel", csrID: web, impersonate: web,
			wantCode: codes.PermissionDenied, wantMsg: "only node proxies"},
		{name: "ztunnel token without node", token: "ztunnel-nonode", csrID: web, impersonate: web,
			wantCode: codes.PermissionDenied, wantMsg: "names no node"},
		{name: "pod lookup fails", token: "ztunnel-broken", csrID: web, impersonate: web,
			wantCode: codes.Unavailable, wantMsg: "apiserver unavailable"},
		{name: "CSR for another identity", token: "cart", csrID: web,
			wantCode: codes.PermissionDenied, wantMsg: "differs from the authorized identity"},
		{name: "impersonated CSR for another identity", token: "ztunnel-a", csrID: cartID, impersonate: web,
			wantCode: codes.PermissionDenied, wantMsg: "differs from the authorized identity"},

		{name: "impersonated identity not a workload ID", token: "ztunnel-a", impersonate: notAWkld,
			wantCode: codes.InvalidArgument, wantMsg: "ImpersonatedIdentity"},
		{name: "impersonated identity not a SPIFFE ID", token: "ztunnel-a", impersonate: "shop/web",
			wantCode: codes.InvalidArgument, wantMsg: "ImpersonatedIdentity"},
		{name: "impersonated identity in another trust domain", token: "ztunnel-a", impersonate: wrongTD,
			wantCode: codes.InvalidArgument, wantMsg: "outside trust domain"},
		{name: "negative lifetime", token: "cart", csrID: cartID, validity: -1,
			wantCode: codes.InvalidArgument, wantMsg: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := call(client, tt.token, newRequest(t, tt.csrID, tt.impersonate, tt.validity))
			checkCode(t, err, tt.wantCode, tt.wantMsg)
			if tt.wantCode == codes.OK {
				checkChain(t, authority, resp, tt.wantID, tt.wantTTL)
			}
		})
	}

	t.Run("CSR without SAN is signed for the authorized identity", func(t *testing.T) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		req := newRequest(t, "", web, 0)
		req.Csr = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		resp, err := call(client, "ztunnel-a", req)
		checkCode(t, err, codes.OK, "")
		checkChain(t, authority, resp, web, ca.DefaultTTL)
	})
	t.Run("malformed CSR", func(t *testing.T) {
		_, err := call(client, "cart", &capb.IstioCertificateRequest{Csr: "not a csr"})
		checkCode(t, err, codes.InvalidArgument, "invalid CSR")
	})
	t.Run("oversized CSR", func(t *testing.T) {
		_, err := call(client, "cart", &capb.IstioCertificateRequest{Csr: strings.Repeat("A", caserver.MaxCSRBytes+1)})
		checkCode(t, err, codes.InvalidArgument, "limit")
	})
	t.Run("non-string ImpersonatedIdentity", func(t *testing.T) {
		req := newRequest(t, web, "", 0)
		req.Metadata, _ = structpb.NewStruct(map[string]any{caserver.MetadataImpersonatedIdentity: 42})
		_, err := call(client, "ztunnel-a", req)
		checkCode(t, err, codes.InvalidArgument, "must be a string")
	})
	t.Run("authorization scheme not Bearer", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Basic Y2FydA==")
		_, err := client.CreateCertificate(ctx, newRequest(t, cartID, "", 0))
		checkCode(t, err, codes.Unauthenticated, "Bearer")
	})
}

func TestCreateCertificate_ConfiguredNodeProxies(t *testing.T) {
	pods := &fakePods{pods: map[string]bool{"node-a/shop/web": true}}
	auth := fakeAuth{
		"ztunnel-a":    ztunnelA,
		"custom-proxy": {Namespace: "mesh", ServiceAccount: "proxy", NodeName: "node-a"},
	}
	client := startServer(t, caserver.Config{
		Authority: newAuthority(t), Authenticator: auth, Pods: pods,
		NodeProxies: []identity.Workload{{Namespace: "mesh", ServiceAccount: "proxy"}},
	})
	web := "spiffe://cluster.local/ns/shop/sa/web"
	_, err := call(client, "custom-proxy", newRequest(t, web, web, 0))
	checkCode(t, err, codes.OK, "")
	_, err = call(client, "ztunnel-a", newRequest(t, web, web, 0))
	checkCode(t, err, codes.PermissionDenied, "only node proxies (mesh/proxy)")
}

func TestCreateCertificate_NodeCheckOnlyForImpersonation(t *testing.T) {
	pods := &fakePods{}
	client := startServer(t, caserver.Config{Authority: newAuthority(t), Authenticator: fakeAuth{"cart": cart, "ztunnel-a": ztunnelA}, Pods: pods})
	cartID := "spiffe://cluster.local/ns/shop/sa/cart"
	if _, err := call(client, "cart", newRequest(t, cartID, "", 0)); err != nil {
		t.Fatal(err)
	}
	if len(pods.queries) != 0 {
		t.Errorf("pod queries for an own-identity request: %v", pods.queries)
	}
	_, err := call(client, "ztunnel-a", newRequest(t, cartID, cartID, 0))
	checkCode(t, err, codes.PermissionDenied, "node-a")
	if want := []string{"node-a/shop/cart"}; fmt.Sprint(pods.queries) != fmt.Sprint(want) {
		t.Errorf("pod queries = %v, want %v", pods.queries, want)
	}
}

func TestNew_RejectsIncompleteConfig(t *testing.T) {
	a := newAuthority(t)
	for name, cfg := range map[string]caserver.Config{
		"no authority":     {Authenticator: fakeAuth{}, Pods: &fakePods{}},
		"no authenticator": {Authority: a, Pods: &fakePods{}},
		"no pods":          {Authority: a, Authenticator: fakeAuth{}},
		"negative MaxTTL":  {Authority: a, Authenticator: fakeAuth{}, Pods: &fakePods{}, MaxTTL: -time.Second},
		"bad node proxy":   {Authority: a, Authenticator: fakeAuth{}, Pods: &fakePods{}, NodeProxies: []identity.Workload{{Namespace: "Bad_NS", ServiceAccount: "x"}}},
	} {
		if _, err := caserver.New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}

func TestRun_StopsOnCancel(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := caserver.New(caserver.Config{Authority: newAuthority(t), Authenticator: fakeAuth{}, Pods: &fakePods{}, Listener: lis})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestRun_ReturnsServeError(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis.Close()
	srv, err := caserver.New(caserver.Config{Authority: newAuthority(t), Authenticator: fakeAuth{}, Pods: &fakePods{}, Listener: lis})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "caserver: serve") {
		t.Errorf("Run on a closed listener = %v, want a serve error", err)
	}
}
