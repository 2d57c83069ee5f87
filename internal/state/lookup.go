package state

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// DestinationKind says what an original destination address is.
type DestinationKind int

const (
	// Passthrough: the address is outside the mesh; forward plain TCP.
	Passthrough DestinationKind = iota
	// ToService: the address is a service VIP.
	ToService
	// ToWorkload: the address is a workload's own IP.
	ToWorkload
)

func (k DestinationKind) String() string {
	switch k {
	case Passthrough:
		return "passthrough"
	case ToService:
		return "service"
	case ToWorkload:
		return "workload"
	}
	return fmt.Sprintf("DestinationKind(%d)", int(k))
}

// Destination is what [View.Resolve] found at an address.
type Destination struct {
	Kind DestinationKind
	// Addr is the address that was resolved.
	Addr netip.AddrPort
	// Service is set for ToService.
	Service *workloadapi.Service
	// ServicePort is, for ToService, the service's port entry whose
	// service_port is Addr's port; nil when the service does not expose that
	// port (the connection should then be refused).
	ServicePort *workloadapi.Port
	// Workload is set for ToWorkload.
	Workload *workloadapi.Workload
}

// Resolve classifies an original destination seen by a client on network:
// a service VIP wins over a workload IP; anything else is outside the mesh.
func (v *View) Resolve(network string, dst netip.AddrPort) Destination {
	ip := dst.Addr().Unmap()
	if svc := v.ServiceByAddr(network, ip); svc != nil {
		return Destination{Kind: ToService, Addr: dst, Service: svc, ServicePort: servicePort(svc, dst.Port())}
	}
	if w := v.WorkloadByAddr(network, ip); w != nil {
		return Destination{Kind: ToWorkload, Addr: dst, Workload: w}
	}
	return Destination{Kind: Passthrough, Addr: dst}
}

func servicePort(svc *workloadapi.Service, port uint16) *workloadapi.Port {
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == uint32(port) {
			return p
		}
	}
	return nil
}

// TargetPort is the port on workload w that receives traffic sent to port of
// svc: the workload's own mapping in Workload.services if it has a non-zero
// one, else the service's target port if non-zero. ok is false when the
// service does not expose port or neither gives a target (a named target
// port that this workload lacks).
func TargetPort(svc *workloadapi.Service, port uint16, w *workloadapi.Workload) (target uint16, ok bool) {
	sp := servicePort(svc, port)
	if sp == nil {
		return 0, false
	}
	for _, p := range w.GetServices()[ServiceKey(svc)].GetPorts() {
		if p.GetServicePort() == uint32(port) && p.GetTargetPort() != 0 {
			return uint16(p.GetTargetPort()), true
		}
	}
	if sp.GetTargetPort() != 0 {
		return uint16(sp.GetTargetPort()), true
	}
	return 0, false
}

// Errors of PickEndpoint, wrapped with the service and port.
var (
	ErrNoSuchPort = errors.New("service does not expose the port")
	ErrNoEndpoint = errors.New("no eligible endpoint")
)

// Rand is the random source PickEndpoint draws from; *math/rand/v2.Rand
// satisfies it.
type Rand interface {
	IntN(n int) int
}

// Endpoint is the workload chosen to serve a connection.
type Endpoint struct {
	Workload *workloadapi.Workload
	// Port is the target port on the workload.
	Port uint16
	// Addr is the workload's first address with Port; invalid for a workload
	// known only by hostname.
	Addr netip.AddrPort
}

// AddrFor is the endpoint's address of dst's family, with Port: a client
// that asked for a service's IPv6 address reaches the endpoint's IPv6
// address on a dual-stack cluster, as Istio's ztunnel chooses. Without an
// address of that family, Addr.
func (e Endpoint) AddrFor(dst netip.Addr) netip.AddrPort {
	v4 := dst.Unmap().Is4()
	if !e.Addr.IsValid() || e.Addr.Addr().Is4() == v4 {
		return e.Addr
	}
	for _, b := range e.Workload.GetAddresses() {
		if a, ok := addrOf(b); ok && a.Is4() == v4 {
			return netip.AddrPortFrom(a, e.Port)
		}
	}
	return e.Addr
}

// PickEndpoint chooses uniformly at random, using r, one endpoint of svc
// that can serve port ([View.EligibleEndpoints]). Nothing else is preferred
// yet. It fails with [ErrNoSuchPort] when svc does not expose port and
// [ErrNoEndpoint] when no endpoint qualifies.
func (v *View) PickEndpoint(svc *workloadapi.Service, port uint16, r Rand) (Endpoint, error) {
	eligible, err := v.EligibleEndpoints(svc, port)
	if err != nil {
		return Endpoint{}, err
	}
	return eligible[r.IntN(len(eligible))], nil
}

// EligibleEndpoints returns, in uid order, the endpoints of svc that can
// serve port: healthy (or any, under the service's ALLOW_ALL health
// policy) and with a target port for it (see [TargetPort]). It fails with
// [ErrNoSuchPort] when svc does not expose port and [ErrNoEndpoint] when
// no endpoint qualifies.
func (v *View) EligibleEndpoints(svc *workloadapi.Service, port uint16) ([]Endpoint, error) {
	if servicePort(svc, port) == nil {
		return nil, fmt.Errorf("state: service %s port %d: %w", ServiceKey(svc), port, ErrNoSuchPort)
	}
	allowUnhealthy := svc.GetLoadBalancing().GetHealthPolicy() == workloadapi.LoadBalancing_ALLOW_ALL
	all := v.Endpoints(svc)
	var eligible []Endpoint
	for _, w := range all {
		if !allowUnhealthy && w.GetStatus() != workloadapi.WorkloadStatus_HEALTHY {
			continue
		}
		tp, ok := TargetPort(svc, port, w)
		if !ok {
			continue
		}
		ep := Endpoint{Workload: w, Port: tp}
		if addrs := w.GetAddresses(); len(addrs) > 0 {
			if a, ok := addrOf(addrs[0]); ok {
				ep.Addr = netip.AddrPortFrom(a, tp)
			}
		}
		eligible = append(eligible, ep)
	}
	if len(eligible) == 0 {
		return nil, fmt.Errorf("state: service %s port %d: %d endpoints, none healthy with a target port: %w",
			ServiceKey(svc), port, len(all), ErrNoEndpoint)
	}
	return eligible, nil
}

// PoliciesFor returns the authorization policies that apply to w, each once,
// in this order: GLOBAL-scoped, NAMESPACE-scoped in w's namespace (each group
// sorted by name), then those named in w.authorization_policies
// ("namespace/name") in the order listed, whatever their scope, as Istio's
// ztunnel does. Names with no policy (not received yet) are skipped.
func (v *View) PoliciesFor(w *workloadapi.Workload) []*security.Authorization {
	ns := v.nsPolicies[w.GetNamespace()]
	out := make([]*security.Authorization, 0, len(v.globalPolicies)+len(ns)+len(w.GetAuthorizationPolicies()))
	out = append(out, v.globalPolicies...)
	out = append(out, ns...)
	for _, name := range w.GetAuthorizationPolicies() {
		p := v.policies[name]
		if p == nil || slices.Contains(out, p) {
			continue // missing (yet), or already included by its scope
		}
		out = append(out, p)
	}
	return out
}

// TunnelProtocol is how traffic to w is carried; NONE for nil.
func TunnelProtocol(w *workloadapi.Workload) workloadapi.TunnelProtocol {
	return w.GetTunnelProtocol()
}

// Enrolled reports whether w is captured by ztunnel: its tunnel protocol is
// HBONE.
func Enrolled(w *workloadapi.Workload) bool {
	return TunnelProtocol(w) == workloadapi.TunnelProtocol_HBONE
}
