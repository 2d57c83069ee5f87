package proxy

import (
	"cmp"
	"context"
	"net"
	"time"

	"github.com/ambientmesh/ambient/internal/authz"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/waypoint/l7authz"
)

// l4DialTimeout bounds the upstream connect of an L4 tunnel.
const l4DialTimeout = 10 * time.Second

// serveL4 forwards a tunnel that does not carry HTTP as bytes: to an
// endpoint of the destination service (or the addressed workload), after
// the waypoint's own policies (those targeting its Gateway, GatewayClass
// or the Service, judged as TCP traffic: l7authz.EvaluateConnection) and
// then the destination workload's L4 policies (internal/authz) allow the
// tunnel's client. The endpoint's ztunnel then sees the waypoint's
// identity and applies its own policies too.
func (p *Proxy) serveL4(c net.Conn, info *tunnelInfo) {
	view := p.cfg.Store.Current()
	f := telemetry.Flow{Start: time.Now(), Reporter: "waypoint", Decision: telemetry.Allow,
		Security: "mutual_tls", Transport: info.transport, Src: p.srcPeer(view, info)}
	defer func() {
		f.Duration = time.Since(f.Start)
		if p.cfg.FlowLog != nil {
			p.cfg.FlowLog.Record(f)
		}
	}()
	dst := view.Resolve(p.cfg.Network, info.authority)
	up := upstream{port: info.authority.Port(), family: info.authority.Addr()}
	var svcNS, svcName string
	switch dst.Kind {
	case state.ToService:
		up.svc = dst.Service
		svcNS, svcName = dst.Service.GetNamespace(), dst.Service.GetName()
		f.Dst.Service = dst.Service.GetHostname()
	case state.ToWorkload:
		up.workload, up.addr = dst.Workload, info.authority
	default:
		f.Error = "destination is no longer in the mesh"
		c.Close()
		return
	}
	az := l7authz.EvaluateConnection(p.l7.Load().policiesFor(p.targets, svcNS, svcName), &l7authz.Connection{
		Source: info.authz, SourceIP: info.peerAddr.Addr().Unmap(), RemoteIP: info.remote,
		DestinationIP: info.authority.Addr().Unmap(), DestinationPort: info.authority.Port(),
	})
	if !az.Allow {
		f.Decision, f.Policy, f.Error = telemetry.Deny, az.Policy, "denied: "+az.Reason
		c.Close()
		return
	}
	ep, peer, _, err := p.pick(view, p.memoFor(view), up, nil)
	if err != nil {
		f.Error = err.Error()
		c.Close()
		return
	}
	f.Dst = peer
	f.Dst.Service = up.svc.GetHostname()
	d := authz.Evaluate(authz.Connection{SrcIdentity: info.peer, SrcIP: info.peerAddr.Addr().Unmap(),
		DstIP: ep.Addr.Addr().Unmap(), DstPort: ep.Port, DstNamespace: ep.Workload.GetNamespace()},
		view.PoliciesFor(ep.Workload))
	if !d.Allowed {
		f.Decision, f.Policy, f.Error = telemetry.Deny, d.Policy, "denied: "+d.Reason
		c.Close()
		return
	}
	f.Policy = cmp.Or(d.Policy, az.Policy)
	ctx, cancel := context.WithTimeout(context.Background(), l4DialTimeout)
	upc, err := p.dialConn(ctx, "tcp", ep.Addr.String())
	cancel()
	if err != nil {
		f.Error = err.Error()
		c.Close()
		return
	}
	toClient, toUpstream, err := hbone.Splice(upc, c)
	f.BytesSent, f.BytesRecv = toUpstream, toClient
	if err != nil {
		f.Error = err.Error()
	}
}
