package state

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// NetworkAddr is an IP on a network; "" is the default network.
type NetworkAddr struct {
	Network string
	Addr    netip.Addr
}

// View is an immutable, indexed snapshot of the mesh. All its methods are
// pure lookups, safe for concurrent use without locks.
type View struct {
	version uint64

	// Primary maps, by resource name.
	workloads map[string]*workloadapi.Workload
	services  map[string]*workloadapi.Service
	policies  map[string]*security.Authorization

	// Indexes derived from the primary maps by build.
	workloadByAddr  map[NetworkAddr]*workloadapi.Workload
	workloadsByNode map[string][]*workloadapi.Workload // sorted by uid
	serviceByAddr   map[NetworkAddr]*workloadapi.Service
	endpoints       map[string][]*workloadapi.Workload   // service name → workloads, sorted by uid
	globalPolicies  []*security.Authorization            // sorted by name
	nsPolicies      map[string][]*security.Authorization // namespace → NAMESPACE-scoped, sorted by name
}

// addrOf converts a 4- or 16-byte IP to an unmapped netip.Addr.
func addrOf(b []byte) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(b)
	return a.Unmap(), ok
}

func byUID(a, b *workloadapi.Workload) int { return cmp.Compare(a.GetUid(), b.GetUid()) }

func byPolicyName(a, b *security.Authorization) int { return cmp.Compare(PolicyKey(a), PolicyKey(b)) }

// build derives the indexes from the primary maps, which it takes over.
//
// Conflicts are settled deterministically: when two workloads claim the same
// (network, IP) — for instance a terminating pod whose IP was already reused
// — a healthy one wins over an unhealthy one, then the smaller uid; when two
// services claim one VIP, the smaller "namespace/hostname" wins.
func build(version uint64, w map[string]*workloadapi.Workload, s map[string]*workloadapi.Service, p map[string]*security.Authorization) *View {
	v := &View{
		version:         version,
		workloads:       w,
		services:        s,
		policies:        p,
		workloadByAddr:  make(map[NetworkAddr]*workloadapi.Workload, len(w)),
		workloadsByNode: make(map[string][]*workloadapi.Workload),
		serviceByAddr:   make(map[NetworkAddr]*workloadapi.Service, len(s)),
		endpoints:       make(map[string][]*workloadapi.Workload),
		nsPolicies:      make(map[string][]*security.Authorization),
	}
	for _, wl := range w {
		if wl.GetNode() != "" {
			v.workloadsByNode[wl.GetNode()] = append(v.workloadsByNode[wl.GetNode()], wl)
		}
		for svc := range wl.GetServices() {
			v.endpoints[svc] = append(v.endpoints[svc], wl)
		}
		if wl.GetNetworkMode() == workloadapi.NetworkMode_HOST_NETWORK {
			continue // shares the node's IP: never looked up by address
		}
		for _, b := range wl.GetAddresses() {
			a, ok := addrOf(b)
			if !ok {
				continue
			}
			k := NetworkAddr{wl.GetNetwork(), a}
			if old := v.workloadByAddr[k]; old == nil || betterOwner(wl, old) {
				v.workloadByAddr[k] = wl
			}
		}
	}
	for _, l := range v.workloadsByNode {
		slices.SortFunc(l, byUID)
	}
	for _, l := range v.endpoints {
		slices.SortFunc(l, byUID)
	}
	for name, svc := range s {
		for _, na := range svc.GetAddresses() {
			a, ok := addrOf(na.GetAddress())
			if !ok || (na.Length != nil && int(na.GetLength()) != a.BitLen()) {
				continue // not a single host; a VIP is always one
			}
			k := NetworkAddr{na.GetNetwork(), a}
			if old := v.serviceByAddr[k]; old == nil || name < ServiceKey(old) {
				v.serviceByAddr[k] = svc
			}
		}
	}
	for _, pol := range p {
		switch pol.GetScope() {
		case security.Scope_GLOBAL:
			v.globalPolicies = append(v.globalPolicies, pol)
		case security.Scope_NAMESPACE:
			v.nsPolicies[pol.GetNamespace()] = append(v.nsPolicies[pol.GetNamespace()], pol)
		}
	}
	slices.SortFunc(v.globalPolicies, byPolicyName)
	for _, l := range v.nsPolicies {
		slices.SortFunc(l, byPolicyName)
	}
	return v
}

// betterOwner reports whether w should own an address over old.
func betterOwner(w, old *workloadapi.Workload) bool {
	wh, oh := w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY, old.GetStatus() == workloadapi.WorkloadStatus_HEALTHY
	if wh != oh {
		return wh
	}
	return w.GetUid() < old.GetUid()
}

// Version counts the writes that led to this view: 0 for the empty initial
// state, incremented by every successful Apply or Replace. A non-zero version
// means config has been received at least once.
func (v *View) Version() uint64 { return v.version }

// Workload returns the workload with the given uid, or nil.
func (v *View) Workload(uid string) *workloadapi.Workload { return v.workloads[uid] }

// WorkloadByAddr returns the workload at (network, ip), or nil. Host-network
// workloads are never found by address.
func (v *View) WorkloadByAddr(network string, ip netip.Addr) *workloadapi.Workload {
	return v.workloadByAddr[NetworkAddr{network, ip.Unmap()}]
}

// WorkloadsOnNode returns the workloads whose Workload.node is node, sorted
// by uid. The slice is shared: do not modify it.
func (v *View) WorkloadsOnNode(node string) []*workloadapi.Workload { return v.workloadsByNode[node] }

// Service returns the service named "namespace/hostname", or nil.
func (v *View) Service(namespace, hostname string) *workloadapi.Service {
	return v.services[namespace+"/"+hostname]
}

// ServiceByAddr returns the service with VIP (network, ip), or nil.
func (v *View) ServiceByAddr(network string, ip netip.Addr) *workloadapi.Service {
	return v.serviceByAddr[NetworkAddr{network, ip.Unmap()}]
}

// WaypointService is the Service a waypoint reference names, by hostname or
// by address (an address without a network is in network); nil when the
// view has no such Service.
func (v *View) WaypointService(network string, gw *workloadapi.GatewayAddress) *workloadapi.Service {
	switch d := gw.GetDestination().(type) {
	case *workloadapi.GatewayAddress_Hostname:
		return v.Service(d.Hostname.GetNamespace(), d.Hostname.GetHostname())
	case *workloadapi.GatewayAddress_Address:
		if ip, ok := addrOf(d.Address.GetAddress()); ok {
			return v.ServiceByAddr(cmp.Or(d.Address.GetNetwork(), network), ip)
		}
	}
	return nil
}

// Endpoints returns the workloads that back svc (those whose Workload.services
// has the key "namespace/hostname"), sorted by uid, healthy or not. The slice
// is shared: do not modify it.
func (v *View) Endpoints(svc *workloadapi.Service) []*workloadapi.Workload {
	return v.endpoints[ServiceKey(svc)]
}

// Policy returns the authorization named "namespace/name", or nil.
func (v *View) Policy(namespace, name string) *security.Authorization {
	return v.policies[namespace+"/"+name]
}

// Snapshot returns every resource of the view, each kind sorted by name: the
// shape of a config dump, and what [Store.Replace] would take to rebuild it.
func (v *View) Snapshot() Snapshot {
	snap := Snapshot{
		Workloads: sortedValues(v.workloads),
		Services:  sortedValues(v.services),
		Policies:  sortedValues(v.policies),
	}
	return snap
}

func sortedValues[T any](m map[string]T) []T {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]T, 0, len(m))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}
