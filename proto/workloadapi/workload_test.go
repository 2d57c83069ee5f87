package workloadapi

import (
	"bytes"
	"encoding/hex"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// roundTrip marshals m, unmarshals the bytes into a fresh message of the same
// type and fails the test unless the two are equal.
func roundTrip[M proto.Message](t *testing.T, m M) M {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	got := m.ProtoReflect().New().Interface().(M)
	if err := proto.Unmarshal(b, got); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	if diff := cmp.Diff(m, got, protocmp.Transform()); diff != "" {
		t.Fatalf("round trip changed the message (-sent +got):\n%s", diff)
	}
	return got
}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func TestWorkload_RoundTripKeepsEveryKindOfField(t *testing.T) {
	ext, err := anypb.New(wrapperspb.String("opaque"))
	if err != nil {
		t.Fatal(err)
	}
	w := &Workload{
		Uid:            "cluster1//Pod/shop/reviews-v1-abc",
		Name:           "reviews-v1-abc",
		Namespace:      "shop",
		Addresses:      [][]byte{ip("10.244.1.7"), ip("fd00::7")},
		Network:        "net1",
		TunnelProtocol: TunnelProtocol_HBONE,
		TrustDomain:    "cluster.local",
		ServiceAccount: "reviews",
		Waypoint: &GatewayAddress{
			Destination: &GatewayAddress_Hostname{Hostname: &NamespacedHostname{
				Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local",
			}},
			HboneMtlsPort: 15008,
		},
		NetworkGateway: &GatewayAddress{
			Destination: &GatewayAddress_Address{Address: &NetworkAddress{
				Network: "net1", Address: ip("192.0.2.1"), Length: proto.Uint32(32),
			}},
			HboneMtlsPort: 15008,
		},
		Node:              "node-a",
		CanonicalName:     "reviews",
		CanonicalRevision: "v1",
		WorkloadType:      WorkloadType_POD,
		WorkloadName:      "reviews-v1",
		ApplicationTunnel: &ApplicationTunnel{Protocol: ApplicationTunnel_PROXY, Port: 15088},
		Services: map[string]*PortList{
			"shop/reviews.shop.svc.cluster.local": {Ports: []*Port{{ServicePort: 9080, TargetPort: 9080, AppProtocol: AppProtocol_HTTP11}}},
		},
		AuthorizationPolicies: []string{"shop/allow-productpage"},
		Status:                WorkloadStatus_UNHEALTHY,
		ClusterId:             "cluster1",
		Locality:              &Locality{Region: "eu", Zone: "eu-1a", Subzone: "rack3"},
		NetworkMode:           NetworkMode_HOST_NETWORK,
		Extensions:            []*Extension{{Name: "ours", Config: ext}},
		Capacity:              wrapperspb.UInt32(3),
	}
	got := roundTrip(t, &Address{Type: &Address_Workload{Workload: w}})
	if got.GetWorkload().GetUid() != w.Uid || got.GetService() != nil {
		t.Fatalf("oneof lost: got %v", prototext.Format(got))
	}
}

func TestAddress_ServiceRoundTrip(t *testing.T) {
	s := &Service{
		Name:      "reviews",
		Namespace: "shop",
		Hostname:  "reviews.shop.svc.cluster.local",
		Addresses: []*NetworkAddress{{Network: "net1", Address: ip("10.96.0.10")}},
		Ports:     []*Port{{ServicePort: 9080, TargetPort: 9080, AppProtocol: AppProtocol_HTTP2}},
		Waypoint: &GatewayAddress{
			Destination:   &GatewayAddress_Address{Address: &NetworkAddress{Address: ip("10.96.0.20")}},
			HboneMtlsPort: 15008,
		},
		LoadBalancing: &LoadBalancing{
			RoutingPreference: []LoadBalancing_Scope{LoadBalancing_NETWORK, LoadBalancing_REGION},
			Mode:              LoadBalancing_FAILOVER,
			HealthPolicy:      LoadBalancing_ALLOW_ALL,
		},
		IpFamilies:         IPFamilies_DUAL,
		Canonical:          true,
		IngressUseWaypoint: true,
		WeightedWaypoints: []*WeightedWaypoint{{
			Destination: &GatewayAddress{Destination: &GatewayAddress_Address{Address: &NetworkAddress{Address: ip("10.96.0.21")}}},
			Weight:      10,
		}},
		Visibility: Service_NAMESPACE,
	}
	got := roundTrip(t, &Address{Type: &Address_Service{Service: s}})
	if got.GetService().GetHostname() != s.Hostname || got.GetWorkload() != nil {
		t.Fatalf("oneof lost: got %v", prototext.Format(got))
	}
}

// TestAddress_EncodesWithIstioFieldNumbers pins a few encodings byte for
// byte, worked out by hand from Istio's field numbers, so a renumbering shows
// up here as well as in tools/wirecompat.
func TestAddress_EncodesWithIstioFieldNumbers(t *testing.T) {
	tests := []struct {
		name string
		msg  proto.Message
		want string // hex
	}{
		// Address.workload = 1 (0x0a), Workload.uid = 20 (tag 0xa2 0x01).
		{"workload uid", &Address{Type: &Address_Workload{Workload: &Workload{Uid: "u"}}}, "0a04a2010175"},
		// Address.service = 2 (0x12), Service.name = 1 (0x0a).
		{"service name", &Address{Type: &Address_Service{Service: &Service{Name: "s"}}}, "12030a0173"},
		// NetworkAddress.length is proto3 optional: an explicit 0 is sent (field 3, 0x18).
		{"explicit zero prefix length", &NetworkAddress{Length: proto.Uint32(0)}, "1800"},
		{"absent prefix length", &NetworkAddress{}, ""},
		// Workload.capacity = 27 (tag 0xda 0x01) wraps UInt32Value.value = 1 (0x08).
		{"capacity wrapper", &Workload{Capacity: wrapperspb.UInt32(2)}, "da01020802"},
		// Our extension Workload.tunnel_transport = 1000 (tag 0xc0 0x3e).
		// H2, the default, is not sent: an H2 workload encodes as Istio's.
		{"tunnel transport QUIC", &Workload{TunnelTransport: TunnelTransport_QUIC}, "c03e01"},
		{"tunnel transport H2 is not sent", &Workload{TunnelTransport: TunnelTransport_H2}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := proto.MarshalOptions{Deterministic: true}.Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := hex.DecodeString(tt.want)
			if !bytes.Equal(got, want) {
				t.Errorf("encoding = %x, want %s", got, tt.want)
			}
		})
	}
}

func TestAddress_TypeURLIsIstios(t *testing.T) {
	a, err := anypb.New(&Address{})
	if err != nil {
		t.Fatal(err)
	}
	if want := "type.googleapis.com/istio.workload.Address"; a.GetTypeUrl() != want {
		t.Errorf("type URL = %q, want %q", a.GetTypeUrl(), want)
	}
}
