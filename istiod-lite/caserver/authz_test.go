package caserver_test

import (
	"errors"
	"testing"

	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/istiod-lite/caserver"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPolicyDecide(t *testing.T) {
	p := caserver.Policy{TrustDomain: td, NodeProxies: []identity.Workload{{Namespace: "istio-system", ServiceAccount: "ztunnel"}}}
	tests := []struct {
		name         string
		caller       caserver.Caller
		impersonated string
		wantID       string
		wantNode     string
		wantErr      error
	}{
		{"own identity", cart, "", "spiffe://cluster.local/ns/shop/sa/cart", "", nil},
		{"impersonating itself", cart, "spiffe://cluster.local/ns/shop/sa/cart", "spiffe://cluster.local/ns/shop/sa/cart", "", nil},
		{"ztunnel own identity skips node check", ztunnelA, "", "spiffe://cluster.local/ns/istio-system/sa/ztunnel", "", nil},
		{"ztunnel impersonates with node check", ztunnelA, "spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/web", "node-a", nil},
		{"workload impersonates", cart, "spiffe://cluster.local/ns/shop/sa/web", "", "", caserver.ErrPermissionDenied},
		{"ztunnel without node", caserver.Caller{Namespace: "istio-system", ServiceAccount: "ztunnel"}, "spiffe://cluster.local/ns/shop/sa/web", "", "", caserver.ErrPermissionDenied},
		{"other trust domain", ztunnelA, "spiffe://evil.org/ns/shop/sa/web", "", "", caserver.ErrInvalidArgument},
		{"not a workload ID", ztunnelA, "spiffe://cluster.local/ns/shop", "", "", caserver.ErrInvalidArgument},
		{"not a SPIFFE ID", ztunnelA, "web", "", "", caserver.ErrInvalidArgument},
		{"caller with invalid names", caserver.Caller{Namespace: "Shop", ServiceAccount: "x"}, "", "", "", caserver.ErrPermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := p.Decide(tt.caller, tt.impersonated)
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if d.Identity.String() != tt.wantID || d.NodeName != tt.wantNode {
				t.Errorf("decision = %s on %q, want %s on %q", d.Identity, d.NodeName, tt.wantID, tt.wantNode)
			}
		})
	}
}

func TestCallerFromUserInfo(t *testing.T) {
	got, err := caserver.CallerFromUserInfo("system:serviceaccount:istio-system:ztunnel", map[string][]string{
		caserver.ExtraPodName:  {"ztunnel-a"},
		caserver.ExtraPodUID:   {"u1"},
		caserver.ExtraNodeName: {"node-a"},
		caserver.ExtraNodeUID:  {"n1"},
	})
	want := caserver.Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-a", PodUID: "u1", NodeName: "node-a", NodeUID: "n1"}
	if err != nil || got != want {
		t.Errorf("CallerFromUserInfo = %+v, %v; want %+v", got, err, want)
	}
	for _, u := range []string{"admin", "system:serviceaccount:", "system:serviceaccount:ns", "system:serviceaccount::sa", "system:serviceaccount:ns:", "system:serviceaccount:ns:a:b"} {
		if _, err := caserver.CallerFromUserInfo(u, nil); !errors.Is(err, caserver.ErrUnauthenticated) {
			t.Errorf("CallerFromUserInfo(%q) err = %v, want ErrUnauthenticated", u, err)
		}
	}
}
