package translate

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

func namespace(labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default", Labels: labels}}
}

func testPod(mut func(*corev1.Pod)) *corev1.Pod {
	ctrl := true
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-7d9f-abcde", GenerateName: "web-7d9f-", Namespace: "default",
			Labels:          map[string]string{"app": "web", "version": "v1", "pod-template-hash": "7d9f"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-7d9f", Controller: &ctrl}}},
		Spec: corev1.PodSpec{ServiceAccountName: "web", NodeName: "node-1", Containers: []corev1.Container{{
			Ports: []corev1.ContainerPort{{Name: "http-web", ContainerPort: 8080}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}},
		}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.5", PodIPs: []corev1.PodIP{{IP: "10.0.0.5"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	if mut != nil {
		mut(p)
	}
	return p
}

func testService(name string, sel map[string]string, labels map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
		Spec: corev1.ServiceSpec{Selector: sel, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, Ports: ports}}
}

func wpAddr(ns, name string) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: ns, Hostname: name + "." + ns + ".svc.cluster.local"}},
		HboneMtlsPort: 15008,
	}
}

func wpIP(ip ...byte) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Address: ip}},
		HboneMtlsPort: 15008,
	}
}

// gateway is a Gateway of class class; mut edits it.
func gateway(ns, name, class string, mut func(*gatewayv1.Gateway)) *gatewayv1.Gateway {
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: gatewayv1.ObjectName(class), Listeners: []gatewayv1.Listener{
			{Name: "mesh", Port: 15008, Protocol: "HBONE"},
		}},
	}
	if mut != nil {
		mut(gw)
	}
	return gw
}

// waypointGW is an istio-waypoint Gateway for traffic type forType ("" for
// the default) with its hostname as Istio's controller reports it.
func waypointGW(ns, name, forType string) *gatewayv1.Gateway {
	return gateway(ns, name, GatewayClassWaypoint, func(gw *gatewayv1.Gateway) {
		if forType != "" {
			gw.Labels = map[string]string{LabelWaypointFor: forType}
		}
		hostname := gatewayv1.HostnameAddressType
		gw.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Type: &hostname, Value: name + "." + ns + ".svc.cluster.local"}}
	})
}

func fromAll(gw *gatewayv1.Gateway) {
	all := gatewayv1.NamespacesFromAll
	gw.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: &all}}
}

func statusIP(ip string) func(*gatewayv1.Gateway) {
	return func(gw *gatewayv1.Gateway) {
		t := gatewayv1.IPAddressType
		gw.Status.Addresses = append(gw.Status.Addresses, gatewayv1.GatewayStatusAddress{Type: &t, Value: ip})
	}
}

func slice(ns, name, service string, targets ...*corev1.ObjectReference) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, AddressType: discoveryv1.AddressTypeIPv4}
	if service != "" {
		es.Labels = map[string]string{discoveryv1.LabelServiceName: service}
	}
	for _, t := range targets {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.0.0.5"}, TargetRef: t})
	}
	return es
}

func podRef(uid string) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "web-7d9f-abcde", UID: types.UID(uid)}
}

func baseWorkload(mut func(*workloadapi.Workload)) *workloadapi.Workload {
	w := &workloadapi.Workload{
		Uid: "Kubernetes//Pod/default/web-7d9f-abcde", Name: "web-7d9f-abcde", Namespace: "default",
		Addresses: [][]byte{{10, 0, 0, 5}}, TrustDomain: "cluster.local", ServiceAccount: "web", Node: "node-1",
		CanonicalName: "web", CanonicalRevision: "v1", WorkloadType: workloadapi.WorkloadType_POD, WorkloadName: "web",
		ClusterId: "Kubernetes", Status: workloadapi.WorkloadStatus_HEALTHY,
	}
	if mut != nil {
		mut(w)
	}
	return w
}

func TestWorkload(t *testing.T) {
	ambient := namespace(map[string]string{LabelDataplaneMode: "ambient"})
	tests := []struct {
		name     string
		pod      *corev1.Pod
		ns       *corev1.Namespace
		services []*corev1.Service
		cluster  Cluster // more of the cluster: nodes, slices, gateways
		want     *workloadapi.Workload
	}{
		{name: "namespace not labelled: no HBONE", pod: testPod(nil), ns: namespace(nil), want: baseWorkload(nil)},
		{name: "ambient namespace: HBONE", pod: testPod(nil), ns: ambient,
			want: baseWorkload(func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE })},
		{name: "pod opts out of ambient namespace", ns: ambient,
			pod:  testPod(func(p *corev1.Pod) { p.Labels[LabelDataplaneMode] = "none" }),
			want: baseWorkload(nil)},
		{name: "not ready is UNHEALTHY", ns: namespace(nil),
			pod:  testPod(func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }),
			want: baseWorkload(func(w *workloadapi.Workload) { w.Status = workloadapi.WorkloadStatus_UNHEALTHY })},
		{name: "no IP yet: no workload", ns: namespace(nil),
			pod: testPod(func(p *corev1.Pod) { p.Status.PodIP, p.Status.PodIPs = "", nil })},
		{name: "canonical-name and app.kubernetes.io/version labels win", ns: namespace(nil),
			pod: testPod(func(p *corev1.Pod) {
				p.Labels[LabelCanonicalName] = "frontend"
				p.Labels["app.kubernetes.io/version"] = "v2"
			}),
			want: baseWorkload(func(w *workloadapi.Workload) { w.CanonicalName, w.CanonicalRevision = "frontend", "v2" })},
		{name: "services: selector match, named target port resolved, unknown name dropped", ns: namespace(nil),
			pod: testPod(nil),
			services: []*corev1.Service{
				testService("web", map[string]string{"app": "web"}, nil,
					corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http-web")},
					corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns")},
					corev1.ServicePort{Name: "metrics", Port: 9090, TargetPort: intstr.FromInt32(9091)},
					corev1.ServicePort{Name: "plain", Port: 7000},
					corev1.ServicePort{Name: "gone", Port: 81, TargetPort: intstr.FromString("nope")}),
				testService("other", map[string]string{"app": "other"}, nil, corev1.ServicePort{Port: 80}),
				testService("noselector", nil, nil, corev1.ServicePort{Port: 80}),
			},
			want: baseWorkload(func(w *workloadapi.Workload) {
				w.Services = map[string]*workloadapi.PortList{"default/web.default.svc.cluster.local": {Ports: []*workloadapi.Port{
					{ServicePort: 80, TargetPort: 8080}, {ServicePort: 53, TargetPort: 53},
					{ServicePort: 9090, TargetPort: 9091}, {ServicePort: 7000, TargetPort: 7000},
				}}}
			})},
		{name: "waypoint from namespace label", pod: testPod(nil),
			ns:      namespace(map[string]string{LabelUseWaypoint: "ns-wp"}),
			cluster: Cluster{Gateways: []*gatewayv1.Gateway{waypointGW("default", "ns-wp", WaypointForWorkload)}},
			want:    baseWorkload(func(w *workloadapi.Workload) { w.Waypoint = wpAddr("default", "ns-wp") })},
		{name: "pod waypoint label wins over namespace, with waypoint namespace and IP address",
			pod: testPod(func(p *corev1.Pod) {
				p.Labels[LabelUseWaypoint] = "pod-wp"
				p.Labels[LabelUseWaypointNamespace] = "infra"
			}),
			ns: namespace(map[string]string{LabelUseWaypoint: "ns-wp"}),
			cluster: Cluster{Gateways: []*gatewayv1.Gateway{
				waypointGW("default", "ns-wp", WaypointForAll),
				gateway("infra", "pod-wp", GatewayClassWaypoint, func(gw *gatewayv1.Gateway) {
					gw.Labels = map[string]string{LabelWaypointFor: WaypointForAll}
					fromAll(gw)
					statusIP("10.96.7.7")(gw)
				}),
			}},
			want: baseWorkload(func(w *workloadapi.Workload) { w.Waypoint = wpIP(10, 96, 7, 7) })},
		{name: "pod use-waypoint none opts out of namespace waypoint",
			pod:     testPod(func(p *corev1.Pod) { p.Labels[LabelUseWaypoint] = "none" }),
			ns:      namespace(map[string]string{LabelUseWaypoint: "ns-wp"}),
			cluster: Cluster{Gateways: []*gatewayv1.Gateway{waypointGW("default", "ns-wp", WaypointForAll)}},
			want:    baseWorkload(nil)},
		{name: "Gateway does not exist: no waypoint (Istio: WaypointIsNotReady)", pod: testPod(nil),
			ns:   namespace(map[string]string{LabelUseWaypoint: "ns-wp"}),
			want: baseWorkload(nil)},
		{name: "pod names a missing waypoint: no waypoint, the namespace's is not tried",
			pod:     testPod(func(p *corev1.Pod) { p.Labels[LabelUseWaypoint] = "missing" }),
			ns:      namespace(map[string]string{LabelUseWaypoint: "ns-wp"}),
			cluster: Cluster{Gateways: []*gatewayv1.Gateway{waypointGW("default", "ns-wp", WaypointForAll)}},
			want:    baseWorkload(nil)},
		{name: "waypoint for services only (the default) does not take workload traffic", pod: testPod(nil),
			ns:      namespace(map[string]string{LabelUseWaypoint: "ns-wp"}),
			cluster: Cluster{Gateways: []*gatewayv1.Gateway{waypointGW("default", "ns-wp", "")}},
			want:    baseWorkload(nil)},
		{name: "GatewayClass istio.io/waypoint-for applies, the Gateway's label wins", pod: testPod(nil),
			ns: namespace(map[string]string{LabelUseWaypoint: "ns-wp"}),
			cluster: Cluster{
				Gateways: []*gatewayv1.Gateway{waypointGW("default", "ns-wp", ""), gateway("default", "other", "custom", statusIP("10.96.0.99"))},
				GatewayClasses: []*gatewayv1.GatewayClass{{ObjectMeta: metav1.ObjectMeta{Name: GatewayClassWaypoint,
					Labels: map[string]string{LabelWaypointFor: WaypointForWorkload}}}},
			},
			want: baseWorkload(func(w *workloadapi.Workload) { w.Waypoint = wpAddr("default", "ns-wp") })},
		{name: "waypoint in another namespace whose HBONE listener admits only its own", pod: testPod(nil),
			ns: namespace(map[string]string{LabelUseWaypoint: "wp", LabelUseWaypointNamespace: "infra"}),
			cluster: Cluster{Gateways: []*gatewayv1.Gateway{gateway("infra", "wp", GatewayClassWaypoint, func(gw *gatewayv1.Gateway) {
				gw.Labels = map[string]string{LabelWaypointFor: WaypointForAll}
				statusIP("10.96.7.7")(gw)
			})}},
			want: baseWorkload(nil)},
		{name: "istio-waypoint Gateway without status: its Service's ClusterIP", pod: testPod(nil),
			ns: namespace(map[string]string{LabelUseWaypoint: "wp"}),
			services: []*corev1.Service{{ObjectMeta: metav1.ObjectMeta{Name: "wp", Namespace: "default"},
				Spec: corev1.ServiceSpec{ClusterIP: "10.96.3.3"}}},
			cluster: Cluster{Gateways: []*gatewayv1.Gateway{gateway("default", "wp", GatewayClassWaypoint, func(gw *gatewayv1.Gateway) {
				gw.Labels = map[string]string{LabelWaypointFor: WaypointForWorkload}
			})}},
			want: baseWorkload(func(w *workloadapi.Workload) { w.Waypoint = wpIP(10, 96, 3, 3) })},
		{name: "Gateway of another class without status addresses is no waypoint", pod: testPod(nil),
			ns: namespace(map[string]string{LabelUseWaypoint: "wp"}),
			services: []*corev1.Service{{ObjectMeta: metav1.ObjectMeta{Name: "wp", Namespace: "default"},
				Spec: corev1.ServiceSpec{ClusterIP: "10.96.3.3"}}},
			cluster: Cluster{Gateways: []*gatewayv1.Gateway{gateway("default", "wp", "istio", func(gw *gatewayv1.Gateway) {
				gw.Labels = map[string]string{LabelWaypointFor: WaypointForAll}
			})}},
			want: baseWorkload(nil)},
		{name: "a waypoint's own pod gets no waypoint",
			pod:     testPod(func(p *corev1.Pod) { p.Labels[LabelGatewayName] = "ns-wp" }),
			ns:      namespace(map[string]string{LabelUseWaypoint: "ns-wp"}),
			cluster: Cluster{Gateways: []*gatewayv1.Gateway{waypointGW("default", "ns-wp", WaypointForAll)}},
			want:    baseWorkload(nil)},
		{name: "locality from the node's topology labels", pod: testPod(nil), ns: namespace(nil),
			cluster: Cluster{Nodes: []*corev1.Node{
				{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{
					corev1.LabelTopologyRegion: "eu-west1", corev1.LabelTopologyZone: "eu-west1-b", LabelTopologySubzone: "rack7"}}},
				{ObjectMeta: metav1.ObjectMeta{Name: "node-2", Labels: map[string]string{corev1.LabelTopologyZone: "elsewhere"}}},
			}},
			want: baseWorkload(func(w *workloadapi.Workload) {
				w.Locality = &workloadapi.Locality{Region: "eu-west1", Zone: "eu-west1-b", Subzone: "rack7"}
			})},
		{name: "node without topology labels: no locality", pod: testPod(nil), ns: namespace(nil),
			cluster: Cluster{Nodes: []*corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"x": "y"}}}}},
			want:    baseWorkload(nil)},
		{name: "services: EndpointSlices targeting the pod add selectorless services",
			pod: testPod(func(p *corev1.Pod) { p.UID = "uid-1" }), ns: namespace(nil),
			services: []*corev1.Service{
				testService("external", nil, nil, corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("http-web")}),
				testService("web", map[string]string{"app": "web"}, nil, corev1.ServicePort{Port: 81}),
				testService("stale", nil, nil, corev1.ServicePort{Port: 82}),
				testService("unlabelled", nil, nil, corev1.ServicePort{Port: 83}),
			},
			cluster: Cluster{EndpointSlices: []*discoveryv1.EndpointSlice{
				slice("default", "external-abc", "external", podRef("uid-1"), &corev1.ObjectReference{Kind: "Node", Name: "web-7d9f-abcde"}),
				slice("default", "web-abc", "web", podRef("uid-1")),
				slice("default", "stale-abc", "stale", podRef("uid-0")), // an earlier pod of the same name
				slice("default", "unlabelled-abc", "", podRef("uid-1")),
				slice("default", "missing-abc", "missing", podRef("uid-1")),
			}},
			want: baseWorkload(func(w *workloadapi.Workload) {
				w.Services = map[string]*workloadapi.PortList{
					"default/external.default.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}},
					"default/web.default.svc.cluster.local":      {Ports: []*workloadapi.Port{{ServicePort: 81, TargetPort: 81}}},
				}
			})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cluster
			if tt.ns != nil {
				c.Namespaces = append(c.Namespaces, tt.ns)
			}
			c.Services = append(c.Services, tt.services...)
			got := Workload(tt.pod, NewIndex(c))
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Workload mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestService(t *testing.T) {
	h2c := "kubernetes.io/h2c"
	svc := testService("web", map[string]string{"app": "web"}, nil,
		corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http-web")},
		corev1.ServicePort{Name: "grpc", Port: 9000, TargetPort: intstr.FromInt32(9001), AppProtocol: &h2c},
		corev1.ServicePort{Name: "tcp", Port: 5432})
	svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
	want := func(wp *workloadapi.GatewayAddress) *workloadapi.Service {
		return &workloadapi.Service{
			Name: "web", Namespace: "default", Hostname: "web.default.svc.cluster.local",
			Addresses:  []*workloadapi.NetworkAddress{{Network: "net1", Address: []byte{10, 96, 0, 10}}},
			IpFamilies: workloadapi.IPFamilies_IPV4_ONLY,
			Ports: []*workloadapi.Port{
				{ServicePort: 80, TargetPort: 0, AppProtocol: workloadapi.AppProtocol_HTTP11},
				{ServicePort: 9000, TargetPort: 9001, AppProtocol: workloadapi.AppProtocol_HTTP2},
				{ServicePort: 5432, TargetPort: 5432, AppProtocol: workloadapi.AppProtocol_TCP},
			},
			Waypoint: wp,
		}
	}
	labelled := svc.DeepCopy()
	labelled.Labels = map[string]string{LabelUseWaypoint: "svc-wp"}
	optOut := svc.DeepCopy()
	optOut.Labels = map[string]string{LabelUseWaypoint: "none"}
	headless := svc.DeepCopy()
	headless.Spec.ClusterIP, headless.Spec.ClusterIPs = "None", []string{"None"}
	wantHeadless := want(nil)
	wantHeadless.Addresses = nil
	managed := svc.DeepCopy()
	managed.Labels = map[string]string{LabelGatewayManaged: ManagedByMeshController}
	nsWP := namespace(map[string]string{LabelUseWaypoint: "ns-wp"})
	gws := func(forType string) []*gatewayv1.Gateway {
		return []*gatewayv1.Gateway{
			waypointGW("default", "ns-wp", forType),
			waypointGW("default", "svc-wp", forType),
			gateway("default", "ip-wp", GatewayClassWaypoint, statusIP("10.96.9.9")),
		}
	}
	viaIP := svc.DeepCopy()
	viaIP.Labels = map[string]string{LabelUseWaypoint: "ip-wp"}
	tests := []struct {
		name     string
		svc      *corev1.Service
		ns       *corev1.Namespace
		gateways []*gatewayv1.Gateway
		want     *workloadapi.Service
	}{
		{"plain", svc, namespace(nil), gws(""), want(nil)},
		{"namespace waypoint (default traffic type: service)", svc, nsWP, gws(""), want(wpAddr("default", "ns-wp"))},
		{"service waypoint wins", labelled, nsWP, gws(""), want(wpAddr("default", "svc-wp"))},
		{"status IPAddress: network address on the service's network", viaIP, nsWP, gws(""),
			want(&workloadapi.GatewayAddress{
				Destination:   &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Network: "net1", Address: []byte{10, 96, 9, 9}}},
				HboneMtlsPort: 15008,
			})},
		{"waypoint for all", svc, nsWP, gws(WaypointForAll), want(wpAddr("default", "ns-wp"))},
		{"waypoint for workloads only", svc, nsWP, gws(WaypointForWorkload), want(nil)},
		{"waypoint for none", svc, nsWP, gws(WaypointForNone), want(nil)},
		{"Gateway does not exist", svc, nsWP, nil, want(nil)},
		{"service opts out", optOut, nsWP, gws(""), want(nil)},
		{"a waypoint's own service", managed, nsWP, gws(""), want(nil)},
		{"headless", headless, nil, nil, wantHeadless},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Cluster{Gateways: tt.gateways, Config: Config{Network: "net1"}}
			if tt.ns != nil {
				c.Namespaces = []*corev1.Namespace{tt.ns}
			}
			got := Service(tt.svc, NewIndex(c))
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Service mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func pa(ns, name string, created int, sel map[string]string, mode string, ports map[uint32]MutualTLS) PeerAuthentication {
	p := PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
		CreationTimestamp: metav1.NewTime(time.Unix(int64(created), 0))}}
	if sel != nil {
		p.Spec.Selector = &WorkloadSelector{MatchLabels: sel}
	}
	if mode != "" {
		p.Spec.MTLS = &MutualTLS{Mode: mode}
	}
	p.Spec.PortLevelMTLS = ports
	return p
}

func TestPeerAuthentication(t *testing.T) {
	strict := &security.Authorization{
		Name: "istio_converted_static_strict", Namespace: "istio-system",
		Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
		Groups: []*security.Group{group(rules(&security.Match{NotPrincipals: []*security.StringMatch{presence()}}))},
	}
	web := map[string]string{"app": "web"}
	tests := []struct {
		name string
		pa   PeerAuthentication
		want *security.Authorization
	}{
		// https://istio.io/latest/docs/reference/config/security/peer_authentication/
		{"istio doc: namespace STRICT", pa("foo", "default", 0, nil, ModeStrict, nil), strict},
		{"mesh STRICT", pa("istio-system", "default", 0, nil, ModeStrict, nil), strict},
		{"workload STRICT", pa("foo", "w", 0, web, ModeStrict, nil), strict},
		{"PERMISSIVE", pa("foo", "p", 0, nil, ModePermissive, nil), nil},
		{"DISABLE", pa("foo", "d", 0, nil, ModeDisable, nil), nil},
		{"istio doc: STRICT with port 8080 DISABLE", pa("foo", "finance", 0, web, ModeStrict, map[uint32]MutualTLS{8080: {Mode: ModeDisable}}),
			&security.Authorization{Name: "converted_peer_authentication_finance", Namespace: "foo",
				Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
				Groups: []*security.Group{group(rules(&security.Match{NotPrincipals: []*security.StringMatch{presence()}, NotDestinationPorts: []uint32{8080}}))}}},
		{"PERMISSIVE with port 9000 STRICT", pa("foo", "p9", 0, web, ModePermissive, map[uint32]MutualTLS{9000: {Mode: ModeStrict}}),
			&security.Authorization{Name: "converted_peer_authentication_p9", Namespace: "foo",
				Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
				Groups: []*security.Group{group(rules(&security.Match{NotPrincipals: []*security.StringMatch{presence()}, DestinationPorts: []uint32{9000}}))}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ConvertPeerAuthentication(tt.pa, "istio-system")
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPeerAuthenticationNames(t *testing.T) {
	pod := testPod(nil)
	web := map[string]string{"app": "web"}
	const static = "istio-system/istio_converted_static_strict"
	tests := []struct {
		name string
		pas  []PeerAuthentication
		want []string
	}{
		{"none", nil, nil},
		{"mesh STRICT", []PeerAuthentication{pa("istio-system", "m", 0, nil, ModeStrict, nil)}, []string{static}},
		{"namespace PERMISSIVE overrides mesh STRICT", []PeerAuthentication{
			pa("istio-system", "m", 0, nil, ModeStrict, nil), pa("default", "n", 0, nil, ModePermissive, nil)}, nil},
		{"namespace UNSET inherits mesh STRICT", []PeerAuthentication{
			pa("istio-system", "m", 0, nil, ModeStrict, nil), pa("default", "n", 0, nil, "", nil)}, []string{static}},
		{"workload STRICT over namespace PERMISSIVE", []PeerAuthentication{
			pa("default", "n", 0, nil, ModePermissive, nil), pa("default", "w", 0, web, ModeStrict, nil)}, []string{static}},
		{"workload policy not selecting the pod", []PeerAuthentication{
			pa("default", "w", 0, map[string]string{"app": "db"}, ModeStrict, nil)}, nil},
		{"oldest namespace policy wins", []PeerAuthentication{
			pa("default", "new", 2, nil, ModeStrict, nil), pa("default", "old", 1, nil, ModePermissive, nil)}, nil},
		{"STRICT with permissive port uses converted policy only", []PeerAuthentication{
			pa("default", "w", 0, web, ModeStrict, map[uint32]MutualTLS{8080: {Mode: ModePermissive}})},
			[]string{"default/converted_peer_authentication_w"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := PeerAuthenticationNames(pod, tt.pas, "istio-system")
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPolicyNames(t *testing.T) {
	ap := func(ns, name string, sel map[string]string, mut func(*AuthorizationPolicy)) AuthorizationPolicy {
		p := AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		if sel != nil {
			p.Spec.Selector = &WorkloadSelector{MatchLabels: sel}
		}
		if mut != nil {
			mut(&p)
		}
		return p
	}
	pols := []AuthorizationPolicy{
		ap("default", "by-app", map[string]string{"app": "web"}, nil),
		ap("default", "by-app-version", map[string]string{"app": "web", "version": "v2"}, nil),
		ap("default", "ns-wide", nil, nil),
		ap("default", "empty-selector", map[string]string{}, nil),
		ap("other", "other-ns", map[string]string{"app": "web"}, nil),
		ap("istio-system", "root-selector", map[string]string{"app": "web"}, nil),
		ap("default", "waypoint", map[string]string{"app": "web"}, func(p *AuthorizationPolicy) {
			p.Spec.TargetRefs = []PolicyTargetReference{{Kind: "Service", Name: "web"}}
		}),
		ap("default", "audit", map[string]string{"app": "web"}, func(p *AuthorizationPolicy) { p.Spec.Action = ActionAudit }),
	}
	want := []string{"default/by-app", "default/empty-selector", "istio-system/root-selector"}
	if diff := cmp.Diff(want, PolicyNames(testPod(nil), pols, "istio-system")); diff != "" {
		t.Errorf("PolicyNames mismatch (-want +got):\n%s", diff)
	}
}

// Istio's protocol selection: appProtocol first, then the port name's
// "<protocol>" or "<protocol>-<suffix>"; server-first and TLS protocols
// declared, so the waypoint does not wait for the client to speak.
func TestAppProtocol(t *testing.T) {
	ap := func(s string) *string { return &s }
	for _, tc := range []struct {
		port corev1.ServicePort
		want workloadapi.AppProtocol
	}{
		{corev1.ServicePort{Name: "http"}, workloadapi.AppProtocol_HTTP11},
		{corev1.ServicePort{Name: "http-web"}, workloadapi.AppProtocol_HTTP11},
		{corev1.ServicePort{Name: "HTTP2-api"}, workloadapi.AppProtocol_HTTP2},
		{corev1.ServicePort{Name: "grpc"}, workloadapi.AppProtocol_GRPC},
		{corev1.ServicePort{Name: "grpc-web"}, workloadapi.AppProtocol_HTTP11},
		{corev1.ServicePort{Name: "grpc-api"}, workloadapi.AppProtocol_GRPC},
		{corev1.ServicePort{Name: "tcp-db"}, workloadapi.AppProtocol_TCP},
		{corev1.ServicePort{Name: "mysql"}, workloadapi.AppProtocol_TCP},
		{corev1.ServicePort{Name: "mongo-main"}, workloadapi.AppProtocol_TCP},
		{corev1.ServicePort{Name: "redis"}, workloadapi.AppProtocol_TCP},
		{corev1.ServicePort{Name: "https"}, workloadapi.AppProtocol_TLS},
		{corev1.ServicePort{Name: "tls-passthrough"}, workloadapi.AppProtocol_TLS},
		{corev1.ServicePort{Name: "web"}, workloadapi.AppProtocol_UNKNOWN},
		{corev1.ServicePort{Name: "httpx"}, workloadapi.AppProtocol_UNKNOWN},
		{corev1.ServicePort{}, workloadapi.AppProtocol_UNKNOWN},
		{corev1.ServicePort{Name: "database", AppProtocol: ap("mysql")}, workloadapi.AppProtocol_TCP},
		{corev1.ServicePort{Name: "http", AppProtocol: ap("tcp")}, workloadapi.AppProtocol_TCP}, // appProtocol wins
		{corev1.ServicePort{Name: "tcp", AppProtocol: ap("HTTP")}, workloadapi.AppProtocol_HTTP11},
		{corev1.ServicePort{AppProtocol: ap("kubernetes.io/h2c")}, workloadapi.AppProtocol_HTTP2},
		{corev1.ServicePort{AppProtocol: ap("kubernetes.io/ws")}, workloadapi.AppProtocol_HTTP11},
		{corev1.ServicePort{AppProtocol: ap("kubernetes.io/wss")}, workloadapi.AppProtocol_TLS},
		{corev1.ServicePort{Name: "http", AppProtocol: ap("example.com/custom")}, workloadapi.AppProtocol_UNKNOWN},
		{corev1.ServicePort{Name: "tcp-dns", Protocol: corev1.ProtocolUDP}, workloadapi.AppProtocol_UNKNOWN},
	} {
		if got := appProtocol(tc.port); got != tc.want {
			t.Errorf("port name %q appProtocol %v protocol %q: %v, want %v", tc.port.Name, tc.port.AppProtocol, tc.port.Protocol, got, tc.want)
		}
	}
}
