package ztunnel

import (
	"cmp"
	"net"
	"net/netip"
	"slices"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/ztunnel/outbound"
)

// DebugSnapshot is what the admin server shows of the pods being served: a
// copy, safe to keep and marshal.
type DebugSnapshot struct {
	Pods []PodDebug `json:"pods"`
}

// PodDebug describes one served pod.
type PodDebug struct {
	UID       string `json:"uid"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Identity is the pod's SPIFFE ID, derived from its Workload.
	Identity string `json:"identity,omitempty"`
	// IP is the pod's first address.
	IP string `json:"ip,omitempty"`
	// Netns is the path of the pod's network namespace.
	Netns string `json:"netns"`
	// Serving is true once the pod's listeners and capture rules are up.
	Serving     bool        `json:"serving"`
	Connections []ConnDebug `json:"connections"`
	// Tunnels are the pod's pooled outbound tunnel connections, HTTP/2 and
	// HTTP/3, with their transport's measurements of the path.
	Tunnels []hbone.TunnelStats `json:"tunnels"`
}

// ConnDebug describes one open connection or UDP flow of a pod: for
// inbound ones, the connection (or UDP socket) from ztunnel to the app;
// for outbound TCP, the upstream connection (tunnel or passthrough); for
// outbound UDP, the app's socket and the original destination.
type ConnDebug struct {
	Direction string `json:"direction"` // "inbound" or "outbound"
	Protocol  string `json:"protocol"`  // "tcp" or "udp"
	Local     string `json:"local"`
	Remote    string `json:"remote"`
	// Peer is the verified identity of an inbound connection's source
	// (empty for plaintext).
	Peer string `json:"peer,omitempty"`
	// SrcIP is an inbound connection's source IP.
	SrcIP string `json:"srcIp,omitempty"`
	// Port is an inbound connection's destination port.
	Port uint16 `json:"port,omitempty"`
}

// Debug returns a snapshot of the served pods and their open connections,
// sorted by pod uid, then direction and addresses. It reads only fields set
// at construction or guarded by the locks pod.go documents (z.mu for the pod
// map, p.mu for the workload and connections), never the fields start
// writes, so it is safe while pods start and stop.
func (z *Ztunnel) Debug() DebugSnapshot {
	z.mu.Lock()
	pods := make([]*podProxy, 0, len(z.pods))
	for _, p := range z.pods {
		pods = append(pods, p)
	}
	z.mu.Unlock()

	snap := DebugSnapshot{Pods: make([]PodDebug, 0, len(pods))}
	for _, p := range pods {
		snap.Pods = append(snap.Pods, p.debug())
	}
	slices.SortFunc(snap.Pods, func(a, b PodDebug) int { return cmp.Compare(a.UID, b.UID) })
	return snap
}

// debug describes p. uid and nsPath are immutable; the rest is read under p.mu.
func (p *podProxy) debug() PodDebug {
	p.mu.Lock()
	w := p.w
	open := make([]*trackedConn, 0, len(p.conns))
	for t := range p.conns {
		open = append(open, t)
	}
	p.mu.Unlock()

	d := PodDebug{
		UID: p.uid, Name: w.GetName(), Namespace: w.GetNamespace(), Netns: p.nsPath,
		Serving: p.serving(), Connections: make([]ConnDebug, 0, len(open)),
	}
	if id, err := outbound.WorkloadID(w); err == nil {
		d.Identity = id.String()
	}
	if addrs := w.GetAddresses(); len(addrs) > 0 {
		if ip, ok := netip.AddrFromSlice(addrs[0]); ok {
			d.IP = ip.Unmap().String()
		}
	}
	for _, t := range open {
		c := ConnDebug{Direction: "outbound", Protocol: protocolOf(t.LocalAddr()), Local: addrString(t.LocalAddr()), Remote: addrString(t.RemoteAddr())}
		if in, ok := t.inbound(); ok {
			c.Direction = "inbound"
			c.Port = in.dst.Port()
			if !in.peer.IsZero() {
				c.Peer = in.peer.String()
			}
			if in.srcIP.IsValid() {
				c.SrcIP = in.srcIP.Unmap().String()
			}
		}
		d.Connections = append(d.Connections, c)
	}
	// Outbound UDP flows are not tracked connections (they end at the pod's
	// shutdown, not by policy); the flow table lists them. udpOut is set
	// by start before up, which serving reads.
	if p.serving() && p.udpOut != nil {
		d.Connections = p.udpOut.debugFlows(d.Connections)
	}
	// The tunnel clients, like udpOut, are set before up.
	d.Tunnels = []hbone.TunnelStats{}
	if p.serving() {
		d.Tunnels = append(append(d.Tunnels, p.client.Tunnels()...), p.client3.Tunnels()...)
		hbone.SortTunnels(d.Tunnels)
	}
	slices.SortFunc(d.Connections, func(a, b ConnDebug) int {
		return cmp.Or(cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Protocol, b.Protocol),
			cmp.Compare(a.Remote, b.Remote), cmp.Compare(a.Local, b.Local))
	})
	return d
}

// protocolOf names the transport protocol of a connection's address.
func protocolOf(a net.Addr) string {
	if _, ok := a.(*net.UDPAddr); ok {
		return "udp"
	}
	return "tcp"
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
