// Package outbound decides how ztunnel carries a connection an enrolled pod
// opened: the pure routing step between "the pod dialled this original
// destination" and a socket. A service VIP becomes one of its endpoints; an
// enrolled destination is reached through an HBONE tunnel to its pod's port
// 15008, authenticated as the destination workload's identity; a workload
// outside ambient mode is reached directly in plaintext; an address the mesh
// does not know is passed through untouched.
package outbound

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/ztunnel/state"
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
}

// ErrNoRoute wraps every refusal: the connection is closed.
var ErrNoRoute = errors.New("outbound: no route")

// DefaultTrustDomain applies to workloads whose trust_domain is empty.
var DefaultTrustDomain = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)

// Plan routes a connection from network to the original destination dst.
func Plan(v *state.View, network string, dst netip.AddrPort, r state.Rand) (Route, error) {
	d := v.Resolve(network, dst)
	switch d.Kind {
	case state.ToService:
		ep, err := v.PickEndpoint(d.Service, dst.Port(), r)
		if err != nil {
			return Route{}, fmt.Errorf("%w to %s: %w", ErrNoRoute, dst, err)
		}
		if !ep.Addr.IsValid() {
			return Route{}, fmt.Errorf("%w to %s: endpoint %s has no address", ErrNoRoute, dst, ep.Workload.GetUid())
		}
		return toWorkload(ep.Workload, d.Service, ep.Addr)
	case state.ToWorkload:
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
	return rt, nil
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
