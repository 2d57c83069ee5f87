package controller

import (
	"cmp"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/istiod-lite/translate"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// Input is everything one recomputation reads: the cluster's objects as the
// informers hold them.
type Input struct {
	Namespaces            []*corev1.Namespace
	Pods                  []*corev1.Pod
	Services              []*corev1.Service
	Nodes                 []*corev1.Node
	EndpointSlices        []*discoveryv1.EndpointSlice
	Gateways              []*gatewayv1.Gateway
	GatewayClasses        []*gatewayv1.GatewayClass
	HTTPRoutes            []*gatewayv1.HTTPRoute
	GRPCRoutes            []*gatewayv1.GRPCRoute
	ReferenceGrants       []*gatewayv1.ReferenceGrant
	AuthorizationPolicies []translate.AuthorizationPolicy
	PeerAuthentications   []translate.PeerAuthentication
	DestinationRules      []translate.DestinationRule
	LocalTrafficPolicies  []translate.LocalTrafficPolicy

	Translate     translate.Config
	RootNamespace string
}

// Output is the full resource set served to ztunnel, keyed by xDS resource
// name ([xds.AddressName], [xds.AuthorizationName]), plus the status
// conditions of each AuthorizationPolicy keyed "namespace/name".
type Output struct {
	Addresses      map[string]*workloadapi.Address
	Authorizations map[string]*security.Authorization
	Conditions     map[string][]translate.Condition
	// Routes are the waypoints' routing tables, keyed by
	// [waypointapi.ResourceName]; RouteStatus the HTTPRoutes' per-parent
	// status (see [translate.HTTPRoutes]).
	Routes      map[string]*waypointapi.ServiceRoutes
	RouteStatus []translate.RouteStatus
	// WaypointPolicies are the AuthorizationPolicies with targetRefs,
	// which waypoints enforce, keyed "namespace/name".
	WaypointPolicies map[string]*waypointapi.AuthorizationPolicy
	// Resilience is each Service's resilience policy (DestinationRules and
	// LocalTrafficPolicies), keyed by its name, the service key;
	// DestinationRuleStatus and LocalTrafficPolicyStatus the conditions of
	// those rules and policies, keyed "namespace/name" (see
	// [translate.Resilience]).
	Resilience               map[string]*waypointapi.ServiceResilience
	DestinationRuleStatus    map[string][]translate.Condition
	LocalTrafficPolicyStatus map[string][]translate.Condition
	// InvalidTunnelTransports are the namespaces and pods whose
	// ambientmesh.io/tunnel-transport annotation was ignored (their pods
	// get h2), with why (see [translate.InvalidTunnelTransports]).
	InvalidTunnelTransports map[string]string
}

// Compute translates a snapshot of the cluster into the resources
// istiod-lite serves: one Address per pod that is a workload (with
// authorization_policies from [translate.PolicyNames] and
// [translate.PeerAuthenticationNames]) and per service, one Authorization per
// AuthorizationPolicy ztunnel enforces, and the policies PeerAuthentications
// convert to; the waypoints' routing tables from the HTTPRoutes (their
// cross-namespace backendRefs permitted by the ReferenceGrants); and each
// Service's resilience policy from DestinationRules and
// LocalTrafficPolicies. It is a pure function.
func Compute(in Input) Output {
	out := Output{
		Addresses:        make(map[string]*workloadapi.Address),
		Authorizations:   make(map[string]*security.Authorization),
		Conditions:       make(map[string][]translate.Condition),
		Routes:           make(map[string]*waypointapi.ServiceRoutes),
		WaypointPolicies: make(map[string]*waypointapi.AuthorizationPolicy),
		Resilience:       make(map[string]*waypointapi.ServiceResilience),
	}
	idx := translate.NewIndex(translate.Cluster{
		Namespaces: in.Namespaces, Services: in.Services, Nodes: in.Nodes,
		EndpointSlices: in.EndpointSlices, Gateways: in.Gateways, GatewayClasses: in.GatewayClasses,
		ReferenceGrants: in.ReferenceGrants, Config: in.Translate,
	})
	// Deterministic order: PeerAuthenticationNames breaks creation-time ties
	// by position.
	aps := slices.Clone(in.AuthorizationPolicies)
	slices.SortFunc(aps, func(a, b translate.AuthorizationPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	pas := slices.Clone(in.PeerAuthentications)
	slices.SortFunc(pas, func(a, b translate.PeerAuthentication) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})

	for _, pod := range in.Pods {
		w := translate.Workload(pod, idx)
		if w == nil {
			continue
		}
		names := append(translate.PolicyNames(pod, aps, in.RootNamespace),
			translate.PeerAuthenticationNames(pod, pas, in.RootNamespace)...)
		if len(names) > 0 {
			w.AuthorizationPolicies = names
		}
		a := &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
		out.Addresses[xds.AddressName(a)] = a
	}
	for _, svc := range in.Services {
		s := translate.Service(svc, idx)
		if s == nil {
			continue
		}
		a := &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
		out.Addresses[xds.AddressName(a)] = a
	}
	for _, ap := range aps {
		p, conds := translate.Authorization(ap, in.RootNamespace)
		out.Conditions[ap.Namespace+"/"+ap.Name] = conds
		if p != nil {
			out.Authorizations[xds.AuthorizationName(p)] = p
		}
		// A spec that decoded always encodes again: no error to report.
		if wp, ok, err := translate.WaypointPolicy(ap); ok && err == nil {
			out.WaypointPolicies[wp.Key()] = wp
		}
	}
	for _, p := range translate.PeerAuthentications(pas, in.RootNamespace) {
		out.Authorizations[xds.AuthorizationName(p)] = p
	}
	routes := slices.Clip(in.HTTPRoutes)
	for _, g := range in.GRPCRoutes {
		routes = append(routes, translate.GRPCRouteAsHTTP(g))
	}
	tables, status := translate.HTTPRoutes(routes, idx)
	for _, t := range tables {
		out.Routes[t.Name()] = t
	}
	out.RouteStatus = status
	res := translate.Resilience(translate.ResilienceInput{
		DestinationRules: in.DestinationRules, LocalTrafficPolicies: in.LocalTrafficPolicies,
		Services: in.Services, Config: in.Translate, RootNamespace: in.RootNamespace,
	})
	for _, p := range res.Policies {
		out.Resilience[p.Name()] = p
	}
	out.DestinationRuleStatus, out.LocalTrafficPolicyStatus = res.DestinationRuleStatus, res.LocalTrafficPolicyStatus
	out.InvalidTunnelTransports = translate.InvalidTunnelTransports(in.Namespaces, in.Pods)
	return out
}
