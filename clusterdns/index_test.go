package clusterdns

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestServiceFromAPI(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   v1.Service
		want Service
	}{
		{"DualStack", v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"},
			Spec: v1.ServiceSpec{ClusterIP: "10.96.0.5", ClusterIPs: []string{"10.96.0.5", "fd00::5"},
				Ports: []v1.ServicePort{{Name: "http", Port: 80}}}},
			Service{Namespace: "ns", Name: "a", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.5"), netip.MustParseAddr("fd00::5")},
				Ports: []Port{{Name: "http", Protocol: "TCP", Port: 80}}}},
		{"Headless", v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "h"},
			Spec: v1.ServiceSpec{ClusterIP: "None", PublishNotReadyAddresses: true}},
			Service{Namespace: "ns", Name: "h", Headless: true, PublishNotReady: true}},
		{"ExternalName", v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "e"},
			Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "example.com"}},
			Service{Namespace: "ns", Name: "e", ExternalName: "example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := ServiceFromAPI(&tc.in)
			if !ok {
				t.Fatal("not converted")
			}
			if d := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestSliceFromAPI(t *testing.T) {
	name, port, udp, notReady := "dns", int32(53), v1.ProtocolUDP, false
	host := "Pod-0"
	in := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "s-1", Labels: map[string]string{discoveryv1.LabelServiceName: "s"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &udp}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, Hostname: &host},                                              // ready unset: ready
			{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady}}, // not ready
		},
	}
	got, ok := SliceFromAPI(in)
	want := Slice{Namespace: "ns", Name: "s-1", Service: "s", Ports: []Port{{Name: "dns", Protocol: "UDP", Port: 53}},
		Endpoints: []Endpoint{
			{IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Hostname: "pod-0", Ready: true},
			{IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}},
		}}
	if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); !ok || d != "" {
		t.Errorf("ok %v (-want +got):\n%s", ok, d)
	}
	in.Labels = nil
	if _, ok := SliceFromAPI(in); ok {
		t.Error("a slice without a service converted")
	}
}
