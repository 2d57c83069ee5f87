package controller

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
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

func TestStripObject_ReferenceGrantKeepsNamespaceAndSpec(t *testing.T) {
	spec := gatewayv1.ReferenceGrantSpec{
		From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: "shop"}},
		To:   []gatewayv1.ReferenceGrantTo{{Kind: "Service"}},
	}
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: "shop-routes", Namespace: "other", Labels: map[string]string{"team": "ratings"},
			Annotations:   map[string]string{corev1.LastAppliedConfigAnnotation: "{}", "note": "x"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}
	}
	want := metav1.ObjectMeta{Name: "shop-routes", Namespace: "other"}
	v1 := strip(t, &gatewayv1.ReferenceGrant{ObjectMeta: meta(), Spec: spec})
	if d := cmp.Diff(&gatewayv1.ReferenceGrant{ObjectMeta: want, Spec: spec}, v1); d != "" {
		t.Errorf("stripped v1 grant (-want +got):\n%s", d)
	}
	v1beta1 := strip(t, &gatewayv1beta1.ReferenceGrant{ObjectMeta: meta(), Spec: spec})
	if d := cmp.Diff(&gatewayv1beta1.ReferenceGrant{ObjectMeta: want, Spec: spec}, v1beta1); d != "" {
		t.Errorf("stripped v1beta1 grant (-want +got):\n%s", d)
	}
}

func TestListReferenceGrants_V1AndV1beta1AsV1(t *testing.T) {
	if got := listReferenceGrants(nil); got != nil {
		t.Errorf("without the CRD: %v, want nil", got)
	}
	spec := gatewayv1.ReferenceGrantSpec{
		From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: "shop"}},
		To:   []gatewayv1.ReferenceGrantTo{{Kind: "Service"}},
	}
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, o := range []any{
		&gatewayv1.ReferenceGrant{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "other"}, Spec: spec},
		&gatewayv1beta1.ReferenceGrant{ObjectMeta: metav1.ObjectMeta{Name: "b", Namespace: "other"}, Spec: spec},
	} {
		if err := idx.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	got := listReferenceGrants(cache.NewGenericLister(idx, ReferenceGrants.GroupResource()))
	if len(got) != 2 {
		t.Fatalf("listed %d grants, want 2", len(got))
	}
	for _, g := range got {
		if g.Namespace != "other" || !cmp.Equal(g.Spec, spec) {
			t.Errorf("grant %s/%s spec %+v, want %+v", g.Namespace, g.Name, g.Spec, spec)
		}
	}
}
