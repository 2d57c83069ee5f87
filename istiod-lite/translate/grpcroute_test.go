package translate

import (
	"regexp"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func grpcRoute(ns, name string, parents []gatewayv1.ParentReference, rules ...gatewayv1.GRPCRouteRule) *gatewayv1.GRPCRoute {
	return &gatewayv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(t0), Generation: 2},
		Spec:       gatewayv1.GRPCRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents}, Rules: rules},
	}
}

func grpcRule(backend string, matches ...gatewayv1.GRPCRouteMatch) gatewayv1.GRPCRouteRule {
	return gatewayv1.GRPCRouteRule{Matches: matches, BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: backendRef(backend, 9080).BackendRef}}}
}

func method(typ gatewayv1.GRPCMethodMatchType, service, method string) gatewayv1.GRPCRouteMatch {
	mm := &gatewayv1.GRPCMethodMatch{Type: &typ}
	if service != "" {
		mm.Service = &service
	}
	if method != "" {
		mm.Method = &method
	}
	return gatewayv1.GRPCRouteMatch{Method: mm}
}

// A gRPC call is a POST to /<service>/<method>: each method match becomes
// the path match that selects the same calls, and the calls' paths land
// where GRPCRoute's semantics send them.
func TestGRPCRouteAsHTTP_MethodMatches(t *testing.T) {
	exact, re := gatewayv1.GRPCMethodMatchExact, gatewayv1.GRPCMethodMatchRegularExpression
	for _, tc := range []struct {
		name           string
		match          gatewayv1.GRPCRouteMatch
		typ            gatewayv1.PathMatchType
		value          string
		matches, skips []string
	}{
		{"service and method", method(exact, "shop.Reviews", "Get"), gatewayv1.PathMatchExact, "/shop.Reviews/Get",
			[]string{"/shop.Reviews/Get"}, []string{"/shop.Reviews/List", "/shop.ReviewsX/Get"}},
		{"service alone", method(exact, "shop.Reviews", ""), gatewayv1.PathMatchPathPrefix, "/shop.Reviews",
			nil, nil},
		{"method alone", method(exact, "", "Get"), gatewayv1.PathMatchRegularExpression, "/[^/]+/Get",
			[]string{"/shop.Reviews/Get", "/a.B/Get"}, []string{"/shop.Reviews/GetAll", "/Get"}},
		{"exact values are quoted", method(exact, "a.b", "C"), gatewayv1.PathMatchExact, "/a.b/C", nil, nil},
		{"method alone, quoted", method(exact, "", "Get_1"), gatewayv1.PathMatchRegularExpression, "/[^/]+/Get_1", nil, nil},
		{"regular expressions", method(re, `shop\.Reviews(V2)?`, "Get|List"), gatewayv1.PathMatchRegularExpression,
			`/(?:shop\.Reviews(V2)?)/(?:Get|List)`,
			[]string{"/shop.Reviews/Get", "/shop.ReviewsV2/List"}, []string{"/shop.Reviews/Delete", "/shopxReviews/Get"}},
		{"regular expression, service only", method(re, `shop\..*`, ""), gatewayv1.PathMatchRegularExpression,
			`/(?:shop\..*)/[^/]+`, []string{"/shop.Reviews/Get"}, []string{"/other.Reviews/Get"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := GRPCRouteAsHTTP(grpcRoute("default", "r", nil, grpcRule("reviews-v1", tc.match)))
			p := rt.Spec.Rules[0].Matches[0].Path
			if p == nil || *p.Type != tc.typ || *p.Value != tc.value {
				t.Fatalf("path match %+v, want %s %q", p, tc.typ, tc.value)
			}
			if tc.typ != gatewayv1.PathMatchRegularExpression {
				return
			}
			full := regexp.MustCompile("^(?:" + tc.value + ")$") // the waypoint matches in full
			for _, path := range tc.matches {
				if !full.MatchString(path) {
					t.Errorf("%q does not match %s", path, tc.value)
				}
			}
			for _, path := range tc.skips {
				if full.MatchString(path) {
					t.Errorf("%q matches %s", path, tc.value)
				}
			}
		})
	}
}

// A GRPCRoute attached to a Service routes in that Service's table,
// merged with its HTTPRoutes by HTTPRoute's precedence, and gets a status
// of its own kind; a cross-namespace backend needs a ReferenceGrant that
// names GRPCRoute, not HTTPRoute.
func TestHTTPRoutes_GRPCRoutes(t *testing.T) {
	exact := gatewayv1.GRPCMethodMatchExact
	typ := gatewayv1.GRPCHeaderMatchExact
	g := grpcRoute("default", "reviews", []gatewayv1.ParentReference{svcParent("reviews")},
		grpcRule("reviews-v2", gatewayv1.GRPCRouteMatch{
			Method:  method(exact, "shop.Reviews", "Get").Method,
			Headers: []gatewayv1.GRPCHeaderMatch{{Type: &typ, Name: "x-user", Value: "beta"}},
		}),
		grpcRule("reviews-v1", method(exact, "shop.Reviews", "")),
	)
	// An HTTPRoute of the same name on the same Service.
	h := httpRoute("default", "reviews", t0, []gatewayv1.ParentReference{svcParent("reviews")}, rule("reviews-v1", pathMatch(gatewayv1.PathMatchPathPrefix, "/")))
	tables, status := HTTPRoutes([]*gatewayv1.HTTPRoute{h, GRPCRouteAsHTTP(g)}, routeIndex())
	if len(tables) != 1 {
		t.Fatalf("%d tables, want 1", len(tables))
	}
	if got, want := order(tables[0]), []string{"reviews#0 Exact:/shop.Reviews/Get h1", "reviews#1 Prefix:/shop.Reviews", "reviews#0 Prefix:"}; !cmp.Equal(got, want) {
		t.Errorf("order %q, want %q", got, want)
	}
	if len(status) != 2 || status[0].Kind != "GRPCRoute" || status[1].Kind != "HTTPRoute" {
		t.Fatalf("statuses %+v, want one per kind, GRPCRoute first", status)
	}
	if c := status[0].Parents[0].Conditions[0]; c.Type != "Accepted" || c.Status != "True" || c.ObservedGeneration != 2 {
		t.Errorf("GRPCRoute Accepted condition %+v", c)
	}

	// Across namespaces: refused until a grant admits GRPCRoutes.
	cross := grpcRoute("default", "to-ratings", []gatewayv1.ParentReference{svcParent("reviews")}, gatewayv1.GRPCRouteRule{
		BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
			Name: "ratings", Namespace: ptr(gatewayv1.Namespace("other")), Port: ptr(gatewayv1.PortNumber(9080)),
		}}}},
	})
	for _, tc := range []struct {
		grantKind string
		resolved  metav1.ConditionStatus
	}{{"HTTPRoute", metav1.ConditionFalse}, {"GRPCRoute", metav1.ConditionTrue}} {
		_, status := HTTPRoutes([]*gatewayv1.HTTPRoute{GRPCRouteAsHTTP(cross)}, routeIndex(grant("other", "default", tc.grantKind, "")))
		c := status[0].Parents[0].Conditions[1]
		if c.Type != "ResolvedRefs" || c.Status != tc.resolved {
			t.Errorf("with a grant for %ss: %+v, want ResolvedRefs %s", tc.grantKind, c, tc.resolved)
		}
		if tc.resolved == metav1.ConditionFalse && c.Message != "backend Service other/ratings is in another namespace and no ReferenceGrant in other allows GRPCRoutes from default" {
			t.Errorf("message %q", c.Message)
		}
	}
}
