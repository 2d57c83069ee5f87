package caclient_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/caclient"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/istiod-lite/caserver"
)

// TestSign_AgainstCAServerWithRealAPIServer runs the client against the
// production caserver (TokenReview and pod listing against a real
// kube-apiserver) over TLS on loopback, with real bound ServiceAccount
// tokens in a token file.
func TestSign_AgainstCAServerWithRealAPIServer(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	if err := c.ApplyYAML(kubetest.TwoNodes); err != nil {
		t.Fatal(err)
	}
	kube, err := caserver.NewKube(c.Server, c.CAData, c.Token)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := caserver.New(caserver.Config{
		Authority:     authority,
		Authenticator: &caserver.TokenReviewer{Kube: kube},
		Pods:          &caserver.KubePods{Kube: kube},
	})
	if err != nil {
		t.Fatal(err)
	}
	pki := newServingPKI(t)
	addr := startTLSServer(t, pki.serverCert(t, caclient.DefaultServerName), srv.Register)

	token := func(t *testing.T, pod string) string {
		t.Helper()
		out, err := c.Kubectl("create", "token", "ztunnel", "-n", "istio-system",
			"--bound-object-kind", "Pod", "--bound-object-name", pod, "--audience", "istio-ca")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	writeToken(t, tokenFile, token(t, "ztunnel-a"))
	client := newClient(t, dial(t, addr, pki.writeRoot(t)), tokenFile, func(cfg *caclient.Config) {
		cfg.ValidityDuration = time.Hour
	})
	fetch := identity.CSRFetcher(client.Sign)

	t.Run("identity with a pod on the node gets its SVID", func(t *testing.T) {
		svid, bundle, err := fetch(testContext(t), webID)
		if err != nil {
			t.Fatal(err)
		}
		leaf := svid.Certificates[0]
		if svid.ID != webID || len(leaf.URIs) != 1 || leaf.URIs[0].String() != webID.String() {
			t.Errorf("SVID %s with URIs %v, want exactly %s", svid.ID, leaf.URIs, webID)
		}
		if got := leaf.NotAfter.Sub(leaf.NotBefore) - ca.Backdate; got < time.Hour-time.Minute || got > time.Hour+time.Minute {
			t.Errorf("lifetime %s, want the 1h asked for", got)
		}
		if roots := bundle.X509Authorities(); len(roots) != 1 || !roots[0].Equal(authority.Certificate()) {
			t.Error("bundle is not the CA's root")
		}
	})
	t.Run("identity only on another node is refused", func(t *testing.T) {
		_, _, err := fetch(testContext(t), cartID)
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("err = %v, want PermissionDenied", err)
		}
		for _, want := range []string{"istiod-lite refused", "no pod with service account shop/cart runs on node node-a"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
	})
	t.Run("token file is re-read on every call", func(t *testing.T) {
		writeToken(t, tokenFile, token(t, "ztunnel-b")) // the kubelet rotated it; now node-b's
		if _, _, err := fetch(testContext(t), cartID); err != nil {
			t.Fatalf("cart with node-b's token: %v", err)
		}
		if _, _, err := fetch(testContext(t), webID); status.Code(err) != codes.PermissionDenied {
			t.Errorf("web with node-b's token: err = %v, want PermissionDenied", err)
		}
	})
	t.Run("token for another audience is rejected", func(t *testing.T) {
		out, err := c.Kubectl("create", "token", "ztunnel", "-n", "istio-system", "--audience", "api")
		if err != nil {
			t.Fatal(err)
		}
		writeToken(t, tokenFile, strings.TrimSpace(string(out)))
		_, _, err = fetch(testContext(t), webID)
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "audience istio-ca") {
			t.Errorf("err = %v, want Unauthenticated with a hint about the audience", err)
		}
	})
}
