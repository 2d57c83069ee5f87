package caserver_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/istiod-lite/caserver"
	"google.golang.org/grpc/codes"
)

// TestKube_CreateCertificateAgainstRealAPIServer runs the production
// TokenReviewer and KubePods against a real kube-apiserver, behind a real
// gRPC server on loopback.
func TestKube_CreateCertificateAgainstRealAPIServer(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	if err := c.ApplyYAML(kubetest.TwoNodes); err != nil {
		t.Fatal(err)
	}
	kube, err := caserver.NewKube(c.Server, c.CAData, c.Token)
	if err != nil {
		t.Fatal(err)
	}
	reviewer := &caserver.TokenReviewer{Kube: kube}
	ctx := context.Background()

	token := func(t *testing.T, ns, sa string, args ...string) string {
		t.Helper()
		out, err := c.Kubectl(append([]string{"create", "token", sa, "-n", ns}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	ztunnelA := token(t, "istio-system", "ztunnel", "--bound-object-kind", "Pod", "--bound-object-name", "ztunnel-a", "--audience", "istio-ca")

	t.Run("TokenReviewYieldsPodAndNode", func(t *testing.T) {
		got, err := reviewer.Authenticate(ctx, ztunnelA)
		if err != nil {
			t.Fatal(err)
		}
		if got.Namespace != "istio-system" || got.ServiceAccount != "ztunnel" || got.PodName != "ztunnel-a" || got.PodUID == "" || got.NodeName != "node-a" || got.NodeUID == "" {
			t.Errorf("caller = %+v, want istio-system/ztunnel pod ztunnel-a on node-a with uids", got)
		}
	})
	t.Run("TokenReviewRefusesWrongAudience", func(t *testing.T) {
		_, err := reviewer.Authenticate(ctx, token(t, "istio-system", "ztunnel", "--audience", "other"))
		if !errors.Is(err, caserver.ErrUnauthenticated) {
			t.Errorf("err = %v, want ErrUnauthenticated", err)
		}
	})
	t.Run("KubePods", func(t *testing.T) {
		pods := &caserver.KubePods{Kube: kube}
		for _, tt := range []struct {
			node, ns, sa string
			want         bool
		}{
			{"node-b", "shop", "cart", true},
			{"node-a", "shop", "cart", false},
			{"node-a", "shop", "web", true},
			{"node-a", "shop", "nobody", false},
		} {
			got, err := pods.HasPodOnNode(ctx, tt.node, tt.ns, tt.sa)
			if err != nil || got != tt.want {
				t.Errorf("HasPodOnNode(%s, %s/%s) = %v, %v; want %v", tt.node, tt.ns, tt.sa, got, err, tt.want)
			}
		}
	})

	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	client := startServer(t, caserver.Config{
		Authority:     authority,
		Authenticator: reviewer,
		Pods:          &caserver.KubePods{Kube: kube},
	})

	// The service-account signing key lets the test forge tokens that
	// differ from genuine ones only in their expiry.
	saUID := strings.TrimSpace(string(must(c.Kubectl("get", "sa", "ztunnel", "-n", "istio-system", "-o", "jsonpath={.metadata.uid}"))))
	signSA := func(t *testing.T, exp time.Time) string {
		return forgeSAToken(t, filepath.Join(c.Dir, "sa.key"), "istio-system", "ztunnel", saUID, exp)
	}
	deletedSAToken := token(t, "shop", "web", "--audience", "istio-ca")
	if _, err := c.Kubectl("delete", "sa", "web", "-n", "shop"); err != nil {
		t.Fatal(err)
	}
	var otherKey = mustRSA(t)

	tests := []struct {
		name         string
		token        string
		impersonate  string
		validity     int64
		wantCode     codes.Code
		wantMsg      string
		wantID       string
		wantLifetime time.Duration
	}{
		{
			name: "ztunnel on node-a gets identity with a pod on node-a", token: ztunnelA,
			impersonate: "spiffe://cluster.local/ns/shop/sa/web", validity: 3600,
			wantCode: codes.OK, wantID: "spiffe://cluster.local/ns/shop/sa/web", wantLifetime: time.Hour,
		},
		{
			name: "ztunnel on node-a refused identity whose pods are only on node-b", token: ztunnelA,
			impersonate: "spiffe://cluster.local/ns/shop/sa/cart",
			wantCode:    codes.PermissionDenied, wantMsg: "no pod with service account shop/cart runs on node node-a",
		},
		{
			name: "ztunnel on node-b gets cart", token: token(t, "istio-system", "ztunnel", "--bound-object-kind", "Pod", "--bound-object-name", "ztunnel-b", "--audience", "istio-ca"),
			impersonate: "spiffe://cluster.local/ns/shop/sa/cart", validity: 7200,
			wantCode: codes.OK, wantID: "spiffe://cluster.local/ns/shop/sa/cart", wantLifetime: 2 * time.Hour,
		},
		{
			name: "workload gets its own identity", token: token(t, "shop", "cart", "--audience", "istio-ca"), validity: 600,
			wantCode: codes.OK, wantID: "spiffe://cluster.local/ns/shop/sa/cart", wantLifetime: 10 * time.Minute,
		},
		{
			name: "workload may not impersonate", token: token(t, "shop", "cart", "--audience", "istio-ca"),
			impersonate: "spiffe://cluster.local/ns/istio-system/sa/ztunnel",
			wantCode:    codes.PermissionDenied, wantMsg: "only node proxies",
		},
		{
			name: "ztunnel token not bound to a pod names no node", token: token(t, "istio-system", "ztunnel", "--audience", "istio-ca"),
			impersonate: "spiffe://cluster.local/ns/shop/sa/web",
			wantCode:    codes.PermissionDenied, wantMsg: "names no node",
		},
		{
			name: "forged token", token: forgeToken(t, otherKey, "istio-system", "ztunnel", saUID, time.Now().Add(time.Hour)),
			wantCode: codes.Unauthenticated, wantMsg: "token review",
		},
		{
			name: "garbage token", token: "not-a-jwt",
			wantCode: codes.Unauthenticated, wantMsg: "token review",
		},
		{
			name: "expired token signed with the cluster key", token: signSA(t, time.Now().Add(-time.Minute)),
			wantCode: codes.Unauthenticated, wantMsg: "expired",
		},
		{
			// Control for the case above: the same forgery, unexpired, is accepted.
			name: "unexpired token signed with the cluster key", token: signSA(t, time.Now().Add(time.Hour)),
			wantCode: codes.OK, wantID: "spiffe://cluster.local/ns/istio-system/sa/ztunnel", wantLifetime: ca.DefaultTTL,
		},
		{
			name: "token of a deleted service account", token: deletedSAToken,
			wantCode: codes.Unauthenticated, wantMsg: "token review",
		},
		{
			name: "wrong audience", token: token(t, "shop", "cart", "--audience", "api"),
			wantCode: codes.Unauthenticated, wantMsg: "istio-ca",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := tt.wantID
			if id == "" {
				id = tt.impersonate
			}
			req := newRequest(t, id, tt.impersonate, tt.validity)
			resp, err := call(client, tt.token, req)
			checkCode(t, err, tt.wantCode, tt.wantMsg)
			if tt.wantCode == codes.OK {
				checkChain(t, authority, resp, tt.wantID, tt.wantLifetime)
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func mustRSA(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// forgeSAToken signs a service-account JWT with the PKCS#1 key in keyFile.
func forgeSAToken(t *testing.T, keyFile, ns, sa, uid string, exp time.Time) string {
	t.Helper()
	b, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", keyFile)
	}
	key, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return forgeToken(t, key, ns, sa, uid, exp)
}

// forgeToken builds an RS256 JWT shaped like a Kubernetes bound
// service-account token for audience istio-ca.
func forgeToken(t *testing.T, key *rsa.PrivateKey, ns, sa, uid string, exp time.Time) string {
	t.Helper()
	iat := exp.Add(-2 * time.Hour)
	claims := map[string]any{
		"iss": "https://kubernetes.default.svc.cluster.local",
		"sub": "system:serviceaccount:" + ns + ":" + sa,
		"aud": []string{"istio-ca"},
		"exp": exp.Unix(),
		"iat": iat.Unix(),
		"nbf": iat.Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      ns,
			"serviceaccount": map[string]string{"name": sa, "uid": uid},
		},
	}
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]string{"alg": "RS256", "typ": "JWT"}) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}
