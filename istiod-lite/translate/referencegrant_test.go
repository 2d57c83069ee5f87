package translate

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// grant is a ReferenceGrant in ns admitting kind fromKind (group
// gateway.networking.k8s.io) from fromNS to core Services, all of them when
// toName is empty.
func grant(ns, fromNS, fromKind, toName string) *gatewayv1.ReferenceGrant {
	g := &gatewayv1.ReferenceGrant{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "from-" + fromNS},
		Spec: gatewayv1.ReferenceGrantSpec{
			From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: gatewayv1.Kind(fromKind), Namespace: gatewayv1.Namespace(fromNS)}},
			To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service"}},
		},
	}
	if toName != "" {
		g.Spec.To[0].Name = ptr(gatewayv1.ObjectName(toName))
	}
	return g
}

func TestReferencePermitted_GatewayAPIReferenceGrantSemantics(t *testing.T) {
	// An HTTPRoute in shop refers to Service other/ratings.
	ref := Reference{
		FromGroup: gatewayv1.GroupName, FromKind: "HTTPRoute", FromNamespace: "shop",
		ToGroup: "", ToKind: "Service", ToNamespace: "other", ToName: "ratings",
	}
	sameNS := ref
	sameNS.ToNamespace = "shop"
	otherFromGroup := grant("other", "shop", "HTTPRoute", "")
	otherFromGroup.Spec.From[0].Group = "example.com"
	otherToKind := grant("other", "shop", "HTTPRoute", "")
	otherToKind.Spec.To[0].Kind = "Secret"
	coreGroupSpelledOut := grant("other", "shop", "HTTPRoute", "")
	coreGroupSpelledOut.Spec.To[0].Group = "core"
	emptyName := grant("other", "shop", "HTTPRoute", "")
	emptyName.Spec.To[0].Name = ptr(gatewayv1.ObjectName(""))
	// Entries are alternatives: one matching from and one matching to.
	lists := grant("other", "elsewhere", "GRPCRoute", "reviews")
	lists.Spec.From = append(lists.Spec.From, gatewayv1.ReferenceGrantFrom{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: "shop"})
	lists.Spec.To = append(lists.Spec.To, gatewayv1.ReferenceGrantTo{Group: "", Kind: "Service", Name: ptr(gatewayv1.ObjectName("ratings"))})
	// from and to must match within one grant, not across two.
	fromOnly := grant("other", "shop", "HTTPRoute", "reviews")
	toOnly := grant("other", "elsewhere", "HTTPRoute", "ratings")

	tests := []struct {
		name   string
		grants []*gatewayv1.ReferenceGrant
		ref    Reference
		want   bool
	}{
		{"same namespace needs no grant", nil, sameNS, true},
		{"no grant", nil, ref, false},
		{"grant in the target namespace allows", []*gatewayv1.ReferenceGrant{grant("other", "shop", "HTTPRoute", "")}, ref, true},
		{"grant in another namespace does not", []*gatewayv1.ReferenceGrant{grant("shop", "shop", "HTTPRoute", "")}, ref, false},
		{"to.name of the Service allows", []*gatewayv1.ReferenceGrant{grant("other", "shop", "HTTPRoute", "ratings")}, ref, true},
		{"to.name of another Service does not", []*gatewayv1.ReferenceGrant{grant("other", "shop", "HTTPRoute", "reviews")}, ref, false},
		{"empty to.name allows every Service", []*gatewayv1.ReferenceGrant{emptyName}, ref, true},
		{"from another namespace does not", []*gatewayv1.ReferenceGrant{grant("other", "elsewhere", "HTTPRoute", "")}, ref, false},
		{"from another kind does not", []*gatewayv1.ReferenceGrant{grant("other", "shop", "GRPCRoute", "")}, ref, false},
		{"from another group does not", []*gatewayv1.ReferenceGrant{otherFromGroup}, ref, false},
		{"to another kind does not", []*gatewayv1.ReferenceGrant{otherToKind}, ref, false},
		{"to group must be empty for core", []*gatewayv1.ReferenceGrant{coreGroupSpelledOut}, ref, false},
		{"any from entry and any to entry", []*gatewayv1.ReferenceGrant{lists}, ref, true},
		{"from and to in different grants do not combine", []*gatewayv1.ReferenceGrant{fromOnly, toOnly}, ref, false},
		{"one matching grant among others", []*gatewayv1.ReferenceGrant{nil, fromOnly, grant("other", "shop", "HTTPRoute", "ratings")}, ref, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ReferencePermitted(tt.grants, tt.ref); got != tt.want {
				t.Errorf("ReferencePermitted = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestHTTPRoutes_CrossNamespaceBackendResolvesWithReferenceGrant: a
// backendRef (and a mirror) to Service other/ratings is refused until a
// ReferenceGrant in other admits HTTPRoutes from the route's namespace;
// then it is routed to and the route's references all resolve.
func TestHTTPRoutes_CrossNamespaceBackendResolvesWithReferenceGrant(t *testing.T) {
	ratings := backendRef("ratings", 9080)
	ratings.Namespace = ptr(gatewayv1.Namespace("other"))
	r := gatewayv1.HTTPRouteRule{
		BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("reviews-v1", 9080), ratings},
		Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
			BackendRef: ratings.BackendObjectReference,
		}}},
	}
	rt := httpRoute("default", "split", t0, []gatewayv1.ParentReference{svcParent("reviews")}, r)
	ratingsDst := &waypointapi.Destination{Service: "other/ratings.other.svc.cluster.local", Port: 9080}
	const refused = "backend Service other/ratings is in another namespace and no ReferenceGrant in other allows HTTPRoutes from default"

	tests := []struct {
		name         string
		grants       []any
		wantResolved *metav1.Condition
		wantBackends []*waypointapi.Backend
		wantFilters  []*waypointapi.Filter
	}{
		{
			name:         "without a grant",
			wantResolved: &metav1.Condition{Type: "ResolvedRefs", Status: "False", Reason: "RefNotPermitted", Message: "mirror: " + refused + "; " + refused, ObservedGeneration: 3},
			wantBackends: []*waypointapi.Backend{{Destination: dst("reviews-v1"), Weight: 1}, {Weight: 1, InvalidStatus: 500}},
		},
		{
			name:         "with a grant for another Service",
			grants:       []any{grant("other", "default", "HTTPRoute", "reviews")},
			wantResolved: &metav1.Condition{Type: "ResolvedRefs", Status: "False", Reason: "RefNotPermitted", Message: "mirror: " + refused + "; " + refused, ObservedGeneration: 3},
			wantBackends: []*waypointapi.Backend{{Destination: dst("reviews-v1"), Weight: 1}, {Weight: 1, InvalidStatus: 500}},
		},
		{
			name:         "with a grant in other",
			grants:       []any{grant("other", "default", "HTTPRoute", "ratings")},
			wantResolved: &metav1.Condition{Type: "ResolvedRefs", Status: "True", Reason: "ResolvedRefs", Message: "All references resolved", ObservedGeneration: 3},
			wantBackends: []*waypointapi.Backend{{Destination: dst("reviews-v1"), Weight: 1}, {Destination: ratingsDst, Weight: 1}},
			wantFilters:  []*waypointapi.Filter{{Kind: &waypointapi.Filter_RequestMirror{RequestMirror: &waypointapi.Mirror{Backend: ratingsDst}}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tables, st := HTTPRoutes([]*gatewayv1.HTTPRoute{rt}, routeIndex(tt.grants...))
			if d := cmp.Diff(tt.wantResolved, condOf(conds(t, st, "split"), "ResolvedRefs")); d != "" {
				t.Errorf("ResolvedRefs (-want +got):\n%s", d)
			}
			if len(tables) != 1 || len(tables[0].GetRules()) != 1 {
				t.Fatalf("tables %v, want one with one rule", tables)
			}
			got := tables[0].GetRules()[0]
			if d := cmp.Diff(tt.wantBackends, got.GetBackends(), protocmp.Transform()); d != "" {
				t.Errorf("backends (-want +got):\n%s", d)
			}
			// An unresolved mirror is dropped.
			if d := cmp.Diff(tt.wantFilters, got.GetFilters(), protocmp.Transform()); d != "" {
				t.Errorf("filters (-want +got):\n%s", d)
			}
		})
	}
}
