package translate

import (
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// LabelTopologySubzone is Istio's node label for the subzone of a
// workload's locality (topology.kubernetes.io has region and zone only).
const LabelTopologySubzone = "topology.istio.io/subzone"

// Cluster is the cluster-wide state the translation of one pod or service
// reads beyond the object itself. Objects may come in any order.
type Cluster struct {
	Namespaces     []*corev1.Namespace
	Services       []*corev1.Service
	Nodes          []*corev1.Node
	EndpointSlices []*discoveryv1.EndpointSlice
	Gateways       []*gatewayv1.Gateway
	GatewayClasses []*gatewayv1.GatewayClass
	// ReferenceGrants permit references into their namespace from others
	// (see [ReferencePermitted]): HTTPRoutes' cross-namespace backendRefs.
	ReferenceGrants []*gatewayv1.ReferenceGrant

	Config Config
}

// Index is a [Cluster] indexed for the lookups [Workload] and [Service]
// make. Build it once per recomputation with [NewIndex]; it is read-only
// afterwards.
type Index struct {
	cfg        Config
	namespaces map[string]*corev1.Namespace
	services   map[types.NamespacedName]*corev1.Service
	svcsByNS   map[string][]*corev1.Service
	localities map[string]*workloadapi.Locality // node name → locality, nil entries left out
	waypoints  map[types.NamespacedName]*waypoint
	// slicesByPod: the services ("namespace/name") whose EndpointSlices
	// name the pod in an endpoint's targetRef, by (kind Pod) target.
	slicesByPod map[targetRef][]types.NamespacedName
	// grants: the ReferenceGrants by their namespace, the one they permit
	// references into.
	grants map[string][]*gatewayv1.ReferenceGrant
}

// targetRef identifies a pod the way an EndpointSlice endpoint's targetRef
// does; Istio matches on all four fields, uid included.
type targetRef struct {
	namespace, name string
	uid             types.UID
}

// NewIndex indexes c.
func NewIndex(c Cluster) *Index {
	idx := &Index{
		cfg:         c.Config.withDefaults(),
		namespaces:  make(map[string]*corev1.Namespace, len(c.Namespaces)),
		services:    make(map[types.NamespacedName]*corev1.Service, len(c.Services)),
		svcsByNS:    make(map[string][]*corev1.Service),
		localities:  make(map[string]*workloadapi.Locality),
		slicesByPod: make(map[targetRef][]types.NamespacedName),
		grants:      make(map[string][]*gatewayv1.ReferenceGrant),
	}
	for _, ns := range c.Namespaces {
		if ns != nil {
			idx.namespaces[ns.Name] = ns
		}
	}
	for _, svc := range c.Services {
		if svc != nil {
			idx.services[types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}] = svc
			idx.svcsByNS[svc.Namespace] = append(idx.svcsByNS[svc.Namespace], svc)
		}
	}
	for _, n := range c.Nodes {
		if l := NodeLocality(n); l != nil {
			idx.localities[n.Name] = l
		}
	}
	for _, es := range c.EndpointSlices {
		svc, ok := sliceService(es)
		if !ok {
			continue
		}
		for _, ep := range es.Endpoints {
			if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" {
				continue
			}
			ref := targetRef{namespace: ep.TargetRef.Namespace, name: ep.TargetRef.Name, uid: ep.TargetRef.UID}
			idx.slicesByPod[ref] = append(idx.slicesByPod[ref], svc)
		}
	}
	for _, g := range c.ReferenceGrants {
		if g != nil {
			idx.grants[g.Namespace] = append(idx.grants[g.Namespace], g)
		}
	}
	idx.waypoints = waypoints(c.Gateways, c.GatewayClasses, idx)
	return idx
}

// sliceService returns the service an EndpointSlice belongs to (its
// kubernetes.io/service-name label); slices of no service and FQDN slices
// are not for us, as in Istio.
func sliceService(es *discoveryv1.EndpointSlice) (types.NamespacedName, bool) {
	if es == nil || es.AddressType == discoveryv1.AddressTypeFQDN {
		return types.NamespacedName{}, false
	}
	name, ok := es.Labels[discoveryv1.LabelServiceName]
	if !ok || name == "" {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: es.Namespace, Name: name}, true
}

// NodeLocality returns a node's locality as Istio derives it: region and
// zone from topology.kubernetes.io/region and /zone, subzone from
// topology.istio.io/subzone; nil when the node has none of them.
func NodeLocality(n *corev1.Node) *workloadapi.Locality {
	if n == nil {
		return nil
	}
	l := &workloadapi.Locality{
		Region:  n.Labels[corev1.LabelTopologyRegion],
		Zone:    n.Labels[corev1.LabelTopologyZone],
		Subzone: n.Labels[LabelTopologySubzone],
	}
	if l.Region == "" && l.Zone == "" && l.Subzone == "" {
		return nil
	}
	return l
}

func (idx *Index) namespace(name string) *corev1.Namespace { return idx.namespaces[name] }

// cloneOrNil copies an index's shared message into one result, so that no
// two results alias it.
func cloneOrNil[M proto.Message](m M) M {
	var zero M
	if any(m) == any(zero) {
		return zero
	}
	return proto.Clone(m).(M)
}
