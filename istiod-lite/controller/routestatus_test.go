package controller

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/istiod-lite/translate"
)

func TestMergeRouteParents_OursReplacedOthersKeptTimesStable(t *testing.T) {
	svc := gatewayv1.ParentReference{Name: "reviews"}
	other := gatewayv1.RouteParentStatus{ParentRef: gatewayv1.ParentReference{Name: "edge"}, ControllerName: "example.com/ingress",
		Conditions: []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue}}}
	want := []gatewayv1.RouteParentStatus{{ParentRef: svc, ControllerName: translate.ControllerName,
		Conditions: []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", ObservedGeneration: 1}}}}
	t1 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	t2 := metav1.NewTime(t1.Add(time.Hour))

	first, changed := mergeRouteParents([]gatewayv1.RouteParentStatus{other}, want, t1)
	if !changed || len(first) != 2 || first[0].ControllerName != "example.com/ingress" {
		t.Fatalf("first merge = %+v (changed %v), want the other controller's entry kept and ours added", first, changed)
	}
	if got := first[1].Conditions[0].LastTransitionTime; !got.Equal(&t1) {
		t.Errorf("new condition's transition time %v, want %v", got, t1)
	}
	// The same status again: nothing to write (no status-write loop).
	if _, changed := mergeRouteParents(first, want, t2); changed {
		t.Error("unchanged status reported as changed")
	}
	// A new generation with the same status keeps the transition time.
	want[0].Conditions[0].ObservedGeneration = 2
	next, changed := mergeRouteParents(first, want, t2)
	if !changed || !next[1].Conditions[0].LastTransitionTime.Equal(&t1) {
		t.Errorf("generation bump: changed %v, time %v; want changed, time kept at %v", changed, next[1].Conditions[0].LastTransitionTime, t1)
	}
	// A status flip moves it.
	want[0].Conditions[0].Status = metav1.ConditionFalse
	next, _ = mergeRouteParents(first, want, t2)
	if !next[1].Conditions[0].LastTransitionTime.Equal(&t2) {
		t.Errorf("status flip kept the old transition time %v", next[1].Conditions[0].LastTransitionTime)
	}
	// A parent we no longer serve is dropped; others stay.
	next, changed = mergeRouteParents(first, nil, t2)
	if !changed || len(next) != 1 || next[0].ControllerName != "example.com/ingress" {
		t.Errorf("route detached: %+v (changed %v), want only the other controller's entry", next, changed)
	}
}
