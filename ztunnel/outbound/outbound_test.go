package outbound

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

// first always picks the first eligible endpoint.
type first struct{}

func (first) IntN(int) int { return 0 }

func workload(uid, addr string, enrolled bool, svcPorts map[string]uint32) *workloadapi.Workload {
	w := &workloadapi.Workload{
		Uid: uid, Name: uid, Namespace: "shop", ServiceAccount: "sa-" + uid,
		Addresses: [][]byte{ip(addr)}, Status: workloadapi.WorkloadStatus_HEALTHY,
	}
	if enrolled {
		w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	}
	for key, target := range svcPorts {
		if w.Services == nil {
			w.Services = map[string]*workloadapi.PortList{}
		}
		w.Services[key] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: target}}}
	}
	return w
}

func view(t *testing.T) *state.View {
	t.Helper()
	backend := &workloadapi.Service{
		Name: "backend", Namespace: "shop", Hostname: "backend.shop.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.10")}, {Address: ip("fd00:10:96::10")}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}},
	}
	backend1 := workload("backend-1", "10.244.2.7", true, map[string]uint32{"shop/backend.shop.svc.cluster.local": 8080})
	backend1.Addresses = append(backend1.Addresses, ip("fd00:10:244:2::7")) // dual-stack
	legacy := &workloadapi.Service{
		Name: "legacy", Namespace: "shop", Hostname: "legacy.shop.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.20")}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 9090}},
	}
	empty := &workloadapi.Service{
		Name: "empty", Namespace: "shop", Hostname: "empty.shop.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.30")}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 80}},
	}
	v, err := state.NewView(state.Snapshot{
		Workloads: []*workloadapi.Workload{
			backend1,
			workload("legacy-1", "10.244.2.8", false, map[string]uint32{"shop/legacy.shop.svc.cluster.local": 9090}),
		},
		Services: []*workloadapi.Service{backend, legacy, empty},
	}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestPlan(t *testing.T) {
	v := view(t)
	for _, tc := range []struct {
		name       string
		dst        string
		kind       Kind
		target     string
		tunnel     string
		identity   string
		service    string
		wantErr    bool
		errIsRoute bool
	}{
		{name: "service VIP of an enrolled workload tunnels to its pod", dst: "10.96.0.10:80", kind: Tunnel,
			target: "10.244.2.7:8080", tunnel: "10.244.2.7:15008",
			identity: "spiffe://cluster.local/ns/shop/sa/sa-backend-1", service: "backend"},
		{name: "a dual-stack service's IPv6 VIP tunnels to the pod's IPv6 address", dst: "[fd00:10:96::10]:80", kind: Tunnel,
			target: "[fd00:10:244:2::7]:8080", tunnel: "[fd00:10:244:2::7]:15008",
			identity: "spiffe://cluster.local/ns/shop/sa/sa-backend-1", service: "backend"},
		{name: "enrolled pod IPv6 address tunnels there", dst: "[fd00:10:244:2::7]:8080", kind: Tunnel,
			target: "[fd00:10:244:2::7]:8080", tunnel: "[fd00:10:244:2::7]:15008",
			identity: "spiffe://cluster.local/ns/shop/sa/sa-backend-1"},
		{name: "enrolled pod IP tunnels with the original port", dst: "10.244.2.7:8080", kind: Tunnel,
			target: "10.244.2.7:8080", tunnel: "10.244.2.7:15008",
			identity: "spiffe://cluster.local/ns/shop/sa/sa-backend-1"},
		{name: "service of a workload outside ambient goes direct", dst: "10.96.0.20:80", kind: Direct,
			target: "10.244.2.8:9090", service: "legacy"},
		{name: "pod outside ambient goes direct", dst: "10.244.2.8:9090", kind: Direct, target: "10.244.2.8:9090"},
		{name: "unknown address passes through", dst: "10.244.9.9:443", kind: Passthrough, target: "10.244.9.9:443"},
		{name: "service port not exposed is refused", dst: "10.96.0.10:81", wantErr: true},
		{name: "service without endpoints is refused", dst: "10.96.0.30:80", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, err := Plan(v, "", netip.MustParseAddrPort(tc.dst), first{})
			if tc.wantErr {
				if !errors.Is(err, ErrNoRoute) {
					t.Fatalf("err = %v, want ErrNoRoute", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rt.Kind != tc.kind || rt.Target.String() != tc.target {
				t.Fatalf("route = %v to %s, want %v to %s", rt.Kind, rt.Target, tc.kind, tc.target)
			}
			if tc.tunnel != "" && (rt.TunnelAddr.String() != tc.tunnel || rt.Identity.String() != tc.identity) {
				t.Fatalf("tunnel = %s as %s, want %s as %s", rt.TunnelAddr, rt.Identity, tc.tunnel, tc.identity)
			}
			if rt.Service.GetName() != tc.service {
				t.Fatalf("service = %q, want %q", rt.Service.GetName(), tc.service)
			}
		})
	}
}

func TestWorkloadID(t *testing.T) {
	for _, tc := range []struct {
		w    *workloadapi.Workload
		want string
		err  bool
	}{
		{&workloadapi.Workload{Namespace: "shop", ServiceAccount: "web"}, "spiffe://cluster.local/ns/shop/sa/web", false},
		{&workloadapi.Workload{Namespace: "shop"}, "spiffe://cluster.local/ns/shop/sa/default", false},
		{&workloadapi.Workload{Namespace: "shop", ServiceAccount: "web", TrustDomain: "corp.example"}, "spiffe://corp.example/ns/shop/sa/web", false},
		{&workloadapi.Workload{Namespace: "Bad_NS", ServiceAccount: "web"}, "", true},
		{&workloadapi.Workload{Namespace: "shop", ServiceAccount: "web", TrustDomain: "not a domain"}, "", true},
	} {
		id, err := WorkloadID(tc.w)
		if (err != nil) != tc.err || (err == nil && id.String() != tc.want) {
			t.Errorf("WorkloadID(%v) = %v, %v; want %s (err %v)", tc.w, id, err, tc.want, tc.err)
		}
	}
}

// waypointView: service "reviews" (VIP 10.96.0.40) bound to the waypoint
// Service shop/waypoint (VIP 10.96.0.50, port 15008) by hostname, service
// "ratings" (10.96.0.60) bound by address; pod reviews-1 bound as a
// workload; the waypoint's pod waypoint-1.
func waypointView(t *testing.T, waypointPods ...*workloadapi.Workload) *state.View {
	t.Helper()
	byHost := &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Hostname{
		Hostname: &workloadapi.NamespacedHostname{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}}}
	byAddr := &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Address{
		Address: &workloadapi.NetworkAddress{Address: ip("10.96.0.50")}}}
	missing := &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Hostname{
		Hostname: &workloadapi.NamespacedHostname{Namespace: "shop", Hostname: "gone.shop.svc.cluster.local"}}}
	svc := func(name, vip string, wp *workloadapi.GatewayAddress) *workloadapi.Service {
		return &workloadapi.Service{
			Name: name, Namespace: "shop", Hostname: name + ".shop.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: ip(vip)}},
			Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}, Waypoint: wp,
		}
	}
	waypointSvc := &workloadapi.Service{
		Name: "waypoint", Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.50")}},
		Ports:     []*workloadapi.Port{{ServicePort: 15008, TargetPort: 15008}},
	}
	reviews := workload("reviews-1", "10.244.2.20", true, map[string]uint32{"shop/reviews.shop.svc.cluster.local": 8080})
	reviews.Waypoint = byHost
	orphan := workload("orphan-1", "10.244.2.22", true, map[string]uint32{"shop/orphan.shop.svc.cluster.local": 8080})
	orphan.Waypoint = missing
	workloads := []*workloadapi.Workload{
		reviews, orphan,
		workload("ratings-1", "10.244.2.21", true, map[string]uint32{"shop/ratings.shop.svc.cluster.local": 8080}),
	}
	workloads = append(workloads, waypointPods...)
	v, err := state.NewView(state.Snapshot{
		Workloads: workloads,
		Services:  []*workloadapi.Service{svc("reviews", "10.96.0.40", byHost), svc("ratings", "10.96.0.60", byAddr), svc("orphan", "10.96.0.70", missing), waypointSvc},
	}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func waypointPod() *workloadapi.Workload {
	w := workload("waypoint-1", "10.244.1.9", false, map[string]uint32{"shop/waypoint.shop.svc.cluster.local": 15008})
	w.Services["shop/waypoint.shop.svc.cluster.local"].Ports[0].ServicePort = 15008
	w.ServiceAccount = "waypoint"
	return w
}

// TestPlan_Waypoint: a destination bound to a waypoint is tunnelled to a
// waypoint pod, as its identity, with the original destination as the
// :authority; an unresolvable waypoint refuses rather than bypass it.
func TestPlan_Waypoint(t *testing.T) {
	const wpID = "spiffe://cluster.local/ns/shop/sa/waypoint"
	v := waypointView(t, waypointPod())
	for _, tc := range []struct {
		name, dst, workload, service string
	}{
		{name: "service bound by hostname", dst: "10.96.0.40:80", service: "reviews"},
		{name: "service bound by address", dst: "10.96.0.60:80", service: "ratings"},
		{name: "pod bound as a workload", dst: "10.244.2.20:8080", workload: "reviews-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, err := Plan(v, "", netip.MustParseAddrPort(tc.dst), first{})
			if err != nil {
				t.Fatal(err)
			}
			if rt.Kind != Tunnel || rt.TunnelAddr.String() != "10.244.1.9:15008" || rt.Identity.String() != wpID {
				t.Fatalf("route %v via %s as %s, want a tunnel to the waypoint pod 10.244.1.9:15008 as %s", rt.Kind, rt.TunnelAddr, rt.Identity, wpID)
			}
			if rt.Target.String() != tc.dst || rt.Waypoint.GetUid() != "waypoint-1" {
				t.Fatalf("authority %s via %s, want the original destination %s via waypoint-1", rt.Target, rt.Waypoint.GetUid(), tc.dst)
			}
			if rt.Service.GetName() != tc.service || rt.Workload.GetUid() != tc.workload {
				t.Fatalf("destination = service %q workload %q, want %q %q", rt.Service.GetName(), rt.Workload.GetUid(), tc.service, tc.workload)
			}
		})
	}
	// A pod of a service whose waypoint is bound only to the service is
	// reached directly when addressed by its IP.
	if rt, err := Plan(v, "", netip.MustParseAddrPort("10.244.2.21:8080"), first{}); err != nil || rt.Waypoint != nil || rt.TunnelAddr.String() != "10.244.2.21:15008" {
		t.Errorf("ratings pod by IP = %+v, %v; want a tunnel straight to it", rt, err)
	}

	for _, tc := range []struct {
		name string
		v    *state.View
		dst  string
	}{
		{"waypoint service unknown", v, "10.96.0.70:80"},
		{"waypoint service unknown, pod addressed", v, "10.244.2.22:8080"},
		{"waypoint without pods", waypointView(t), "10.96.0.40:80"},
	} {
		if rt, err := Plan(tc.v, "", netip.MustParseAddrPort(tc.dst), first{}); !errors.Is(err, ErrNoRoute) {
			t.Errorf("%s: route %+v, err %v; want ErrNoRoute (never bypass the waypoint)", tc.name, rt, err)
		}
	}
}

// TestPlan_TransportIsTheTunnelPeers: a tunnel uses the transport its peer
// asks for, the destination pod's or, through a waypoint, the waypoint
// pod's (not the destination's); unset and unknown values mean H2.
func TestPlan_TransportIsTheTunnelPeers(t *testing.T) {
	quic := workloadapi.TunnelTransport_QUIC
	h2 := workloadapi.TunnelTransport_H2
	for _, tc := range []struct {
		name      string
		backend   workloadapi.TunnelTransport
		dst, want string
		wantT     workloadapi.TunnelTransport
	}{
		{"pod asking for QUIC", quic, "10.244.2.7:8080", "10.244.2.7:15008", quic},
		{"service endpoint asking for QUIC", quic, "10.96.0.10:80", "10.244.2.7:15008", quic},
		{"pod with the default", h2, "10.244.2.7:8080", "10.244.2.7:15008", h2},
		{"value from a newer control plane", workloadapi.TunnelTransport(7), "10.244.2.7:8080", "10.244.2.7:15008", h2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backend := workload("backend-1", "10.244.2.7", true, map[string]uint32{"shop/backend.shop.svc.cluster.local": 8080})
			backend.TunnelTransport = tc.backend
			v, err := state.NewView(state.Snapshot{Workloads: []*workloadapi.Workload{backend}, Services: []*workloadapi.Service{{
				Name: "backend", Namespace: "shop", Hostname: "backend.shop.svc.cluster.local",
				Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.10")}},
				Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}},
			}}}, 1)
			if err != nil {
				t.Fatal(err)
			}
			rt, err := Plan(v, "", netip.MustParseAddrPort(tc.dst), first{})
			if err != nil {
				t.Fatal(err)
			}
			if rt.Kind != Tunnel || rt.TunnelAddr.String() != tc.want || rt.Transport != tc.wantT {
				t.Fatalf("route %v via %s over %v, want a tunnel via %s over %v", rt.Kind, rt.TunnelAddr, rt.Transport, tc.want, tc.wantT)
			}
		})
	}
	t.Run("through a waypoint, the waypoint pod's", func(t *testing.T) {
		wp := waypointPod()
		wp.TunnelTransport = quic
		rt, err := Plan(waypointView(t, wp), "", netip.MustParseAddrPort("10.96.0.40:80"), first{})
		if err != nil || rt.Waypoint == nil || rt.Transport != quic {
			t.Fatalf("route %+v, %v; want a QUIC tunnel to the waypoint", rt, err)
		}
		rt, err = Plan(waypointView(t, waypointPod()), "", netip.MustParseAddrPort("10.96.0.40:80"), first{})
		if err != nil || rt.Transport != h2 {
			t.Fatalf("route %+v, %v; want H2 to a waypoint that does not ask for QUIC", rt, err)
		}
	})
	if rt, err := Plan(view(t), "", netip.MustParseAddrPort("10.244.2.8:9090"), first{}); err != nil || rt.Kind != Direct || rt.Transport != h2 {
		t.Errorf("direct route %+v, %v; want no transport", rt, err)
	}
}

// TestPlanUDP_BypassesWaypoints: a UDP flow to a destination bound to a
// waypoint goes straight to the endpoint's pod, as the endpoint's identity
// (waypoints proxy TCP only), even when the waypoint cannot be resolved;
// the rest is planned as for TCP.
func TestPlanUDP_BypassesWaypoints(t *testing.T) {
	v := waypointView(t, waypointPod())
	for _, tc := range []struct {
		name, dst, tunnel, id string
		v                     *state.View
	}{
		{"service bound by hostname", "10.96.0.40:80", "10.244.2.20:15008", "sa-reviews-1", v},
		{"service bound by address", "10.96.0.60:80", "10.244.2.21:15008", "sa-ratings-1", v},
		{"pod bound as a workload", "10.244.2.20:8080", "10.244.2.20:15008", "sa-reviews-1", v},
		{"waypoint unknown", "10.244.2.22:8080", "10.244.2.22:15008", "sa-orphan-1", v},
		{"waypoint without pods", "10.96.0.40:80", "10.244.2.20:15008", "sa-reviews-1", waypointView(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, err := PlanUDP(tc.v, "", netip.MustParseAddrPort(tc.dst), first{})
			if err != nil {
				t.Fatal(err)
			}
			if rt.Kind != Tunnel || rt.Waypoint != nil || rt.TunnelAddr.String() != tc.tunnel ||
				rt.Identity.String() != "spiffe://cluster.local/ns/shop/sa/"+tc.id {
				t.Fatalf("route %v via %s (waypoint %q) as %s; want a tunnel straight to %s as %s",
					rt.Kind, rt.TunnelAddr, rt.Waypoint.GetUid(), rt.Identity, tc.tunnel, tc.id)
			}
		})
	}
	for _, tc := range []struct {
		dst  string
		want Kind
	}{{"10.244.2.8:9090", Direct}, {"192.0.2.1:53", Passthrough}} {
		if rt, err := PlanUDP(view(t), "", netip.MustParseAddrPort(tc.dst), first{}); err != nil || rt.Kind != tc.want {
			t.Errorf("PlanUDP(%s) = %v, %v; want %v", tc.dst, rt.Kind, err, tc.want)
		}
	}
	if _, err := PlanUDP(view(t), "", netip.MustParseAddrPort("10.96.0.30:80"), first{}); !errors.Is(err, ErrNoRoute) {
		t.Errorf("service without endpoints: %v, want ErrNoRoute", err)
	}
}
