package translate

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

func resSvc(ns, name string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1"}}
}

// decodeYAML decodes one manifest with FromUnstructured, as the controller
// does.
func decodeYAML[T Policy](t *testing.T, doc string) T {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
		t.Fatal(err)
	}
	v, err := FromUnstructured[T](obj)
	if err != nil {
		t.Fatal(err)
	}
	return *v
}

func dr(ns, name, host string, age int, tp *TrafficPolicy, subsets ...Subset) DestinationRule {
	return DestinationRule{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(time.Unix(int64(age), 0))},
		Spec:       DestinationRuleSpec{Host: host, TrafficPolicy: tp, Subsets: subsets},
	}
}

func i32(v int32) *int32                       { return &v }
func u32(v uint32) *uint32                     { return &v }
func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// defaults is the resolved policy with nothing set: Istio's defaults.
func defaults() *waypointapi.TrafficPolicy {
	return &waypointapi.TrafficPolicy{ConnectionPool: &waypointapi.ConnectionPool{
		MaxConnections: 4294967295, ConnectTimeout: dur(10 * time.Second),
		Http1MaxPendingRequests: 4294967295, Http2MaxRequests: 4294967295, MaxRetries: 4294967295,
		IdleTimeout: dur(time.Hour),
	}}
}

func TestResilience_DecodesIstioManifestAndFillsDefaults(t *testing.T) {
	rule := decodeYAML[DestinationRule](t, `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 50, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 30s}
    outlierDetection: {consecutive5xxErrors: 7, interval: 5s, baseEjectionTime: 1m, maxEjectionPercent: 50}
    tls: {mode: ISTIO_MUTUAL}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
      outlierDetection: {consecutiveGatewayErrors: 3}
`)
	res := Resilience(ResilienceInput{DestinationRules: []DestinationRule{rule}, Services: []*corev1.Service{resSvc("bookinfo", "reviews"), resSvc("bookinfo", "ratings")}, RootNamespace: "istio-system"})
	top := &waypointapi.TrafficPolicy{
		LoadBalancer: waypointapi.LoadBalancer_LB_ROUND_ROBIN,
		ConnectionPool: &waypointapi.ConnectionPool{
			MaxConnections: 100, ConnectTimeout: dur(2 * time.Second),
			Http1MaxPendingRequests: 10, Http2MaxRequests: 50, MaxRequestsPerConnection: 1, MaxRetries: 3,
			IdleTimeout: dur(30 * time.Second),
		},
		OutlierDetection: &waypointapi.OutlierDetection{
			Consecutive_5XxErrors: 7, Interval: dur(5 * time.Second), BaseEjectionTime: dur(time.Minute), MaxEjectionPercent: 50,
		},
	}
	v2 := &waypointapi.TrafficPolicy{
		LoadBalancer:   waypointapi.LoadBalancer_LB_RANDOM,
		ConnectionPool: top.ConnectionPool,
		// The subset's outlierDetection replaces the top-level one whole,
		// with Istio's defaults for what it leaves out.
		OutlierDetection: &waypointapi.OutlierDetection{
			Consecutive_5XxErrors: 5, ConsecutiveGatewayErrors: 3, Interval: dur(10 * time.Second), BaseEjectionTime: dur(30 * time.Second), MaxEjectionPercent: 10,
		},
	}
	want := []*waypointapi.ServiceResilience{{
		ServiceKey:       "bookinfo/reviews.bookinfo.svc.cluster.local",
		DestinationRules: []string{"bookinfo/reviews"},
		TrafficPolicy:    top,
		Subsets: []*waypointapi.Subset{
			{Name: "v1", Labels: map[string]string{"version": "v1"}, TrafficPolicy: top},
			{Name: "v2", Labels: map[string]string{"version": "v2"}, TrafficPolicy: v2},
		},
	}}
	if d := cmp.Diff(want, res.Policies, protocmp.Transform()); d != "" {
		t.Fatalf("policies (-want +got):\n%s", d)
	}
	c := res.DestinationRuleStatus["bookinfo/reviews"]
	if len(c) != 1 || c[0].Status != metav1.ConditionTrue || !strings.Contains(c[0].Message, "spec.trafficPolicy.tls") {
		t.Fatalf("condition %+v, want Accepted noting the ignored tls", c)
	}
}

func TestResilience_EmptyPolicyGetsIstioDefaults(t *testing.T) {
	res := Resilience(ResilienceInput{
		DestinationRules: []DestinationRule{dr("ns", "a", "svc", 1, &TrafficPolicy{OutlierDetection: &OutlierDetection{}})},
		Services:         []*corev1.Service{resSvc("ns", "svc")},
	})
	want := defaults()
	want.OutlierDetection = &waypointapi.OutlierDetection{Consecutive_5XxErrors: 5, Interval: dur(10 * time.Second), BaseEjectionTime: dur(30 * time.Second), MaxEjectionPercent: 10}
	if len(res.Policies) != 1 {
		t.Fatalf("%d policies", len(res.Policies))
	}
	if d := cmp.Diff(want, res.Policies[0].TrafficPolicy, protocmp.Transform()); d != "" {
		t.Fatalf("(-want +got):\n%s", d)
	}
	// consecutive5xxErrors: 0 disables it (not the default 5).
	res = Resilience(ResilienceInput{
		DestinationRules: []DestinationRule{dr("ns", "a", "svc", 1, &TrafficPolicy{OutlierDetection: &OutlierDetection{Consecutive5xxErrors: u32(0)}})},
		Services:         []*corev1.Service{resSvc("ns", "svc")},
	})
	if got := res.Policies[0].TrafficPolicy.OutlierDetection.Consecutive_5XxErrors; got != 0 {
		t.Fatalf("consecutive5xxErrors: 0 became %d", got)
	}
}

func TestResilience_HostMatchingAndPrecedence(t *testing.T) {
	lb := func(s string) *TrafficPolicy { return &TrafficPolicy{LoadBalancer: &LoadBalancerSettings{Simple: s}} }
	svcs := []*corev1.Service{resSvc("app", "web"), resSvc("app", "api"), resSvc("other", "web"), resSvc("lone", "x")}
	rules := []DestinationRule{
		dr("app", "wild", "*.app.svc.cluster.local", 1, lb("RANDOM")),
		dr("app", "exact", "web", 2, lb("ROUND_ROBIN")),       // short name in app: beats the wildcard
		dr("istio-system", "mesh", "*", 3, lb("PASSTHROUGH")), // root: only where the namespace has none
		dr("istio-system", "other-web", "web.other.svc.cluster.local", 4, lb("ROUND_ROBIN")),
		dr("elsewhere", "client-side", "api.app.svc.cluster.local", 0, lb("LEAST_REQUEST")), // a client namespace's rule
	}
	res := Resilience(ResilienceInput{DestinationRules: rules, Services: svcs, RootNamespace: "istio-system"})
	got := map[string]string{}
	for _, p := range res.Policies {
		got[p.ServiceKey] = strings.Join(p.DestinationRules, ",") + "=" + p.TrafficPolicy.LoadBalancer.String()
	}
	want := map[string]string{
		"app/web.app.svc.cluster.local":     "app/exact=LB_ROUND_ROBIN",
		"app/api.app.svc.cluster.local":     "app/wild=LB_RANDOM",
		"other/web.other.svc.cluster.local": "istio-system/other-web=LB_ROUND_ROBIN", // exact beats "*"
		"lone/x.lone.svc.cluster.local":     "istio-system/mesh=LB_PASSTHROUGH",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("(-want +got):\n%s", d)
	}
}

func TestResilience_ExportToHidesRootRules(t *testing.T) {
	r := dr("istio-system", "mesh", "*", 1, nil)
	r.Spec.ExportTo = []string{"."}
	hidden := dr("ns", "hidden", "svc", 1, nil)
	hidden.Spec.ExportTo = []string{"~"}
	res := Resilience(ResilienceInput{DestinationRules: []DestinationRule{r, hidden}, Services: []*corev1.Service{resSvc("ns", "svc")}, RootNamespace: "istio-system"})
	if len(res.Policies) != 0 {
		t.Fatalf("got %v, want no policy", res.Policies)
	}
}

func TestResilience_SameHostRulesMergeOldestFirst(t *testing.T) {
	older := dr("ns", "b-older", "svc", 1, &TrafficPolicy{LoadBalancer: &LoadBalancerSettings{Simple: "RANDOM"}},
		Subset{Name: "v1", Labels: map[string]string{"v": "1"}})
	newer := dr("ns", "a-newer", "svc.ns.svc.cluster.local", 2, &TrafficPolicy{LoadBalancer: &LoadBalancerSettings{Simple: "ROUND_ROBIN"}},
		Subset{Name: "v1", Labels: map[string]string{"v": "other"}}, Subset{Name: "v2", Labels: map[string]string{"v": "2"}})
	res := Resilience(ResilienceInput{DestinationRules: []DestinationRule{newer, older}, Services: []*corev1.Service{resSvc("ns", "svc")}})
	p := res.Policies[0]
	if d := cmp.Diff([]string{"ns/b-older", "ns/a-newer"}, p.DestinationRules); d != "" {
		t.Fatal(d)
	}
	if p.TrafficPolicy.LoadBalancer != waypointapi.LoadBalancer_LB_RANDOM {
		t.Fatalf("trafficPolicy from the newer rule: %v", p.TrafficPolicy.LoadBalancer)
	}
	if len(p.Subsets) != 2 || p.Subsets[0].Labels["v"] != "1" || p.Subsets[1].Name != "v2" {
		t.Fatalf("subsets %v", p.Subsets)
	}
}

func TestResilience_InvalidRulesReportedAndSkipped(t *testing.T) {
	for name, tc := range map[string]struct {
		spec DestinationRuleSpec
		msg  string
	}{
		"no host":          {DestinationRuleSpec{}, "spec.host: required"},
		"bad wildcard":     {DestinationRuleSpec{Host: "a.*.com"}, "wildcard"},
		"bad lb":           {DestinationRuleSpec{Host: "svc", TrafficPolicy: &TrafficPolicy{LoadBalancer: &LoadBalancerSettings{Simple: "FASTEST"}}}, "unknown algorithm"},
		"negative limit":   {DestinationRuleSpec{Host: "svc", TrafficPolicy: &TrafficPolicy{ConnectionPool: &ConnectionPoolSettings{HTTP: &HTTPSettings{MaxRetries: i32(-1)}}}}, "maxRetries: -1"},
		"bad duration":     {DestinationRuleSpec{Host: "svc", TrafficPolicy: &TrafficPolicy{OutlierDetection: &OutlierDetection{Interval: "soon"}}}, "interval"},
		"tiny duration":    {DestinationRuleSpec{Host: "svc", TrafficPolicy: &TrafficPolicy{ConnectionPool: &ConnectionPoolSettings{TCP: &TCPSettings{ConnectTimeout: "10us"}}}}, "under 1ms"},
		"percent":          {DestinationRuleSpec{Host: "svc", TrafficPolicy: &TrafficPolicy{OutlierDetection: &OutlierDetection{MaxEjectionPercent: 101}}}, "maxEjectionPercent"},
		"duplicate subset": {DestinationRuleSpec{Host: "svc", Subsets: []Subset{{Name: "a"}, {Name: "a"}}}, "duplicate"},
		"unnamed subset":   {DestinationRuleSpec{Host: "svc", Subsets: []Subset{{}}}, "subsets[0].name"},
	} {
		t.Run(name, func(t *testing.T) {
			r := DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "r"}, Spec: tc.spec}
			res := Resilience(ResilienceInput{DestinationRules: []DestinationRule{r}, Services: []*corev1.Service{resSvc("ns", "svc")}})
			if len(res.Policies) != 0 {
				t.Fatal("an invalid rule was applied")
			}
			c := res.DestinationRuleStatus["ns/r"]
			if len(c) != 1 || c[0].Reason != ReasonResilienceInvalid || !strings.Contains(c[0].Message, tc.msg) {
				t.Fatalf("condition %+v, want Invalid mentioning %q", c, tc.msg)
			}
		})
	}
	sel := dr("ns", "sidecar", "svc", 1, nil)
	sel.Spec.WorkloadSelector = &WorkloadSelector{MatchLabels: map[string]string{"app": "a"}}
	res := Resilience(ResilienceInput{DestinationRules: []DestinationRule{sel}, Services: []*corev1.Service{resSvc("ns", "svc")}})
	if len(res.Policies) != 0 || res.DestinationRuleStatus["ns/sidecar"][0].Reason != ReasonNotApplicable {
		t.Fatal("a workloadSelector rule was applied at the waypoint")
	}
}

func TestResilience_LocalTrafficPolicy(t *testing.T) {
	p := decodeYAML[LocalTrafficPolicy](t, `
apiVersion: policy.ambientmesh.io/v1alpha1
kind: LocalTrafficPolicy
metadata: {name: limits, namespace: ns, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  targetRefs: [{group: "", kind: Service, name: svc}, {group: "", kind: Service, name: gone}]
  rateLimit: {requestsPerUnit: 100, unit: second}
  fault:
    delay: {fixedDelay: 2s, percentage: {value: 10}}
    abort: {httpStatus: 503, percentage: {value: 20}}
`)
	younger := LocalTrafficPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "younger", CreationTimestamp: metav1.NewTime(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC))},
		Spec: LocalTrafficPolicySpec{TargetRefs: []PolicyTargetReference{{Kind: "Service", Name: "svc"}},
			RateLimit: &LocalRateLimit{RequestsPerUnit: 1, Unit: "minute"}},
	}
	res := Resilience(ResilienceInput{LocalTrafficPolicies: []LocalTrafficPolicy{younger, p}, Services: []*corev1.Service{resSvc("ns", "svc")}})
	want := []*waypointapi.ServiceResilience{{
		ServiceKey:    "ns/svc.ns.svc.cluster.local",
		TrafficPolicy: defaults(),
		LocalPolicy: &waypointapi.LocalTrafficPolicy{
			Name:      "ns/limits",
			RateLimit: &waypointapi.RateLimit{RequestsPerUnit: 100, Unit: dur(time.Second), Burst: 100},
			Fault: &waypointapi.FaultInjection{
				Delay: &waypointapi.FaultInjection_Delay{FixedDelay: dur(2 * time.Second), Percentage: 10},
				Abort: &waypointapi.FaultInjection_Abort{HttpStatus: 503, Percentage: 20},
			},
		},
	}}
	if d := cmp.Diff(want, res.Policies, protocmp.Transform()); d != "" {
		t.Fatalf("(-want +got):\n%s", d)
	}
	if c := res.LocalTrafficPolicyStatus["ns/limits"][0]; c.Reason != ReasonTargetNotFound || !strings.Contains(c.Message, "gone") {
		t.Errorf("limits: %+v, want TargetNotFound for gone", c)
	}
	if c := res.LocalTrafficPolicyStatus["ns/younger"][0]; c.Reason != ReasonConflicted {
		t.Errorf("younger: %+v, want Conflicted", c)
	}
}

func TestResilience_InvalidLocalTrafficPolicies(t *testing.T) {
	ref := []PolicyTargetReference{{Kind: "Service", Name: "svc"}}
	for name, tc := range map[string]struct {
		spec LocalTrafficPolicySpec
		msg  string
	}{
		"no targets":   {LocalTrafficPolicySpec{RateLimit: &LocalRateLimit{RequestsPerUnit: 1, Unit: "second"}}, "targetRefs"},
		"gateway":      {LocalTrafficPolicySpec{TargetRefs: []PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "w"}}, RateLimit: &LocalRateLimit{RequestsPerUnit: 1, Unit: "second"}}, "only Services"},
		"empty":        {LocalTrafficPolicySpec{TargetRefs: ref}, "rateLimit, fault"},
		"zero rate":    {LocalTrafficPolicySpec{TargetRefs: ref, RateLimit: &LocalRateLimit{Unit: "second"}}, "requestsPerUnit"},
		"hour":         {LocalTrafficPolicySpec{TargetRefs: ref, RateLimit: &LocalRateLimit{RequestsPerUnit: 1, Unit: "hour"}}, "unit"},
		"no pct":       {LocalTrafficPolicySpec{TargetRefs: ref, Fault: &FaultInjection{Abort: &FaultAbort{HTTPStatus: 503}}}, "percentage: required"},
		"bad status":   {LocalTrafficPolicySpec{TargetRefs: ref, Fault: &FaultInjection{Abort: &FaultAbort{HTTPStatus: 99, Percentage: &Percent{Value: 1}}}}, "httpStatus"},
		"pct over 100": {LocalTrafficPolicySpec{TargetRefs: ref, Fault: &FaultInjection{Delay: &FaultDelay{FixedDelay: "1s", Percentage: &Percent{Value: 101}}}}, "0–100"},
		"no delay":     {LocalTrafficPolicySpec{TargetRefs: ref, Fault: &FaultInjection{Delay: &FaultDelay{Percentage: &Percent{Value: 1}}}}, "fixedDelay: required"},
	} {
		t.Run(name, func(t *testing.T) {
			p := LocalTrafficPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}, Spec: tc.spec}
			res := Resilience(ResilienceInput{LocalTrafficPolicies: []LocalTrafficPolicy{p}, Services: []*corev1.Service{resSvc("ns", "svc")}})
			if len(res.Policies) != 0 {
				t.Fatal("an invalid policy was applied")
			}
			if c := res.LocalTrafficPolicyStatus["ns/p"]; len(c) != 1 || c[0].Reason != ReasonResilienceInvalid || !strings.Contains(c[0].Message, tc.msg) {
				t.Fatalf("condition %+v, want Invalid mentioning %q", c, tc.msg)
			}
		})
	}
}

func TestFromUnstructured_DestinationRuleVersionsAndUnknownFields(t *testing.T) {
	for _, v := range []string{"v1", "v1beta1", "v1alpha3"} {
		obj := map[string]any{"apiVersion": "networking.istio.io/" + v, "kind": "DestinationRule", "spec": map[string]any{"host": "a"}}
		if _, err := FromUnstructured[DestinationRule](obj); err != nil {
			t.Errorf("%s: %v", v, err)
		}
	}
	obj := map[string]any{"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "spec": map[string]any{"host": "a", "hots": "b"}}
	if _, err := FromUnstructured[DestinationRule](obj); err == nil {
		t.Error("a misspelt field decoded")
	}
	obj = map[string]any{"apiVersion": "security.istio.io/v1", "kind": "DestinationRule", "spec": map[string]any{"host": "a"}}
	if _, err := FromUnstructured[DestinationRule](obj); err == nil {
		t.Error("the wrong group decoded")
	}
}
