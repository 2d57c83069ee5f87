package translate

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func routeSvc(ns, name string, ports ...int32) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.20"}}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: fmt.Sprintf("http-%d", p), Port: p})
	}
	return s
}

func routeIndex(extra ...any) *Index {
	c := Cluster{Services: []*corev1.Service{
		routeSvc("default", "reviews", 9080, 9090),
		routeSvc("default", "reviews-v1", 9080),
		routeSvc("default", "reviews-v2", 9080),
		routeSvc("other", "ratings", 9080),
	}}
	for _, e := range extra {
		switch o := e.(type) {
		case *corev1.Service:
			c.Services = append(c.Services, o)
		case *gatewayv1.Gateway:
			c.Gateways = append(c.Gateways, o)
		case *corev1.Namespace:
			c.Namespaces = append(c.Namespaces, o)
		case *gatewayv1.ReferenceGrant:
			c.ReferenceGrants = append(c.ReferenceGrants, o)
		}
	}
	return NewIndex(c)
}

func ptr[T any](v T) *T { return &v }

func svcParent(name string) gatewayv1.ParentReference {
	return gatewayv1.ParentReference{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(name)}
}

func backendRef(name string, port int32, weight ...int32) gatewayv1.HTTPBackendRef {
	b := gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
		Name: gatewayv1.ObjectName(name), Port: ptr(gatewayv1.PortNumber(port)),
	}}}
	if len(weight) > 0 {
		b.Weight = &weight[0]
	}
	return b
}

func httpRoute(ns, name string, created time.Time, parents []gatewayv1.ParentReference, rules ...gatewayv1.HTTPRouteRule) *gatewayv1.HTTPRoute {
	return &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(created), Generation: 3},
		Spec:       gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents}, Rules: rules},
	}
}

func pathMatch(typ gatewayv1.PathMatchType, v string) gatewayv1.HTTPRouteMatch {
	return gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Type: &typ, Value: &v}}
}

func rule(backend string, matches ...gatewayv1.HTTPRouteMatch) gatewayv1.HTTPRouteRule {
	return gatewayv1.HTTPRouteRule{Matches: matches, BackendRefs: []gatewayv1.HTTPBackendRef{backendRef(backend, 9080)}}
}

const reviewsKey = "default/reviews.default.svc.cluster.local"

func dst(name string) *waypointapi.Destination {
	return &waypointapi.Destination{Service: "default/" + name + ".default.svc.cluster.local", Port: 9080}
}

func TestHTTPRoutes_DefaultMatchIsPathPrefixRoot(t *testing.T) {
	rt := httpRoute("default", "reviews", t0, []gatewayv1.ParentReference{svcParent("reviews")},
		gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("reviews-v1", 9080, 90), backendRef("reviews-v2", 9080, 10)}})
	tables, status := HTTPRoutes([]*gatewayv1.HTTPRoute{rt}, routeIndex())
	want := []*waypointapi.ServiceRoutes{{
		ServiceKey: reviewsKey,
		Matches:    []*waypointapi.RouteMatch{{Path: &waypointapi.PathMatch{}}},
		Rules: []*waypointapi.RouteRule{{Route: "default/reviews", Backends: []*waypointapi.Backend{
			{Destination: dst("reviews-v1"), Weight: 90}, {Destination: dst("reviews-v2"), Weight: 10},
		}}},
	}}
	if d := cmp.Diff(want, tables, protocmp.Transform()); d != "" {
		t.Errorf("tables (-want +got):\n%s", d)
	}
	if len(status) != 1 || len(status[0].Parents) != 1 {
		t.Fatalf("status %+v", status)
	}
	ps := status[0].Parents[0]
	if ps.ControllerName != ControllerName || ps.ParentRef.Name != "reviews" {
		t.Errorf("parent status %+v", ps)
	}
	wantConds := []metav1.Condition{
		{Type: "Accepted", Status: "True", Reason: "Accepted", Message: "Route was valid", ObservedGeneration: 3},
		{Type: "ResolvedRefs", Status: "True", Reason: "ResolvedRefs", Message: "All references resolved", ObservedGeneration: 3},
	}
	if d := cmp.Diff(wantConds, ps.Conditions); d != "" {
		t.Errorf("conditions (-want +got):\n%s", d)
	}
}

// order lists a table's matches as "route#rule path".
func order(sr *waypointapi.ServiceRoutes) []string {
	var out []string
	for _, m := range sr.GetMatches() {
		r := sr.GetRules()[m.GetRule()]
		s := fmt.Sprintf("%s#%d %v:%s", strings.TrimPrefix(r.GetRoute(), "default/"), r.GetIndex(), m.GetPath().GetType(), m.GetPath().GetValue())
		if m.GetMethod() != "" {
			s += " " + m.GetMethod()
		}
		if n := len(m.GetHeaders()); n > 0 {
			s += fmt.Sprintf(" h%d", n)
		}
		if n := len(m.GetQueryParams()); n > 0 {
			s += fmt.Sprintf(" q%d", n)
		}
		out = append(out, strings.NewReplacer("PATH_MATCH_", "", "PATH_PREFIX", "Prefix", "EXACT", "Exact", "REGULAR_EXPRESSION", "Regex").Replace(s))
	}
	return out
}

func TestHTTPRoutes_PrecedenceAcrossRoutes(t *testing.T) {
	p := []gatewayv1.ParentReference{svcParent("reviews")}
	get, post := gatewayv1.HTTPMethodGet, gatewayv1.HTTPMethodPost
	withMethod := func(m gatewayv1.HTTPRouteMatch, method gatewayv1.HTTPMethod) gatewayv1.HTTPRouteMatch {
		m.Method = &method
		return m
	}
	withHeaders := func(m gatewayv1.HTTPRouteMatch, n int) gatewayv1.HTTPRouteMatch {
		for i := range n {
			m.Headers = append(m.Headers, gatewayv1.HTTPHeaderMatch{Name: gatewayv1.HTTPHeaderName(fmt.Sprintf("h%d", i)), Value: "v"})
		}
		return m
	}
	withQuery := func(m gatewayv1.HTTPRouteMatch, n int) gatewayv1.HTTPRouteMatch {
		for i := range n {
			m.QueryParams = append(m.QueryParams, gatewayv1.HTTPQueryParamMatch{Name: gatewayv1.HTTPHeaderName(fmt.Sprintf("q%d", i)), Value: "v"})
		}
		return m
	}
	prefix := func(v string) gatewayv1.HTTPRouteMatch { return pathMatch(gatewayv1.PathMatchPathPrefix, v) }
	routes := []*gatewayv1.HTTPRoute{
		// Newest route: loses every tie on route age.
		httpRoute("default", "newest", t0.Add(time.Hour), p,
			rule("reviews-v1", prefix("/api")),
			rule("reviews-v1", pathMatch(gatewayv1.PathMatchExact, "/api/exact")),
		),
		httpRoute("default", "b-old", t0, p,
			rule("reviews-v1", prefix("/api")),
			rule("reviews-v1", withHeaders(prefix("/api"), 1), withHeaders(prefix("/api"), 2)),
			rule("reviews-v1", pathMatch(gatewayv1.PathMatchRegularExpression, "/api/v[0-9]+/.*")),
		),
		httpRoute("default", "a-old", t0, p,
			rule("reviews-v1", prefix("/api")),
			rule("reviews-v1", withMethod(prefix("/api"), get), withQuery(prefix("/api"), 3)),
			rule("reviews-v1", withHeaders(withMethod(prefix("/api"), post), 1)),
			rule("reviews-v1", prefix("/api/v1/"), gatewayv1.HTTPRouteMatch{}),
			rule("reviews-v1", prefix("/api")), // same as rule 0: later in list order
		),
		httpRoute("default", "oldest", t0.Add(-time.Hour), p,
			rule("reviews-v1", withQuery(prefix("/api"), 1)),
			rule("reviews-v1", pathMatch(gatewayv1.PathMatchRegularExpression, ".*")),
		),
	}
	tables, _ := HTTPRoutes(routes, routeIndex())
	if len(tables) != 1 {
		t.Fatalf("%d tables", len(tables))
	}
	want := []string{
		"newest#1 Exact:/api/exact",     // Exact beats every prefix
		"a-old#3 Prefix:/api/v1",        // longest prefix ("/api/v1/" without its "/")
		"a-old#2 Prefix:/api POST h1",   // method
		"a-old#1 Prefix:/api GET",       // method, fewer headers
		"b-old#1 Prefix:/api h2",        // most headers
		"b-old#1 Prefix:/api h1",        //
		"a-old#1 Prefix:/api q3",        // most query params
		"oldest#0 Prefix:/api q1",       //
		"a-old#0 Prefix:/api",           // tie: oldest route (a-old, b-old same age: alphabetical)
		"a-old#4 Prefix:/api",           // same route: rule order
		"b-old#0 Prefix:/api",           //
		"newest#0 Prefix:/api",          // newest route last
		"a-old#3 Prefix:",               // the default match, PathPrefix "/"
		"b-old#2 Regex:/api/v[0-9]+/.*", // regular expressions after prefixes, longest first
		"oldest#1 Regex:.*",             //
	}
	if d := cmp.Diff(want, order(tables[0])); d != "" {
		t.Errorf("order (-want +got):\n%s", d)
	}
	// Each rule appears once; matches point at it.
	seen := map[string]bool{}
	for _, r := range tables[0].Rules {
		k := fmt.Sprintf("%s#%d", r.Route, r.Index)
		if seen[k] {
			t.Errorf("rule %s twice", k)
		}
		seen[k] = true
	}
	if len(seen) != 12 {
		t.Errorf("%d rules, want 12", len(seen))
	}
	// The result does not depend on input order.
	rev := []*gatewayv1.HTTPRoute{routes[3], routes[1], routes[0], routes[2]}
	again, _ := HTTPRoutes(rev, routeIndex())
	if d := cmp.Diff(tables, again, protocmp.Transform()); d != "" {
		t.Errorf("input order changed output:\n%s", d)
	}
}

func TestHTTPRoutes_PortTablesIncludeWholeServiceRoutes(t *testing.T) {
	whole := httpRoute("default", "whole", t0, []gatewayv1.ParentReference{svcParent("reviews")}, rule("reviews-v1"))
	onPort := svcParent("reviews")
	onPort.Port = ptr(gatewayv1.PortNumber(9090))
	byName := svcParent("reviews")
	byName.SectionName = ptr(gatewayv1.SectionName("http-9090"))
	special := httpRoute("default", "special", t0, []gatewayv1.ParentReference{onPort, byName}, rule("reviews-v2", pathMatch(gatewayv1.PathMatchPathPrefix, "/v2")))
	tables, status := HTTPRoutes([]*gatewayv1.HTTPRoute{special, whole}, routeIndex())
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name()+" "+strings.Join(order(tb), ","))
	}
	want := []string{
		reviewsKey + " whole#0 Prefix:",
		reviewsKey + ":9090 special#0 Prefix:/v2,whole#0 Prefix:",
	}
	if d := cmp.Diff(want, names); d != "" {
		t.Errorf("tables (-want +got):\n%s", d)
	}
	for _, s := range status {
		for _, p := range s.Parents {
			if p.Conditions[0].Status != metav1.ConditionTrue {
				t.Errorf("%s: %+v", s.Route, p.Conditions)
			}
		}
	}
}

func TestHTTPRoutes_ConsumerRoutesGetTheirOwnTable(t *testing.T) {
	parent := svcParent("ratings")
	parent.Namespace = ptr(gatewayv1.Namespace("other"))
	consumer := httpRoute("default", "ratings-from-default", t0, []gatewayv1.ParentReference{parent}, rule("reviews-v1"))
	tables, status := HTTPRoutes([]*gatewayv1.HTTPRoute{consumer}, routeIndex())
	if len(tables) != 1 || tables[0].Name() != "other/ratings.other.svc.cluster.local@default" {
		t.Fatalf("tables %v", tables)
	}
	if c := status[0].Parents[0].Conditions[0]; c.Status != metav1.ConditionTrue {
		t.Errorf("accepted %+v", c)
	}
}

func conds(t *testing.T, st []RouteStatus, route string) []metav1.Condition {
	t.Helper()
	for _, s := range st {
		if s.Route.Name == route {
			if len(s.Parents) != 1 {
				t.Fatalf("%s: %d parents", route, len(s.Parents))
			}
			return s.Parents[0].Conditions
		}
	}
	t.Fatalf("no status for %s", route)
	return nil
}

func condOf(cs []metav1.Condition, typ string) *metav1.Condition {
	for i := range cs {
		if cs[i].Type == typ {
			return &cs[i]
		}
	}
	return nil
}

func TestHTTPRoutes_UnresolvedBackendRefs(t *testing.T) {
	p := []gatewayv1.ParentReference{svcParent("reviews")}
	crossNS := backendRef("ratings", 9080)
	crossNS.Namespace = ptr(gatewayv1.Namespace("other"))
	wrongKind := backendRef("reviews-v1", 9080)
	wrongKind.Group, wrongKind.Kind = ptr(gatewayv1.Group("multicluster.x-k8s.io")), ptr(gatewayv1.Kind("ServiceImport"))
	cases := []struct {
		name    string
		ref     gatewayv1.HTTPBackendRef
		reason  string
		message string
	}{
		{"missing", backendRef("nope", 9080), "BackendNotFound", "backend Service default/nope not found"},
		{"no-such-port", backendRef("reviews-v1", 1234), "BackendNotFound", "backend Service default/reviews-v1 has no port 1234"},
		{"cross-namespace", crossNS, "RefNotPermitted", "backend Service other/ratings is in another namespace and no ReferenceGrant in other allows HTTPRoutes from default"},
		{"wrong-kind", wrongKind, "InvalidKind", "backend ServiceImport.multicluster.x-k8s.io reviews-v1: only core Services are supported"},
	}
	var routes []*gatewayv1.HTTPRoute
	for _, c := range cases {
		routes = append(routes, httpRoute("default", c.name, t0, p, gatewayv1.HTTPRouteRule{
			Matches:     []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchExact, "/"+c.name)},
			BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("reviews-v1", 9080), c.ref},
		}))
	}
	tables, st := HTTPRoutes(routes, routeIndex())
	for _, c := range cases {
		cs := conds(t, st, c.name)
		// Accepted: the rule is implemented, half its traffic answers 500.
		if a := condOf(cs, "Accepted"); a == nil || a.Status != metav1.ConditionTrue {
			t.Errorf("%s: Accepted %+v", c.name, a)
		}
		want := &metav1.Condition{Type: "ResolvedRefs", Status: "False", Reason: c.reason, Message: c.message, ObservedGeneration: 3}
		if d := cmp.Diff(want, condOf(cs, "ResolvedRefs")); d != "" {
			t.Errorf("%s: ResolvedRefs (-want +got):\n%s", c.name, d)
		}
	}
	for _, r := range tables[0].Rules {
		want := []*waypointapi.Backend{{Destination: dst("reviews-v1"), Weight: 1}, {Weight: 1, InvalidStatus: 500}}
		if d := cmp.Diff(want, r.Backends, protocmp.Transform()); d != "" {
			t.Errorf("%s backends (-want +got):\n%s", r.Route, d)
		}
	}
}

func TestHTTPRoutes_InvalidRulesAreDropped(t *testing.T) {
	p := []gatewayv1.ParentReference{svcParent("reviews")}
	good := rule("reviews-v1", pathMatch(gatewayv1.PathMatchPathPrefix, "/good"))
	badRegex := rule("reviews-v1", pathMatch(gatewayv1.PathMatchRegularExpression, "(unclosed"))
	badType := rule("reviews-v1", pathMatch("Glob", "/x/*"))
	incompatible := rule("reviews-v1")
	incompatible.Filters = []gatewayv1.HTTPRouteFilter{
		{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{StatusCode: ptr(301)}},
		{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{Hostname: ptr(gatewayv1.PreciseHostname("x"))}},
	}
	prefixOnExact := rule("reviews-v1", pathMatch(gatewayv1.PathMatchExact, "/e"))
	prefixOnExact.Filters = []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
		Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr("/x")}}}}
	badTimeout := rule("reviews-v1")
	badTimeout.Timeouts = &gatewayv1.HTTPRouteTimeouts{Request: ptr(gatewayv1.Duration("1s")), BackendRequest: ptr(gatewayv1.Duration("2s"))}
	badDuration := rule("reviews-v1")
	badDuration.Timeouts = &gatewayv1.HTTPRouteTimeouts{Request: ptr(gatewayv1.Duration("1.5s"))}

	routes := []*gatewayv1.HTTPRoute{
		httpRoute("default", "partly", t0, p, good, badRegex),
		httpRoute("default", "all-bad", t0, p, badRegex, badType),
		httpRoute("default", "incompatible", t0, p, incompatible),
		httpRoute("default", "prefix-on-exact", t0, p, prefixOnExact),
		httpRoute("default", "timeouts", t0, p, badTimeout, badDuration),
	}
	tables, st := HTTPRoutes(routes, routeIndex())

	cs := conds(t, st, "partly")
	if a := condOf(cs, "Accepted"); a.Status != metav1.ConditionTrue {
		t.Errorf("partly: Accepted %+v", a)
	}
	if pi := condOf(cs, "PartiallyInvalid"); pi == nil || pi.Status != metav1.ConditionTrue || pi.Reason != "UnsupportedValue" ||
		!strings.HasPrefix(pi.Message, "Dropped Rule") || !strings.Contains(pi.Message, "rule 1") {
		t.Errorf("partly: PartiallyInvalid %+v", pi)
	}
	for name, reason := range map[string]string{"all-bad": "UnsupportedValue", "incompatible": "IncompatibleFilters", "prefix-on-exact": "UnsupportedValue", "timeouts": "UnsupportedValue"} {
		cs := conds(t, st, name)
		if a := condOf(cs, "Accepted"); a.Status != metav1.ConditionFalse || a.Reason != reason {
			t.Errorf("%s: Accepted %+v, want False %s", name, a, reason)
		}
		if condOf(cs, "PartiallyInvalid") != nil {
			t.Errorf("%s: PartiallyInvalid on a fully invalid route", name)
		}
	}
	if got := order(tables[0]); !cmp.Equal(got, []string{"partly#0 Prefix:/good"}) {
		t.Errorf("table has %v, want only the valid rule", got)
	}
}

func TestHTTPRoutes_ParentResolution(t *testing.T) {
	missing := svcParent("nope")
	badPort := svcParent("reviews")
	badPort.Port = ptr(gatewayv1.PortNumber(1))
	portAndName := svcParent("reviews")
	portAndName.Port, portAndName.SectionName = ptr(gatewayv1.PortNumber(9080)), ptr(gatewayv1.SectionName("http-9090"))
	foreignGW := gatewayv1.ParentReference{Name: "ingress"}
	ns := func(n string) *corev1.Namespace { return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}} }
	idx := routeIndex(gateway("default", "ingress", "other-class", nil), waypointGW("default", "waypoint", ""), ns("default"), ns("team"))
	routes := []*gatewayv1.HTTPRoute{
		httpRoute("default", "missing", t0, []gatewayv1.ParentReference{missing}, rule("reviews-v1")),
		httpRoute("default", "bad-port", t0, []gatewayv1.ParentReference{badPort}, rule("reviews-v1")),
		httpRoute("default", "port-and-name", t0, []gatewayv1.ParentReference{portAndName}, rule("reviews-v1")),
		httpRoute("default", "foreign", t0, []gatewayv1.ParentReference{foreignGW}, rule("reviews-v1")),
		httpRoute("team", "not-allowed", t0, []gatewayv1.ParentReference{{Name: "waypoint", Namespace: ptr(gatewayv1.Namespace("default"))}}, rule("reviews-v1")),
	}
	tables, st := HTTPRoutes(routes, idx)
	if len(tables) != 0 {
		t.Errorf("tables %v, want none", tables)
	}
	for name, reason := range map[string]string{"missing": "NoMatchingParent", "bad-port": "NoMatchingParent", "port-and-name": "NoMatchingParent", "not-allowed": "NotAllowedByListeners"} {
		if a := condOf(conds(t, st, name), "Accepted"); a.Status != metav1.ConditionFalse || a.Reason != reason {
			t.Errorf("%s: Accepted %+v, want False %s", name, a, reason)
		}
	}
	for _, s := range st {
		if s.Route.Name == "foreign" {
			t.Errorf("status for a Gateway of another controller: %+v", s)
		}
	}
}

func TestHTTPRoutes_WaypointGatewayParentKeepsHostnames(t *testing.T) {
	idx := routeIndex(waypointGW("default", "waypoint", ""))
	rt := httpRoute("default", "by-host", t0, []gatewayv1.ParentReference{{Name: "waypoint"}}, rule("reviews-v1"))
	rt.Spec.Hostnames = []gatewayv1.Hostname{"Reviews.example.com", "*.example.com"}
	tables, st := HTTPRoutes([]*gatewayv1.HTTPRoute{rt}, idx)
	if len(tables) != 1 {
		t.Fatalf("tables %v", tables)
	}
	tb := tables[0]
	if tb.ParentKind != waypointapi.ParentKind_PARENT_KIND_GATEWAY || tb.ServiceKey != "default/waypoint" {
		t.Errorf("table %v", tb)
	}
	if got := tb.Rules[0].Hostnames; !cmp.Equal(got, []string{"reviews.example.com", "*.example.com"}) {
		t.Errorf("hostnames %v", got)
	}
	if a := condOf(conds(t, st, "by-host"), "Accepted"); a.Status != metav1.ConditionTrue {
		t.Errorf("Accepted %+v", a)
	}
	// The same route on a Service parent ignores its hostnames.
	rt.Spec.ParentRefs = []gatewayv1.ParentReference{svcParent("reviews")}
	tables, _ = HTTPRoutes([]*gatewayv1.HTTPRoute{rt}, idx)
	if h := tables[0].Rules[0].Hostnames; len(h) != 0 {
		t.Errorf("Service parent kept hostnames %v", h)
	}
}

func TestHTTPRoutes_FiltersTimeoutsRetry(t *testing.T) {
	r := rule("reviews-v1", pathMatch(gatewayv1.PathMatchPathPrefix, "/api/"))
	r.Name = ptr(gatewayv1.SectionName("api"))
	r.Filters = []gatewayv1.HTTPRouteFilter{
		{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{
			Set: []gatewayv1.HTTPHeader{{Name: "X-Env", Value: "prod"}}, Add: []gatewayv1.HTTPHeader{{Name: "X-Trace", Value: "1"}}, Remove: []string{"Cookie"}}},
		{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: &gatewayv1.HTTPHeaderFilter{Remove: []string{"Server"}}},
		{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
			Hostname: ptr(gatewayv1.PreciseHostname("internal")),
			Path:     &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr("")}}},
		{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
			BackendRef: backendRef("reviews-v2", 9080).BackendObjectReference, Percent: ptr(int32(25))}},
		{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
			BackendRef: backendRef("reviews-v2", 9080).BackendObjectReference, Fraction: &gatewayv1.Fraction{Numerator: 1}}},
		{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
			BackendRef: backendRef("reviews-v2", 9080).BackendObjectReference}},
		{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
			BackendRef: backendRef("gone", 9080).BackendObjectReference}},
	}
	r.Timeouts = &gatewayv1.HTTPRouteTimeouts{Request: ptr(gatewayv1.Duration("10s")), BackendRequest: ptr(gatewayv1.Duration("2s500ms"))}
	r.Retry = &gatewayv1.HTTPRouteRetry{Attempts: ptr(3), Codes: []gatewayv1.HTTPRouteRetryStatusCode{502, 503}, Backoff: ptr(gatewayv1.Duration("100ms"))}
	redirect := rule("reviews-v1", pathMatch(gatewayv1.PathMatchExact, "/old"))
	redirect.BackendRefs = nil
	redirect.Filters = []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{
		Scheme: ptr("https"), Hostname: ptr(gatewayv1.PreciseHostname("new.example")), Port: ptr(gatewayv1.PortNumber(8443)), StatusCode: ptr(301),
		Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.FullPathHTTPPathModifier, ReplaceFullPath: ptr("/new")}}}}
	rt := httpRoute("default", "filters", t0, []gatewayv1.ParentReference{svcParent("reviews")}, r, redirect)
	tables, st := HTTPRoutes([]*gatewayv1.HTTPRoute{rt}, routeIndex())
	three := uint32(3)
	want := &waypointapi.ServiceRoutes{
		ServiceKey: reviewsKey,
		Matches: []*waypointapi.RouteMatch{
			{Rule: 0, Path: &waypointapi.PathMatch{Type: waypointapi.PathMatchType_PATH_MATCH_EXACT, Value: "/old"}},
			{Rule: 1, Path: &waypointapi.PathMatch{Value: "/api"}},
		},
		Rules: []*waypointapi.RouteRule{
			{Route: "default/filters", Index: 1, Filters: []*waypointapi.Filter{{Kind: &waypointapi.Filter_RequestRedirect{RequestRedirect: &waypointapi.Redirect{
				Scheme: "https", Hostname: "new.example", Port: 8443, StatusCode: 301,
				Path: &waypointapi.PathModifier{Type: &waypointapi.PathModifier_ReplaceFullPath{ReplaceFullPath: "/new"}}}}}}},
			{Route: "default/filters", Index: 0, Name: "api",
				Filters: []*waypointapi.Filter{
					{Kind: &waypointapi.Filter_RequestHeaderModifier{RequestHeaderModifier: &waypointapi.HeaderModifier{
						Set: []*waypointapi.Header{{Name: "x-env", Value: "prod"}}, Add: []*waypointapi.Header{{Name: "x-trace", Value: "1"}}, Remove: []string{"cookie"}}}},
					{Kind: &waypointapi.Filter_ResponseHeaderModifier{ResponseHeaderModifier: &waypointapi.HeaderModifier{Remove: []string{"server"}}}},
					{Kind: &waypointapi.Filter_UrlRewrite{UrlRewrite: &waypointapi.URLRewrite{Hostname: "internal",
						Path: &waypointapi.PathModifier{Type: &waypointapi.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: ""}}}}},
					{Kind: &waypointapi.Filter_RequestMirror{RequestMirror: &waypointapi.Mirror{Backend: dst("reviews-v2"), Numerator: 25, Denominator: 100}}},
					{Kind: &waypointapi.Filter_RequestMirror{RequestMirror: &waypointapi.Mirror{Backend: dst("reviews-v2"), Numerator: 1, Denominator: 100}}},
					{Kind: &waypointapi.Filter_RequestMirror{RequestMirror: &waypointapi.Mirror{Backend: dst("reviews-v2")}}},
				},
				Backends: []*waypointapi.Backend{{Destination: dst("reviews-v1"), Weight: 1}},
				Timeouts: &waypointapi.Timeouts{Request: durationpb.New(10 * time.Second), BackendRequest: durationpb.New(2500 * time.Millisecond)},
				Retry:    &waypointapi.Retry{Attempts: &three, Codes: []uint32{502, 503}, Backoff: durationpb.New(100 * time.Millisecond)},
			},
		},
	}
	if d := cmp.Diff([]*waypointapi.ServiceRoutes{want}, tables, protocmp.Transform()); d != "" {
		t.Errorf("tables (-want +got):\n%s", d)
	}
	// The unresolved mirror is dropped and reported.
	if rr := condOf(conds(t, st, "filters"), "ResolvedRefs"); rr.Status != metav1.ConditionFalse || rr.Reason != "BackendNotFound" || !strings.HasPrefix(rr.Message, "mirror: ") {
		t.Errorf("ResolvedRefs %+v", rr)
	}
}

func TestHTTPRoutes_DuplicateMatchersKeepTheFirst(t *testing.T) {
	m := gatewayv1.HTTPRouteMatch{
		Headers:     []gatewayv1.HTTPHeaderMatch{{Name: "X-User", Value: "a"}, {Name: "x-user", Value: "b"}},
		QueryParams: []gatewayv1.HTTPQueryParamMatch{{Name: "q", Value: "1"}, {Name: "Q", Value: "2"}, {Name: "q", Value: "3"}},
	}
	tables, _ := HTTPRoutes([]*gatewayv1.HTTPRoute{httpRoute("default", "dup", t0, []gatewayv1.ParentReference{svcParent("reviews")}, rule("reviews-v1", m))}, routeIndex())
	got := tables[0].Matches[0]
	want := &waypointapi.RouteMatch{Path: &waypointapi.PathMatch{},
		Headers:     []*waypointapi.HeaderMatch{{Name: "x-user", Value: "a"}},
		QueryParams: []*waypointapi.QueryParamMatch{{Name: "q", Value: "1"}, {Name: "Q", Value: "2"}}}
	if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
		t.Errorf("match (-want +got):\n%s", d)
	}
}

func TestHTTPRoutes_ExtensionRefFailsClosed(t *testing.T) {
	r := rule("reviews-v1")
	r.Filters = []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterExtensionRef, ExtensionRef: &gatewayv1.LocalObjectReference{Group: "example.com", Kind: "Auth", Name: "x"}}}
	tables, st := HTTPRoutes([]*gatewayv1.HTTPRoute{httpRoute("default", "ext", t0, []gatewayv1.ParentReference{svcParent("reviews")}, r)}, routeIndex())
	if got := tables[0].Rules[0]; len(got.Backends) != 0 || len(got.Filters) != 0 {
		t.Errorf("rule %v, want no backends (500)", got)
	}
	if rr := condOf(conds(t, st, "ext"), "ResolvedRefs"); rr.Status != metav1.ConditionFalse || rr.Reason != "InvalidKind" {
		t.Errorf("ResolvedRefs %+v", rr)
	}
}
