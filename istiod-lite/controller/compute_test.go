package controller

import (
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/internal/authz"
	"github.com/ambientmesh/ambient/istiod-lite/translate"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

func TestCompute_BindsSelectedPoliciesAndPeerAuthentication(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{translate.LabelDataplaneMode: "ambient"}}}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Labels: map[string]string{"app": "web"}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.5"},
	}
	pending := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "noip", Namespace: "shop"}}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.10", Selector: map[string]string{"app": "web"}},
	}
	ap := translate.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow", Namespace: "shop"},
		Spec: translate.AuthorizationPolicySpec{
			Selector: &translate.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}},
			Rules:    []translate.Rule{{From: []translate.From{{Source: translate.Source{Principals: []string{"cluster.local/ns/default/sa/sleep"}}}}}},
		},
	}
	pa := translate.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "istio-system"},
		Spec:       translate.PeerAuthenticationSpec{MTLS: &translate.MutualTLS{Mode: translate.ModeStrict}},
	}
	out := Compute(Input{
		Namespaces: []*corev1.Namespace{ns}, Pods: []*corev1.Pod{pod, pending}, Services: []*corev1.Service{svc},
		AuthorizationPolicies: []translate.AuthorizationPolicy{ap}, PeerAuthentications: []translate.PeerAuthentication{pa},
		RootNamespace: "istio-system",
	})

	if diff := cmp.Diff([]string{"Kubernetes//Pod/shop/web", "shop/web.shop.svc.cluster.local"}, slices.Sorted(maps.Keys(out.Addresses))); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	w := out.Addresses["Kubernetes//Pod/shop/web"].GetWorkload()
	strict := xds.AuthorizationName(authz.StrictPolicy("istio-system"))
	if diff := cmp.Diff([]string{"shop/allow", strict}, w.GetAuthorizationPolicies()); diff != "" {
		t.Errorf("authorization_policies (-want +got):\n%s", diff)
	}
	for _, name := range w.GetAuthorizationPolicies() {
		if out.Authorizations[name] == nil {
			t.Errorf("workload names policy %q that is not served; served %v", name, slices.Sorted(maps.Keys(out.Authorizations)))
		}
	}
	if c := out.Conditions["shop/allow"]; len(c) != 1 || c[0].Status != metav1.ConditionTrue {
		t.Errorf("conditions of shop/allow = %+v, want ZtunnelAccepted=True", c)
	}
}

func TestMergeConditions_KeepsTransitionTimeWhenUnchanged(t *testing.T) {
	want := []translate.Condition{{Type: "ZtunnelAccepted", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "ok"}}
	first, changed := mergeConditions(nil, want, 1, "t1")
	if !changed {
		t.Fatal("first merge reported no change")
	}
	if _, changed := mergeConditions(first, want, 1, "t2"); changed {
		t.Error("identical conditions reported as changed (would loop status writes)")
	}
	next, changed := mergeConditions(first, want, 2, "t2")
	if !changed || next[0].(map[string]any)["lastTransitionTime"] != "t1" {
		t.Errorf("new generation: changed=%v %v, want changed with lastTransitionTime t1", changed, next)
	}
}

// TestCompute_RoutesForWaypoints: an HTTPRoute attached to a Service
// becomes the waypoint's routing table for it, with the route's status.
func TestCompute_RoutesForWaypoints(t *testing.T) {
	svc := func(name, ip string) *corev1.Service {
		return &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
			Spec:       corev1.ServiceSpec{ClusterIP: ip, Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}},
		}
	}
	group, kind := gatewayv1.Group(""), gatewayv1.Kind("Service")
	port := gatewayv1.PortNumber(8080)
	weight := func(w int32) *int32 { return &w }
	backend := func(name string, w int32) gatewayv1.HTTPBackendRef {
		return gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{Weight: weight(w),
			BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: &port}}}
	}
	route := &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews-canary", Namespace: "shop", Generation: 3},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Group: &group, Kind: &kind, Name: "reviews"}}},
			Rules:           []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{backend("reviews-v1", 90), backend("reviews-v2", 10)}}},
		},
	}
	out := Compute(Input{
		Services:   []*corev1.Service{svc("reviews", "10.96.0.10"), svc("reviews-v1", "10.96.0.11"), svc("reviews-v2", "10.96.0.12")},
		HTTPRoutes: []*gatewayv1.HTTPRoute{route},
	})
	table := out.Routes["shop/reviews.shop.svc.cluster.local"]
	if table == nil {
		t.Fatalf("no routing table for shop/reviews; tables %v", slices.Sorted(maps.Keys(out.Routes)))
	}
	if n := len(table.GetRules()); n != 1 || len(table.GetRules()[0].GetBackends()) != 2 {
		t.Fatalf("table %v, want one rule with the two weighted backends", table)
	}
	if len(out.RouteStatus) != 1 || len(out.RouteStatus[0].Parents) != 1 {
		t.Fatalf("route status %+v, want one parent", out.RouteStatus)
	}
	for _, c := range out.RouteStatus[0].Parents[0].Conditions {
		if c.Status != metav1.ConditionTrue || c.ObservedGeneration != 3 {
			t.Errorf("condition %s = %s (generation %d), want True for generation 3", c.Type, c.Status, c.ObservedGeneration)
		}
	}
}

// TestCompute_TargetRefPoliciesGoToWaypoints: a policy with targetRefs is
// served to waypoints (its spec as JSON) and not to ztunnel.
func TestCompute_TargetRefPoliciesGoToWaypoints(t *testing.T) {
	ap := translate.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-admin", Namespace: "shop"},
		Spec: translate.AuthorizationPolicySpec{
			TargetRefs: []translate.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "waypoint"}},
			Action:     translate.ActionDeny,
			Rules:      []translate.Rule{{To: []translate.To{{Operation: translate.Operation{Paths: []string{"/admin"}}}}}},
		},
	}
	out := Compute(Input{AuthorizationPolicies: []translate.AuthorizationPolicy{ap}, RootNamespace: "istio-system"})
	wp := out.WaypointPolicies["shop/deny-admin"]
	if wp == nil || !strings.Contains(string(wp.GetSpecJson()), `"/admin"`) {
		t.Fatalf("waypoint policies %v, want shop/deny-admin with its spec", out.WaypointPolicies)
	}
	if len(out.Authorizations) != 0 {
		t.Errorf("ztunnel got %v, want nothing for a targetRefs policy", slices.Sorted(maps.Keys(out.Authorizations)))
	}
}

func TestCompute_ServesResiliencePerServiceWithConditions(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: "shop"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.11"}}
	five := uint32(5)
	out := Compute(Input{
		Services: []*corev1.Service{svc},
		DestinationRules: []translate.DestinationRule{
			{ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: "shop"}, Spec: translate.DestinationRuleSpec{
				Host: "reviews", TrafficPolicy: &translate.TrafficPolicy{OutlierDetection: &translate.OutlierDetection{Consecutive5xxErrors: &five}},
			}},
			{ObjectMeta: metav1.ObjectMeta{Name: "broken", Namespace: "shop"}, Spec: translate.DestinationRuleSpec{}},
		},
		LocalTrafficPolicies: []translate.LocalTrafficPolicy{{
			ObjectMeta: metav1.ObjectMeta{Name: "limit", Namespace: "shop"},
			Spec: translate.LocalTrafficPolicySpec{
				TargetRefs: []translate.PolicyTargetReference{{Kind: "Service", Name: "reviews"}},
				RateLimit:  &translate.LocalRateLimit{RequestsPerUnit: 100, Unit: "second"},
			},
		}},
		RootNamespace: "istio-system",
	})
	key := "shop/reviews.shop.svc.cluster.local"
	if diff := cmp.Diff([]string{key}, slices.Sorted(maps.Keys(out.Resilience))); diff != "" {
		t.Fatalf("resilience keys (-want +got):\n%s", diff)
	}
	r := out.Resilience[key]
	if r.GetTrafficPolicy().GetOutlierDetection().GetConsecutive_5XxErrors() != 5 || r.GetLocalPolicy().GetRateLimit().GetRequestsPerUnit() != 100 {
		t.Fatalf("policy %v", r)
	}
	for _, tc := range []struct {
		status map[string][]translate.Condition
		key    string
		want   metav1.ConditionStatus
	}{
		{out.DestinationRuleStatus, "shop/reviews", metav1.ConditionTrue},
		{out.DestinationRuleStatus, "shop/broken", metav1.ConditionFalse},
		{out.LocalTrafficPolicyStatus, "shop/limit", metav1.ConditionTrue},
	} {
		if c := tc.status[tc.key]; len(c) != 1 || c[0].Status != tc.want {
			t.Errorf("%s: %+v, want status %s", tc.key, c, tc.want)
		}
	}
}

// TestCompute_TunnelTransportFromAnnotationsAndDefault: pods get their
// tunnel transport from their annotation, their namespace's, or the
// mesh-wide default; an invalid annotation gives h2 and is reported.
func TestCompute_TunnelTransportFromAnnotationsAndDefault(t *testing.T) {
	ambient := map[string]string{translate.LabelDataplaneMode: "ambient"}
	quicNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "fast", Labels: ambient,
		Annotations: map[string]string{translate.AnnotationTunnelTransport: "quic"}}}
	plainNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: ambient}}
	pod := func(ns, name, transport string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.5"}}
		if transport != "" {
			p.Annotations = map[string]string{translate.AnnotationTunnelTransport: transport}
		}
		return p
	}
	in := Input{
		Namespaces: []*corev1.Namespace{quicNS, plainNS},
		Pods: []*corev1.Pod{pod("fast", "a", ""), pod("fast", "b", "h2"), pod("fast", "c", "fast"),
			pod("shop", "d", ""), pod("shop", "e", "quic")},
		RootNamespace: "istio-system",
	}
	for _, def := range []workloadapi.TunnelTransport{workloadapi.TunnelTransport_H2, workloadapi.TunnelTransport_QUIC} {
		in.Translate.DefaultTunnelTransport = def
		out := Compute(in)
		got := map[string]string{}
		for _, a := range out.Addresses {
			if w := a.GetWorkload(); w != nil {
				got[w.GetName()] = w.GetTunnelTransport().String()
			}
		}
		want := map[string]string{"a": "QUIC", "b": "H2", "c": "H2", "d": def.String(), "e": "QUIC"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("default %v: transports (-want +got):\n%s", def, diff)
		}
		if diff := cmp.Diff([]string{"Pod/fast/c"}, slices.Sorted(maps.Keys(out.InvalidTunnelTransports))); diff != "" {
			t.Errorf("invalid annotations (-want +got):\n%s", diff)
		}
	}
}

// TestController_WarnsOnceAboutAnInvalidAnnotation: recomputations do not
// repeat the warning; a new problem, or one that comes back, is logged.
func TestController_WarnsOnceAboutAnInvalidAnnotation(t *testing.T) {
	var buf strings.Builder
	c := &Controller{log: slog.New(slog.NewTextHandler(&buf, nil))}
	warnings := func() int { return strings.Count(buf.String(), "ignoring invalid annotation") }
	bad := map[string]string{"Pod/fast/c": "pod fast/c: bad value"}
	c.warnInvalid(bad)
	c.warnInvalid(bad)
	if n := warnings(); n != 1 {
		t.Fatalf("%d warnings after two recomputations, want 1", n)
	}
	c.warnInvalid(nil)
	c.warnInvalid(bad)
	if n := warnings(); n != 2 {
		t.Fatalf("%d warnings after the problem came back, want 2", n)
	}
	if !strings.Contains(buf.String(), "Pod/fast/c") {
		t.Errorf("warning does not name the object: %s", buf.String())
	}
}
