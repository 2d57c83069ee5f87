package translate

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// Waypoint Gateways.
const (
	// GatewayClassWaypoint is the class of Istio's waypoint Gateways.
	GatewayClassWaypoint = "istio-waypoint"
	// LabelWaypointFor on a Gateway (or its GatewayClass) says which
	// traffic the waypoint takes: WaypointForService (the default),
	// WaypointForWorkload, WaypointForAll or WaypointForNone.
	LabelWaypointFor    = "istio.io/waypoint-for"
	WaypointForService  = "service"
	WaypointForWorkload = "workload"
	WaypointForAll      = "all"
	WaypointForNone     = "none"
	// LabelGatewayManaged marks the objects of a waypoint deployment;
	// a Service with ManagedByMeshController is a waypoint's own.
	LabelGatewayManaged     = "gateway.istio.io/managed"
	ManagedByMeshController = "istio.io-mesh-controller"
	// waypointHBONEListenerProtocol is the protocol of a waypoint Gateway's
	// HBONE listener, whose allowedRoutes decide which namespaces may use it.
	waypointHBONEListenerProtocol = "HBONE"
)

// waypoint is a Gateway usable as a waypoint: it has an address.
type waypoint struct {
	key         types.NamespacedName
	address     *workloadapi.GatewayAddress
	trafficType string
	from        gatewayv1.FromNamespaces
	selector    labels.Selector // for from == Selector; nil matches nothing
}

// waypoints indexes the Gateways that can serve as waypoints, as Istio's
// WaypointsCollection does (pilot/pkg/serviceregistry/kube/controller/
// ambient/waypoints.go): a Gateway of any class is a waypoint once it has
// an address. The address is the first status address of type Hostname
// (Istio prefers hostnames), else the first of type IPAddress. For a
// Gateway of class istio-waypoint without status addresses yet (the
// waypoint controller, istiod-lite/waypointctl, writes them once it has
// created the Service) the ClusterIP of the Service of the same name in
// the Gateway's namespace stands in. A Gateway with neither is
// not a waypoint, and objects that name it get none.
func waypoints(gws []*gatewayv1.Gateway, classes []*gatewayv1.GatewayClass, idx *Index) map[types.NamespacedName]*waypoint {
	classByName := make(map[string]*gatewayv1.GatewayClass, len(classes))
	for _, c := range classes {
		if c != nil {
			classByName[c.Name] = c
		}
	}
	out := make(map[types.NamespacedName]*waypoint)
	for _, gw := range gws {
		if gw == nil {
			continue
		}
		addr := gatewayAddress(gw, idx)
		if addr == nil {
			continue
		}
		tt := WaypointForService
		if c := classByName[string(gw.Spec.GatewayClassName)]; c != nil {
			if v, ok := c.Labels[LabelWaypointFor]; ok {
				tt = v
			}
		}
		if v, ok := gw.Labels[LabelWaypointFor]; ok {
			tt = v
		}
		wp := &waypoint{
			key:         types.NamespacedName{Namespace: gw.Namespace, Name: gw.Name},
			address:     addr,
			trafficType: tt,
			from:        gatewayv1.NamespacesFromSame,
		}
		// Which namespaces may attach: the HBONE listener's allowedRoutes,
		// Same when absent (Istio's makeAllowedRoutes).
		for _, l := range gw.Spec.Listeners {
			if l.Protocol != waypointHBONEListenerProtocol || l.Port != HBONEPort {
				continue
			}
			if l.AllowedRoutes != nil && l.AllowedRoutes.Namespaces != nil {
				if f := l.AllowedRoutes.Namespaces.From; f != nil {
					wp.from = *f
				}
				if s, err := metav1.LabelSelectorAsSelector(l.AllowedRoutes.Namespaces.Selector); err == nil {
					wp.selector = s
				}
			}
			break
		}
		out[wp.key] = wp
	}
	return out
}

// gatewayAddress is the GatewayAddress ztunnel reaches gw at, or nil.
func gatewayAddress(gw *gatewayv1.Gateway, idx *Index) *workloadapi.GatewayAddress {
	for _, a := range gw.Status.Addresses {
		if a.Type != nil && *a.Type == gatewayv1.HostnameAddressType && a.Value != "" {
			return &workloadapi.GatewayAddress{
				Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
					Namespace: gw.Namespace, Hostname: a.Value,
				}},
				HboneMtlsPort: HBONEPort,
			}
		}
	}
	netw := serviceNetwork(idx.namespace(gw.Namespace), idx.cfg)
	for _, a := range gw.Status.Addresses {
		// An address without a type is an IPAddress (the CRD's default).
		if a.Type != nil && *a.Type != gatewayv1.IPAddressType {
			continue
		}
		if ip, err := netip.ParseAddr(a.Value); err == nil {
			return ipGatewayAddress(netw, ip)
		}
	}
	if len(gw.Status.Addresses) > 0 || gw.Spec.GatewayClassName != GatewayClassWaypoint {
		return nil
	}
	svc := idx.services[types.NamespacedName{Namespace: gw.Namespace, Name: gw.Name}]
	if svc == nil {
		return nil
	}
	if ip, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil {
		return ipGatewayAddress(netw, ip)
	}
	return nil
}

func ipGatewayAddress(netw string, ip netip.Addr) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination: &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{
			Network: netw, Address: ip.Unmap().AsSlice(),
		}},
		HboneMtlsPort: HBONEPort,
	}
}

// allows reports whether objects in namespace ns may use w.
func (w *waypoint) allows(ns *corev1.Namespace, nsName string) bool {
	switch w.from {
	case gatewayv1.NamespacesFromAll:
		return true
	case gatewayv1.NamespacesFromSelector:
		return w.selector != nil && ns != nil && w.selector.Matches(labels.Set(ns.Labels))
	default: // Same, and None or anything unknown: only the Gateway's own
		return w.key.Namespace == nsName
	}
}

// useWaypoint parses istio.io/use-waypoint (and
// istio.io/use-waypoint-namespace) on an object's labels: the waypoint it
// names, whether the label is there at all, and whether it is "none".
func useWaypoint(objLabels map[string]string, defaultNamespace string) (key types.NamespacedName, present, none bool) {
	name, ok := objLabels[LabelUseWaypoint]
	if !ok {
		return types.NamespacedName{}, false, false
	}
	if name == WaypointNone {
		return types.NamespacedName{}, true, true
	}
	ns := defaultNamespace
	if n, ok := objLabels[LabelUseWaypointNamespace]; ok {
		ns = n
	}
	return types.NamespacedName{Namespace: ns, Name: name}, true, false
}

// waypointFor returns the waypoint an object in namespace objNamespace with
// objLabels is bound to for traffic of kind forType (WaypointForService or
// WaypointForWorkload), following Istio's fetchWaypointForTarget: the
// object's own istio.io/use-waypoint wins over its namespace's ("none" on
// the object opts it out); a label naming a Gateway that is not a waypoint
// (missing, or without an address) binds to nothing — the namespace's label
// is not tried instead —, as does a waypoint whose HBONE listener does not
// admit the object's namespace or whose istio.io/waypoint-for excludes
// forType.
func (idx *Index) waypointFor(objLabels map[string]string, objNamespace, forType string) *waypoint {
	ns := idx.namespace(objNamespace)
	key, present, none := useWaypoint(objLabels, objNamespace)
	if none {
		return nil
	}
	if !present {
		key, present, _ = useWaypoint(namespaceLabels(ns), objNamespace)
		if !present {
			return nil
		}
	}
	w := idx.waypoints[key]
	if w == nil || !w.allows(ns, objNamespace) {
		return nil
	}
	if w.trafficType != forType && w.trafficType != WaypointForAll {
		return nil
	}
	return w
}

// instanceOf reports whether pod is an instance of a waypoint (labelled
// gateway.networking.k8s.io/gateway-name with a waypoint of its
// namespace): a waypoint never sends its own traffic through a waypoint.
func (idx *Index) instanceOfWaypoint(pod *corev1.Pod) bool {
	gw := pod.Labels[LabelGatewayName]
	return gw != "" && idx.waypoints[types.NamespacedName{Namespace: pod.Namespace, Name: gw}] != nil
}
