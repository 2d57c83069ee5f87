package proxy

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/waypoint/resilience"
)

const reviews = "shop/reviews.shop.svc.cluster.local"

// policyOf is a ServiceResilience for reviews with a rate limit of rps per
// second, outlier detection after c5xx errors and a request limit.
func policyOf(rps, c5xx, maxRequests uint32) *waypointapi.ServiceResilience {
	return &waypointapi.ServiceResilience{ServiceKey: reviews,
		TrafficPolicy: &waypointapi.TrafficPolicy{LoadBalancer: waypointapi.LoadBalancer_LB_ROUND_ROBIN,
			ConnectionPool:   &waypointapi.ConnectionPool{Http2MaxRequests: maxRequests},
			OutlierDetection: &waypointapi.OutlierDetection{Consecutive_5XxErrors: c5xx, BaseEjectionTime: durationpb.New(time.Minute)}},
		LocalPolicy: &waypointapi.LocalTrafficPolicy{RateLimit: &waypointapi.RateLimit{RequestsPerUnit: rps, Unit: durationpb.New(time.Second)}}}
}

func mustCompile(t *testing.T, c L7Config) *Compiled {
	t.Helper()
	out, errs := Compile(c)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return out
}

func TestReconcile_KeepsTheStateOfUnchangedPartsOnly(t *testing.T) {
	now := func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }
	live := func(string) bool { return true }
	k := destKey{svc: reviews, port: 9080}
	c1 := mustCompile(t, L7Config{Resilience: []*waypointapi.ServiceResilience{policyOf(10, 5, 100)}})
	t1 := reconcile(&resTable{}, c1, live, now, nil)
	t1.clusters = map[destKey]*cluster{k: newCluster(c1.policy(reviews), now, nil)}
	b1, cl1 := t1.buckets[reviews], t1.clusters[k]
	if b1 == nil || cl1.outlier == nil || cl1.picker.Policy() != resilience.RoundRobin {
		t.Fatalf("state of the first configuration: bucket %v, cluster %+v", b1, cl1)
	}

	// Unrelated routes, the same policy (a fresh but equal proto): all kept.
	c2 := mustCompile(t, L7Config{Routes: []*waypointapi.ServiceRoutes{{ServiceKey: "shop/other"}},
		Resilience: []*waypointapi.ServiceResilience{policyOf(10, 5, 100)}})
	t2 := reconcile(t1, c2, live, now, nil)
	cl2 := t2.clusters[k]
	if t2.buckets[reviews] != b1 || cl2.pool != cl1.pool || cl2.outlier != cl1.outlier || cl2.picker != cl1.picker || cl2.eps != cl1.eps {
		t.Fatal("an unrelated push replaced state")
	}
	if cl2.pol != c2.policy(reviews) {
		t.Fatal("the cluster does not follow the new configuration's policy")
	}

	// Each changed part restarts only its own state.
	for _, tc := range []struct {
		name                      string
		p                         *waypointapi.ServiceResilience
		bucket, pool, outlierSame bool
	}{
		{"rate limit", policyOf(11, 5, 100), false, true, true},
		{"outlier detection", policyOf(10, 6, 100), true, true, false},
		{"connection pool", policyOf(10, 5, 101), true, false, true},
	} {
		c := mustCompile(t, L7Config{Resilience: []*waypointapi.ServiceResilience{tc.p}})
		next := reconcile(t2, c, live, now, nil)
		if (next.buckets[reviews] == b1) != tc.bucket || (next.clusters[k].pool == cl1.pool) != tc.pool ||
			(next.clusters[k].outlier == cl1.outlier) != tc.outlierSame || next.clusters[k].eps != cl1.eps {
			t.Errorf("%s changed: bucket kept %v, pool kept %v, outlier kept %v; want %v %v %v", tc.name,
				next.buckets[reviews] == b1, next.clusters[k].pool == cl1.pool, next.clusters[k].outlier == cl1.outlier,
				tc.bucket, tc.pool, tc.outlierSame)
		}
	}

	// Without a policy the service has Istio's defaults; a service gone
	// from the mesh loses its state.
	none := reconcile(t2, mustCompile(t, L7Config{}), live, now, nil)
	if cl := none.clusters[k]; len(none.buckets) != 0 || cl.outlier != nil || cl.picker.Policy() != resilience.LeastRequest || cl.eps != cl1.eps {
		t.Fatalf("without a policy: buckets %v, cluster %+v", none.buckets, cl)
	}
	if gone := reconcile(t2, c2, func(string) bool { return false }, now, nil); len(gone.clusters) != 0 {
		t.Fatal("the cluster of a service that left the mesh was kept")
	}
}

func TestCompile_RefusesResiliencePoliciesTheWaypointCannotEnforce(t *testing.T) {
	ok := policyOf(10, 5, 100)
	fault := func(f *waypointapi.FaultInjection) *waypointapi.ServiceResilience {
		return &waypointapi.ServiceResilience{ServiceKey: reviews, LocalPolicy: &waypointapi.LocalTrafficPolicy{Fault: f}}
	}
	for _, tc := range []struct {
		p    *waypointapi.ServiceResilience
		want string
	}{
		{&waypointapi.ServiceResilience{}, "not namespace/hostname"},
		{policyOf(0, 5, 100), "admits nothing"},
		{fault(&waypointapi.FaultInjection{Abort: &waypointapi.FaultInjection_Abort{HttpStatus: 99, Percentage: 10}}), "out of range"},
		{fault(&waypointapi.FaultInjection{Abort: &waypointapi.FaultInjection_Abort{HttpStatus: 503, Percentage: 101}}), "out of range"},
		{fault(&waypointapi.FaultInjection{Delay: &waypointapi.FaultInjection_Delay{FixedDelay: durationpb.New(-time.Second), Percentage: 1}}), "out of range"},
		{&waypointapi.ServiceResilience{ServiceKey: reviews, TrafficPolicy: &waypointapi.TrafficPolicy{
			OutlierDetection: &waypointapi.OutlierDetection{MaxEjectionPercent: 101}}}, "over 100"},
	} {
		c, errs := Compile(L7Config{Resilience: []*waypointapi.ServiceResilience{tc.p, ok}})
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
			t.Errorf("Compile(%v) errors %v, want one mentioning %q", tc.p, errs, tc.want)
			continue
		}
		if tc.p.GetServiceKey() == reviews && c.policy(reviews).src != ok {
			t.Errorf("the refused policy was not left out for the next one of %s", reviews)
		}
	}
	if _, errs := Compile(L7Config{Resilience: []*waypointapi.ServiceResilience{ok, policyOf(1, 1, 1)}}); len(errs) != 1 || !strings.Contains(errs[0].Error(), "duplicate") {
		t.Errorf("duplicate policies: %v", errs)
	}
}

func TestAddFlag_KeepsEnvoysOrder(t *testing.T) {
	for _, tc := range []struct{ flags, add, want string }{
		{flagNone, flagDelayInjected, "DI"},
		{"", flagOverflow, "UO"},
		{flagFaultInjected, flagDelayInjected, "DI,FI"},
		{flagTimeout, flagDelayInjected, "UT,DI"},
		{flagConnFailure, flagOverflow, "UF,UO"},
		{flagRetriesExceeded, flagDelayInjected, "DI,URX"},
		{"DI", "DI", "DI"},
		{"XX", flagDelayInjected, "DI,XX"},
	} {
		if got := addFlag(tc.flags, tc.add); got != tc.want {
			t.Errorf("addFlag(%q, %q) = %q, want %q", tc.flags, tc.add, got, tc.want)
		}
	}
}
