package l7authz_test

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/ambientmesh/ambient/istiod-lite/translate"
	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/waypoint/l7authz"
)

// TestCompile_FromTranslate: an Istio manifest, decoded by translate as
// istiod-lite decodes it, marshalled as the spec travels, compiles and
// decides as Istio would.
func TestCompile_FromTranslate(t *testing.T) {
	const manifest = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-viewer
  namespace: shop
  annotations:
    istio.io/dry-run: "false"
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: reviews
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["shop"]
  - to:
    - operation:
        methods: ["POST"]
        paths: ["/admin", "/admin/*"]
`
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(manifest), &obj); err != nil {
		t.Fatal(err)
	}
	ap, err := translate.FromUnstructured[translate.AuthorizationPolicy](obj)
	if err != nil {
		t.Fatal(err)
	}
	// As istiod-lite sends it, as the waypoint decodes it.
	wire, ok, err := translate.WaypointPolicy(*ap)
	if err != nil || !ok {
		t.Fatalf("WaypointPolicy = %v, %v", ok, err)
	}
	in, err := l7authz.FromProto(wire)
	if err != nil {
		t.Fatal(err)
	}
	p, err := l7authz.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	pols := l7authz.Applicable([]*l7authz.Policy{p}, "istio-system",
		l7authz.GatewayTarget("shop", "waypoint"), l7authz.ServiceTarget("shop", "reviews"))
	if len(pols) != 1 {
		t.Fatalf("Applicable = %d policies, want 1", len(pols))
	}
	base := l7authz.Request{Source: l7authz.Peer{Principal: "cluster.local/ns/shop/sa/frontend", Namespace: "shop", ServiceAccount: "frontend"},
		Method: "GET", Host: "reviews", Path: "/public"}
	if d := l7authz.Evaluate(pols, &base); !d.Allow {
		t.Errorf("GET /public: %+v", d)
	}
	post := base
	post.Method, post.Path = "POST", "/admin//x"
	if d := l7authz.Evaluate(pols, &post); d.Allow || d.Status != 403 || d.Policy != "shop/reviews-viewer" {
		t.Errorf("POST /admin//x: %+v", d)
	}
}

// TestFromProto_RefusesUnknownFields: a field this waypoint does not know
// could change what the policy means, so the policy is refused whole.
func TestFromProto_RefusesUnknownFields(t *testing.T) {
	_, err := l7authz.FromProto(&waypointapi.AuthorizationPolicy{Namespace: "shop", Name: "p",
		SpecJson: []byte(`{"action":"DENY","rules":[{"to":[{"operation":{"paths":["/admin"],"futureField":true}}]}]}`)})
	if err == nil || !strings.Contains(err.Error(), "shop/p") {
		t.Fatalf("err = %v, want the unknown field refused, naming the policy", err)
	}
}
