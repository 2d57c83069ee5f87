package state

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func ports(pairs ...uint32) []*workloadapi.Port {
	var out []*workloadapi.Port
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, &workloadapi.Port{ServicePort: pairs[i], TargetPort: pairs[i+1]})
	}
	return out
}

// wl builds a healthy HBONE workload in namespace shop on node-1.
func wl(uid, addr string, svcs ...string) *workloadapi.Workload {
	w := &workloadapi.Workload{
		Uid:            uid,
		Name:           uid,
		Namespace:      "shop",
		Node:           "node-1",
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
		Services:       map[string]*workloadapi.PortList{},
	}
	if addr != "" {
		w.Addresses = [][]byte{ip(addr)}
	}
	for _, s := range svcs {
		w.Services[s] = &workloadapi.PortList{}
	}
	return w
}

func svc(host, vip string, p ...*workloadapi.Port) *workloadapi.Service {
	s := &workloadapi.Service{Name: host, Namespace: "shop", Hostname: host + ".shop.svc.cluster.local", Ports: p}
	if vip != "" {
		s.Addresses = []*workloadapi.NetworkAddress{{Address: ip(vip)}}
	}
	return s
}

func pol(ns, name string, scope security.Scope) *security.Authorization {
	return &security.Authorization{Namespace: ns, Name: name, Scope: scope}
}

func mustView(t *testing.T, snap Snapshot) *View {
	t.Helper()
	v, err := NewView(snap, 1)
	if err != nil {
		t.Fatalf("NewView: %v", err)
	}
	return v
}

const backendKey = "shop/backend.shop.svc.cluster.local"

func TestNewView_RejectsInvalidSnapshot(t *testing.T) {
	tests := []struct {
		name string
		snap Snapshot
		want string
	}{
		{"workload without uid", Snapshot{Workloads: []*workloadapi.Workload{{Name: "fe"}}}, `workload "fe" (namespace "") has no uid`},
		{"workload address of 5 bytes", Snapshot{Workloads: []*workloadapi.Workload{{Uid: "a", Addresses: [][]byte{{1, 2, 3, 4, 5}}}}}, `addresses[0] has 5 bytes`},
		{"duplicate uid", Snapshot{Workloads: []*workloadapi.Workload{wl("a", ""), wl("a", "")}}, `workload "a" given twice`},
		{"service without hostname", Snapshot{Services: []*workloadapi.Service{{Name: "x", Namespace: "shop"}}}, `has no hostname`},
		{"service bad VIP", Snapshot{Services: []*workloadapi.Service{{Hostname: "h", Addresses: []*workloadapi.NetworkAddress{{Address: []byte{1}}}}}}, `addresses[0] has 1 bytes`},
		{"duplicate service", Snapshot{Services: []*workloadapi.Service{svc("backend", ""), svc("backend", "")}}, `service "` + backendKey + `" given twice`},
		{"policy without name", Snapshot{Policies: []*security.Authorization{{Namespace: "shop"}}}, `has no name`},
		{"duplicate policy", Snapshot{Policies: []*security.Authorization{pol("shop", "p", 0), pol("shop", "p", 1)}}, `authorization "shop/p" given twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewView(tt.snap, 1)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestView_IndexesWorkloadsAndServices(t *testing.T) {
	fe := wl("fe", "10.244.1.5")
	be1 := wl("be-1", "10.244.1.6", backendKey)
	be2 := wl("be-2", "fd00::6", backendKey)
	be2.Node = "node-2"
	hostNet := wl("hostnet", "192.168.0.1", backendKey)
	hostNet.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
	remote := wl("remote", "10.244.1.5")
	remote.Network = "net-2"
	be := svc("backend", "10.96.0.10", ports(80, 8080)...)
	v := mustView(t, Snapshot{Workloads: []*workloadapi.Workload{fe, be1, be2, hostNet, remote}, Services: []*workloadapi.Service{be}})

	type lookup struct {
		name string
		got  any
		want any
	}
	for _, tt := range []lookup{
		{"by uid", v.Workload("be-1"), be1},
		{"unknown uid", v.Workload("nope"), (*workloadapi.Workload)(nil)},
		{"by IPv4", v.WorkloadByAddr("", netip.MustParseAddr("10.244.1.5")), fe},
		{"by IPv4-mapped IPv6", v.WorkloadByAddr("", netip.MustParseAddr("::ffff:10.244.1.5")), fe},
		{"by IP on other network", v.WorkloadByAddr("net-2", netip.MustParseAddr("10.244.1.5")), remote},
		{"by IPv6", v.WorkloadByAddr("", netip.MustParseAddr("fd00::6")), be2},
		{"host network not by IP", v.WorkloadByAddr("", netip.MustParseAddr("192.168.0.1")), (*workloadapi.Workload)(nil)},
		{"node-1", v.WorkloadsOnNode("node-1"), []*workloadapi.Workload{be1, fe, hostNet, remote}},
		{"node-2", v.WorkloadsOnNode("node-2"), []*workloadapi.Workload{be2}},
		{"service by name", v.Service("shop", "backend.shop.svc.cluster.local"), be},
		{"service by VIP", v.ServiceByAddr("", netip.MustParseAddr("10.96.0.10")), be},
		{"service VIP on other network", v.ServiceByAddr("net-2", netip.MustParseAddr("10.96.0.10")), (*workloadapi.Service)(nil)},
		{"endpoints", v.Endpoints(be), []*workloadapi.Workload{be1, be2, hostNet}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.got, protocmp.Transform()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestView_AddressConflictPrefersHealthyThenSmallerUID(t *testing.T) {
	sick := wl("a-old", "10.0.0.1")
	sick.Status = workloadapi.WorkloadStatus_UNHEALTHY
	healthyB, healthyC := wl("b", "10.0.0.1"), wl("c", "10.0.0.1")
	v := mustView(t, Snapshot{Workloads: []*workloadapi.Workload{healthyC, sick, healthyB}})
	if got := v.WorkloadByAddr("", netip.MustParseAddr("10.0.0.1")).GetUid(); got != "b" {
		t.Errorf("owner of 10.0.0.1 = %q, want b", got)
	}
}

func TestView_Resolve(t *testing.T) {
	be := svc("backend", "10.96.0.10", ports(80, 8080)...)
	fe := wl("fe", "10.244.1.5")
	v := mustView(t, Snapshot{Workloads: []*workloadapi.Workload{fe}, Services: []*workloadapi.Service{be}})
	ap := netip.MustParseAddrPort
	tests := []struct {
		name    string
		network string
		dst     netip.AddrPort
		want    Destination
	}{
		{"service VIP and port", "", ap("10.96.0.10:80"), Destination{Kind: ToService, Addr: ap("10.96.0.10:80"), Service: be, ServicePort: be.Ports[0]}},
		{"service VIP, port not exposed", "", ap("10.96.0.10:81"), Destination{Kind: ToService, Addr: ap("10.96.0.10:81"), Service: be}},
		{"mapped VIP", "", ap("[::ffff:10.96.0.10]:80"), Destination{Kind: ToService, Addr: ap("[::ffff:10.96.0.10]:80"), Service: be, ServicePort: be.Ports[0]}},
		{"workload IP", "", ap("10.244.1.5:9090"), Destination{Kind: ToWorkload, Addr: ap("10.244.1.5:9090"), Workload: fe}},
		{"outside the mesh", "", ap("1.1.1.1:443"), Destination{Kind: Passthrough, Addr: ap("1.1.1.1:443")}},
		{"other network", "net-2", ap("10.96.0.10:80"), Destination{Kind: Passthrough, Addr: ap("10.96.0.10:80")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := v.Resolve(tt.network, tt.dst)
			if diff := cmp.Diff(tt.want, got, protocmp.Transform(), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// fixedRand always returns the same index (clamped), to make choices visible.
type fixedRand int

func (f fixedRand) IntN(n int) int { return min(int(f), n-1) }

func TestView_PickEndpoint(t *testing.T) {
	override := wl("a-override", "10.0.0.1", backendKey)
	override.Services[backendKey] = &workloadapi.PortList{Ports: ports(80, 9090)}
	plain := wl("b-plain", "10.0.0.2", backendKey)
	sick := wl("c-sick", "10.0.0.3", backendKey)
	sick.Status = workloadapi.WorkloadStatus_UNHEALTHY
	hostnameOnly := wl("d-hostname", "", backendKey)
	hostnameOnly.Hostname = "vm.example.com"

	withTarget := svc("backend", "10.96.0.10", ports(80, 8080)...)
	namedTarget := svc("backend", "10.96.0.10", ports(80, 0)...) // target port only per workload
	allowAll := svc("backend", "10.96.0.10", ports(80, 8080)...)
	allowAll.LoadBalancing = &workloadapi.LoadBalancing{HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL}

	all := []*workloadapi.Workload{override, plain, sick, hostnameOnly}
	ap := netip.MustParseAddrPort
	tests := []struct {
		name      string
		workloads []*workloadapi.Workload
		svc       *workloadapi.Service
		port      uint16
		rand      Rand
		want      Endpoint
		wantErr   error
	}{
		{"workload mapping overrides service target", all, withTarget, 80, fixedRand(0), Endpoint{override, 9090, ap("10.0.0.1:9090")}, nil},
		{"service target port", all, withTarget, 80, fixedRand(1), Endpoint{plain, 8080, ap("10.0.0.2:8080")}, nil},
		{"unhealthy skipped", all, withTarget, 80, fixedRand(2), Endpoint{Workload: hostnameOnly, Port: 8080}, nil},
		{"ALLOW_ALL keeps unhealthy", all, allowAll, 80, fixedRand(2), Endpoint{sick, 8080, ap("10.0.0.3:8080")}, nil},
		{"named target: only workloads with a mapping", all, namedTarget, 80, fixedRand(3), Endpoint{override, 9090, ap("10.0.0.1:9090")}, nil},
		{"port not exposed", all, withTarget, 81, fixedRand(0), Endpoint{}, ErrNoSuchPort},
		{"only unhealthy", []*workloadapi.Workload{sick}, withTarget, 80, fixedRand(0), Endpoint{}, ErrNoEndpoint},
		{"no endpoints", nil, withTarget, 80, fixedRand(0), Endpoint{}, ErrNoEndpoint},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := mustView(t, Snapshot{Workloads: tt.workloads, Services: []*workloadapi.Service{tt.svc}})
			got, err := v.PickEndpoint(tt.svc, tt.port, tt.rand)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform(), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestView_PickEndpointSpreadsOverHealthyEndpoints(t *testing.T) {
	a, b := wl("a", "10.0.0.1", backendKey), wl("b", "10.0.0.2", backendKey)
	sick := wl("c", "10.0.0.3", backendKey)
	sick.Status = workloadapi.WorkloadStatus_UNHEALTHY
	be := svc("backend", "10.96.0.10", ports(80, 8080)...)
	v := mustView(t, Snapshot{Workloads: []*workloadapi.Workload{a, b, sick}, Services: []*workloadapi.Service{be}})
	r := rand.New(rand.NewPCG(1, 2))
	counts := map[string]int{}
	for range 1000 {
		ep, err := v.PickEndpoint(be, 80, r)
		if err != nil {
			t.Fatal(err)
		}
		counts[ep.Workload.GetUid()]++
	}
	if counts["c"] != 0 || counts["a"] < 400 || counts["b"] < 400 {
		t.Errorf("picks = %v, want a and b about evenly, never c", counts)
	}
}

func TestView_PoliciesFor(t *testing.T) {
	global := pol("istio-system", "global", security.Scope_GLOBAL)
	nsShop := pol("shop", "ns-shop", security.Scope_NAMESPACE)
	nsOther := pol("other", "ns-other", security.Scope_NAMESPACE)
	sel := pol("shop", "sel", security.Scope_WORKLOAD_SELECTOR)
	selUnlisted := pol("shop", "sel-unlisted", security.Scope_WORKLOAD_SELECTOR)
	v := mustView(t, Snapshot{Policies: []*security.Authorization{sel, nsOther, global, selUnlisted, nsShop}})

	listed := wl("fe", "10.0.0.1")
	listed.AuthorizationPolicies = []string{"shop/sel", "shop/missing", "shop/ns-shop"}
	other := wl("x", "10.0.0.2")
	other.Namespace = "other"
	tests := []struct {
		name string
		w    *workloadapi.Workload
		want []*security.Authorization
	}{
		{"global, namespace and listed, each once", listed, []*security.Authorization{global, nsShop, sel}},
		{"other namespace", other, []*security.Authorization{global, nsOther}},
		{"unlisted selector policy never applies", wl("y", "10.0.0.3"), []*security.Authorization{global, nsShop}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, v.PoliciesFor(tt.w), protocmp.Transform()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestEnrolled(t *testing.T) {
	for _, tt := range []struct {
		p    workloadapi.TunnelProtocol
		want bool
	}{
		{workloadapi.TunnelProtocol_HBONE, true},
		{workloadapi.TunnelProtocol_NONE, false},
		{workloadapi.TunnelProtocol_LEGACY_ISTIO_MTLS, false},
	} {
		if got := Enrolled(&workloadapi.Workload{TunnelProtocol: tt.p}); got != tt.want {
			t.Errorf("Enrolled(%v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if Enrolled(nil) || TunnelProtocol(nil) != workloadapi.TunnelProtocol_NONE {
		t.Error("nil workload must be NONE, not enrolled")
	}
}

func TestStore_ApplyUpsertsAndRemoves(t *testing.T) {
	s := NewStore()
	if v := s.Current().Version(); v != 0 {
		t.Fatalf("initial version = %d", v)
	}
	be := svc("backend", "10.96.0.10", ports(80, 8080)...)
	a, b := wl("a", "10.0.0.1", backendKey), wl("b", "10.0.0.2", backendKey)
	if err := s.Apply(Update{Workloads: []*workloadapi.Workload{a, b}, Services: []*workloadapi.Service{be}, Policies: []*security.Authorization{pol("shop", "p", security.Scope_NAMESPACE)}}); err != nil {
		t.Fatal(err)
	}
	before := s.Current()

	a2 := wl("a", "10.0.0.9", backendKey) // moved to a new IP
	if err := s.Apply(Update{Workloads: []*workloadapi.Workload{a2}, RemovedWorkloads: []string{"b", "never-existed"}, RemovedPolicies: []string{"shop/p"}}); err != nil {
		t.Fatal(err)
	}
	v := s.Current()
	if v.Version() != 2 {
		t.Errorf("version = %d, want 2", v.Version())
	}
	want := Snapshot{Workloads: []*workloadapi.Workload{a2}, Services: []*workloadapi.Service{be}, Policies: []*security.Authorization{}}
	if diff := cmp.Diff(want, v.Snapshot(), protocmp.Transform()); diff != "" {
		t.Errorf("snapshot (-want +got):\n%s", diff)
	}
	if v.WorkloadByAddr("", netip.MustParseAddr("10.0.0.1")) != nil {
		t.Error("old IP of a still indexed")
	}
	if got := v.WorkloadByAddr("", netip.MustParseAddr("10.0.0.9")); got != a2 {
		t.Errorf("new IP of a = %v", got)
	}
	if diff := cmp.Diff([]*workloadapi.Workload{a2}, v.Endpoints(be), protocmp.Transform()); diff != "" {
		t.Errorf("endpoints (-want +got):\n%s", diff)
	}
	// The earlier view is untouched (copy-on-write).
	if len(before.Snapshot().Workloads) != 2 || before.Workload("a") != a || before.Policy("shop", "p") == nil {
		t.Error("Apply modified an earlier view")
	}
}

func TestStore_InvalidWriteChangesNothing(t *testing.T) {
	s := NewStore()
	if err := s.Replace(Snapshot{Workloads: []*workloadapi.Workload{wl("a", "10.0.0.1")}}); err != nil {
		t.Fatal(err)
	}
	before := s.Current()
	if err := s.Apply(Update{RemovedWorkloads: []string{"a"}, Workloads: []*workloadapi.Workload{{Name: "no-uid"}}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Apply err = %v, want ErrInvalid", err)
	}
	if err := s.Replace(Snapshot{Workloads: []*workloadapi.Workload{wl("x", ""), wl("x", "")}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Replace err = %v, want ErrInvalid", err)
	}
	if s.Current() != before {
		t.Error("a rejected write replaced the view")
	}
}

func TestStore_ReplaceDropsEverythingNotGiven(t *testing.T) {
	s := NewStore()
	if err := s.Replace(Snapshot{Workloads: []*workloadapi.Workload{wl("a", "10.0.0.1"), wl("b", "10.0.0.2")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Replace(Snapshot{Workloads: []*workloadapi.Workload{wl("b", "10.0.0.2")}}); err != nil {
		t.Fatal(err)
	}
	if s.Current().Workload("a") != nil || s.Current().WorkloadByAddr("", netip.MustParseAddr("10.0.0.1")) != nil {
		t.Error("Replace kept a workload it was not given")
	}
}

func TestStore_SubscribeCoalescesAndCloses(t *testing.T) {
	s := NewStore()
	ctx, cancel := context.WithCancel(context.Background())
	ch := s.Subscribe(ctx)
	select {
	case <-ch:
	default:
		t.Fatal("no initial signal")
	}
	for i := range 5 { // the writer must never block on an unread channel
		if err := s.Apply(Update{Workloads: []*workloadapi.Workload{wl(fmt.Sprint(i), "")}}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-ch:
	default:
		t.Fatal("no signal after writes")
	}
	select {
	case <-ch:
		t.Fatal("signals did not coalesce")
	default:
	}
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("got a signal, want close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after cancel")
	}
	if err := s.Apply(Update{}); err != nil { // no send on the closed channel
		t.Fatal(err)
	}
}

// TestStore_ReadersNeverSeeHalfAWrite runs readers against writers that
// alternate between two consistent states; run it with -race.
func TestStore_ReadersNeverSeeHalfAWrite(t *testing.T) {
	s := NewStore()
	be := svc("backend", "10.96.0.10", ports(80, 8080)...)
	stateN := func(gen, n int) Snapshot {
		snap := Snapshot{Services: []*workloadapi.Service{be}}
		for i := range n {
			snap.Workloads = append(snap.Workloads, wl(fmt.Sprintf("g%d-%d", gen, i), fmt.Sprintf("10.%d.0.%d", gen%200, i+1), backendKey))
		}
		return snap
	}
	if err := s.Replace(stateN(0, 3)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	notes := s.Subscribe(ctx)

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(3, 4))
			for ctx.Err() == nil {
				v := s.Current()
				snap := v.Snapshot()
				eps := v.Endpoints(be)
				if len(eps) != len(snap.Workloads) {
					errs <- fmt.Errorf("version %d: %d endpoints but %d workloads", v.Version(), len(eps), len(snap.Workloads))
					return
				}
				for _, w := range snap.Workloads {
					a, _ := netip.AddrFromSlice(w.Addresses[0])
					if v.Resolve("", netip.AddrPortFrom(a, 80)).Workload != w {
						errs <- fmt.Errorf("version %d: %s not found by its IP", v.Version(), w.Uid)
						return
					}
				}
				if _, err := v.PickEndpoint(be, 80, r); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range notes {
		}
	})
	for gen := 1; gen <= 300; gen++ {
		var err error
		if gen%2 == 0 {
			err = s.Replace(stateN(gen, 1+gen%5))
		} else {
			prev := s.Current().Snapshot()
			u := Update{Workloads: stateN(gen, 2).Workloads}
			for _, w := range prev.Workloads {
				u.RemovedWorkloads = append(u.RemovedWorkloads, w.Uid)
			}
			err = s.Apply(u)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestView_WaypointService(t *testing.T) {
	wp := svc("waypoint", "10.96.0.50", ports(15008, 15008)...)
	other := svc("waypoint", "10.96.0.50", ports(15008, 15008)...)
	other.Namespace = "other"
	other.Addresses = []*workloadapi.NetworkAddress{{Network: "net2", Address: ip("10.96.0.60")}}
	v := mustView(t, Snapshot{Services: []*workloadapi.Service{wp, other}})
	byHost := func(ns, host string) *workloadapi.GatewayAddress {
		return &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{
			Hostname: &workloadapi.NamespacedHostname{Namespace: ns, Hostname: host}}}
	}
	byAddr := func(network, addr string) *workloadapi.GatewayAddress {
		return &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Address{
			Address: &workloadapi.NetworkAddress{Network: network, Address: ip(addr)}}}
	}
	for _, tc := range []struct {
		name string
		gw   *workloadapi.GatewayAddress
		want *workloadapi.Service
	}{
		{"by hostname", byHost("shop", "waypoint.shop.svc.cluster.local"), wp},
		{"by hostname, another namespace", byHost("other", "waypoint.shop.svc.cluster.local"), other},
		{"by address in the caller's network", byAddr("", "10.96.0.50"), wp},
		{"by address in a named network", byAddr("net2", "10.96.0.60"), other},
		{"by address, wrong network", byAddr("", "10.96.0.60"), nil},
		{"unknown hostname", byHost("shop", "nope.shop.svc.cluster.local"), nil},
		{"no destination", &workloadapi.GatewayAddress{}, nil},
		{"nil", nil, nil},
	} {
		if got := v.WaypointService("", tc.gw); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, ServiceKey(got), ServiceKey(tc.want))
		}
	}
}
