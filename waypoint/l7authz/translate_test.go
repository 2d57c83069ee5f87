package l7authz_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/ambientmesh/ambient/istiod-lite/translate"
	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/waypoint/l7authz"
)

// The spec types mirror translate's; these conversions stop compiling if a
// leaf type changes on either side.
var (
	_ = l7authz.Source(translate.Source{})
	_ = l7authz.Operation(translate.Operation{})
	_ = l7authz.Condition(translate.WhenCondition{})
	_ = l7authz.TargetRef(translate.PolicyTargetReference{})
	_ = l7authz.WorkloadSelector(translate.WorkloadSelector{})
	_ = l7authz.Provider(translate.Provider{})
)

// jsonFields lists the JSON field paths of a type, recursively.
func jsonFields(t reflect.Type, prefix string, out *[]string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("json")
		if i := len(name); i > 0 {
			if j := indexComma(name); j >= 0 {
				name = name[:j]
			}
		}
		p := prefix + "." + name
		*out = append(*out, p)
		jsonFields(f.Type, p, out)
	}
}

func indexComma(s string) int {
	for i := range len(s) {
		if s[i] == ',' {
			return i
		}
	}
	return -1
}

// TestSpecMirrorsTranslate: every JSON field translate decodes, l7authz
// decodes too, and the reverse, so a spec the control plane marshals
// arrives whole.
func TestSpecMirrorsTranslate(t *testing.T) {
	var a, b []string
	jsonFields(reflect.TypeFor[translate.AuthorizationPolicySpec](), "spec", &a)
	jsonFields(reflect.TypeFor[l7authz.Spec](), "spec", &b)
	slices.Sort(a)
	slices.Sort(b)
	if !slices.Equal(a, b) {
		t.Errorf("translate fields %q\nl7authz fields %q", a, b)
	}
}

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
