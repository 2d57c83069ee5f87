package controller

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func strip[T any](t *testing.T, o T) T {
	t.Helper()
	out, err := stripObject(o)
	if err != nil {
		t.Fatal(err)
	}
	return out.(T)
}

func TestSameForTranslation_IgnoresNodeHeartbeatsAndSliceReadiness(t *testing.T) {
	node := func(zone string, heartbeat int64) *corev1.Node {
		return strip(t, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "n", ResourceVersion: "1", Labels: map[string]string{corev1.LabelTopologyZone: zone},
				Annotations: map[string]string{"node.alpha.kubernetes.io/ttl": "0"}},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady,
				LastHeartbeatTime: metav1.Unix(heartbeat, 0)}}},
		})
	}
	ready := func(b bool) *bool { return &b }
	slice := func(pod string, isReady bool) *discoveryv1.EndpointSlice {
		return strip(t, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "s", Labels: map[string]string{discoveryv1.LabelServiceName: "svc"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ready(isReady)},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: pod}}},
		})
	}
	tests := []struct {
		name     string
		old, cur any
		want     bool
	}{
		{"node heartbeat", node("a", 1), node("a", 2), true},
		{"node zone label", node("a", 1), node("b", 1), false},
		{"slice readiness", slice("p", true), slice("p", false), true},
		{"slice target", slice("p", true), slice("q", true), false},
		{"other types always count", &corev1.Pod{}, &corev1.Pod{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameForTranslation(tt.old, tt.cur); got != tt.want {
				t.Errorf("sameForTranslation = %v, want %v", got, tt.want)
			}
		})
	}
	if n := node("a", 1); n.Annotations != nil || len(n.Status.Conditions) != 0 {
		t.Errorf("stripped node keeps %v / %v", n.Annotations, n.Status)
	}
}
