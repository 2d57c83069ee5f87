// Package outbound decides how ztunnel carries a connection an enrolled pod
// opened: the pure routing step between "the pod dialled this original
// destination" and a socket. A service VIP becomes one of its endpoints; an
// enrolled destination is reached through an HBONE tunnel to its pod's port
// 15008, authenticated as the destination workload's identity; a workload
// outside ambient mode is reached directly in plaintext; an address the mesh
// does not know is passed through untouched.
//
// A destination bound to a waypoint (Service.waypoint for traffic to a
// service address, Workload.waypoint for traffic to a pod address, as
// istiod-lite sets them from istio.io/use-waypoint and the waypoint's
// istio.io/waypoint-for) is reached through the waypoint instead: an HBONE
// tunnel to one of the waypoint's pods, authenticated as that pod's
// identity, whose :authority is the original destination (the service VIP
// and port, or the pod address), so the waypoint applies its routes and
// policies and picks the endpoint itself. A waypoint that cannot be
// resolved refuses the connection: it never falls back to bypassing the
// waypoint and its policies.
//
// A tunnel's transport is the tunnel peer's choice (Workload.tunnel_transport
// of the destination pod, or of the waypoint pod when through one): HBONE
// over HTTP/2 on TCP, or over HTTP/3 on QUIC (UDP, same port). The caller
// falls back from QUIC to HTTP/2 when the QUIC path fails.
//
// UDP flows are planned by PlanUDP: the same, but never through a waypoint
// (waypoints proxy TCP only).
package outbound

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// HBONEPort is where every enrolled pod receives tunnels.
const HBONEPort = 15008

// Kind is how a connection is carried.
type Kind int

const (
	// Passthrough: not a mesh address; plain TCP to the original destination.
	Passthrough Kind = iota
	// Tunnel: HBONE to the endpoint's pod, as the source pod's identity.
	Tunnel
	// Direct: the endpoint is in the mesh but not enrolled; plain TCP to it.
	Direct
)

func (k Kind) String() string {
	switch k {
	case Passthrough:
		return "passthrough"
	case Tunnel:
		return "hbone"
	case Direct:
		return "direct"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Route is the plan for one outbound connection.
type Route struct {
	Kind Kind
	// Target is the address the bytes are for: the endpoint ip:target-port
	// (the :authority of the tunnel), or the original destination.
	Target netip.AddrPort
	// TunnelAddr is the HBONE server, Target's pod on port 15008 (Tunnel only).
	TunnelAddr netip.AddrPort
	// Workload and Service describe the destination, when the mesh knows it.
	Workload *workloadapi.Workload
	Service  *workloadapi.Service
	// Identity is the identity the tunnel's server must present (Tunnel only).
	Identity spiffeid.ID
	// Waypoint is the waypoint pod the tunnel goes to, when the
	// destination is bound to one; Target is then the original destination.
	Waypoint *workloadapi.Workload
	// Transport is how the tunnel's peer asks to be reached (Tunnel only):
	// QUIC when its workload says so, else H2.
	Transport workloadapi.TunnelTransport
}

// ErrNoRoute wraps every refusal: the connection is closed.
var ErrNoRoute = errors.New("outbound: no route")

// DefaultTrustDomain applies to workloads whose trust_domain is empty.
var DefaultTrustDomain = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)

// Plan routes a connection from network to the original destination dst.
func Plan(v *state.View, network string, dst netip.AddrPort, r state.Rand) (Route, error) {
	return plan(v, network, dst, r, true)
}

// PlanUDP routes a UDP flow from network to the original destination dst
// as Plan routes a TCP connection, except that it never goes through a
// waypoint: waypoints proxy TCP only (as Istio's do), so a UDP flow to a
// destination bound to one is tunnelled straight to the endpoint's pod,
// where its ztunnel applies the destination's L4 policies.
func PlanUDP(v *state.View, network string, dst netip.AddrPort, r state.Rand) (Route, error) {
	return plan(v, network, dst, r, false)
}

func plan(v *state.View, network string, dst netip.AddrPort, r state.Rand, waypoints bool) (Route, error) {
	d := v.Resolve(network, dst)
	switch d.Kind {
	case state.ToService:
		if wp := d.Service.GetWaypoint(); wp != nil && waypoints {
			return toWaypoint(v, network, wp, Route{Target: dst, Service: d.Service}, r)
		}
		ep, err := v.PickEndpoint(d.Service, dst.Port(), r)
		if err != nil {
			return Route{}, fmt.Errorf("%w to %s: %w", ErrNoRoute, dst, err)
		}
		if !ep.Addr.IsValid() {
			return Route{}, fmt.Errorf("%w to %s: endpoint %s has no address", ErrNoRoute, dst, ep.Workload.GetUid())
		}
		return toWorkload(ep.Workload, d.Service, ep.AddrFor(dst.Addr()))
	case state.ToWorkload:
		if wp := d.Workload.GetWaypoint(); wp != nil && state.Enrolled(d.Workload) && waypoints {
			return toWaypoint(v, network, wp, Route{Target: dst, Workload: d.Workload}, r)
		}
		return toWorkload(d.Workload, nil, dst)
	default:
		return Route{Kind: Passthrough, Target: dst}, nil
	}
}

// toWorkload routes to target, an address of w.
func toWorkload(w *workloadapi.Workload, svc *workloadapi.Service, target netip.AddrPort) (Route, error) {
	rt := Route{Kind: Direct, Target: target, Workload: w, Service: svc}
	if !state.Enrolled(w) {
		return rt, nil
	}
	id, err := WorkloadID(w)
	if err != nil {
		return Route{}, fmt.Errorf("%w to %s: %w", ErrNoRoute, target, err)
	}
	rt.Kind = Tunnel
	rt.Identity = id
	rt.TunnelAddr = netip.AddrPortFrom(target.Addr(), HBONEPort)
	rt.Transport = TransportOf(w)
	return rt, nil
}

// TransportOf is the transport w asks tunnels to it to use: QUIC only when
// its tunnel_transport says so; H2 when unset and for any value this
// version does not know (every HBONE workload serves H2).
func TransportOf(w *workloadapi.Workload) workloadapi.TunnelTransport {
	if w.GetTunnelTransport() == workloadapi.TunnelTransport_QUIC {
		return workloadapi.TunnelTransport_QUIC
	}
	return workloadapi.TunnelTransport_H2
}

// toWaypoint completes rt (Target, and the destination's Service or
// Workload) with a tunnel to one pod of the waypoint gw names: gw is the
// waypoint's Service, by hostname or by address, and the pod is one of its
// endpoints on the HBONE port.
func toWaypoint(v *state.View, network string, gw *workloadapi.GatewayAddress, rt Route, r state.Rand) (Route, error) {
	port := uint16(gw.GetHboneMtlsPort())
	if port == 0 {
		port = HBONEPort
	}
	svc := v.WaypointService(network, gw)
	if svc == nil {
		return Route{}, fmt.Errorf("%w to %s: its waypoint %s is not a known service", ErrNoRoute, rt.Target, waypointName(gw))
	}
	ep, err := v.PickEndpoint(svc, port, r)
	if err != nil {
		return Route{}, fmt.Errorf("%w to %s: waypoint: %w", ErrNoRoute, rt.Target, err)
	}
	if !ep.Addr.IsValid() {
		return Route{}, fmt.Errorf("%w to %s: waypoint pod %s has no address", ErrNoRoute, rt.Target, ep.Workload.GetUid())
	}
	id, err := WorkloadID(ep.Workload)
	if err != nil {
		return Route{}, fmt.Errorf("%w to %s: waypoint: %w", ErrNoRoute, rt.Target, err)
	}
	rt.Kind = Tunnel
	rt.Identity = id
	rt.TunnelAddr = netip.AddrPortFrom(ep.Addr.Addr(), HBONEPort)
	rt.Waypoint = ep.Workload
	rt.Transport = TransportOf(ep.Workload)
	return rt, nil
}

// waypointName describes gw for errors.
func waypointName(gw *workloadapi.GatewayAddress) string {
	if h := gw.GetHostname(); h != nil {
		return h.GetNamespace() + "/" + h.GetHostname()
	}
	if ip, ok := netip.AddrFromSlice(gw.GetAddress().GetAddress()); ok {
		return ip.Unmap().String()
	}
	return "(no address)"
}

// WorkloadID is the SPIFFE identity of w.
func WorkloadID(w *workloadapi.Workload) (spiffeid.ID, error) {
	td := DefaultTrustDomain
	if s := w.GetTrustDomain(); s != "" {
		var err error
		if td, err = spiffeid.TrustDomainFromString(s); err != nil {
			return spiffeid.ID{}, fmt.Errorf("workload %s: trust domain %q: %w", w.GetUid(), s, err)
		}
	}
	sa := w.GetServiceAccount()
	if sa == "" {
		sa = "default"
	}
	id, err := identity.ForWorkload(td, w.GetNamespace(), sa)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload %s: %w", w.GetUid(), err)
	}
	return id, nil
}
