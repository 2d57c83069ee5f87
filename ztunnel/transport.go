package ztunnel

import (
	"context"
	"net"
	"net/http"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/quicfallback"
	"github.com/ambientmesh/ambient/internal/redirect"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/ztunnel/outbound"
)

// dialTunnel opens rt's tunnel over the transport its peer asks for: QUIC,
// unless QUIC to that address failed lately, with HTTP/2 as the fallback
// within ctx (one connect timeout; internal/quicfallback), else HTTP/2.
// It returns the transport that carried the tunnel, or that failed last.
func (p *podProxy) dialTunnel(ctx context.Context, rt outbound.Route, from net.Addr) (net.Conn, workloadapi.TunnelTransport, error) {
	ap, _ := netip.ParseAddrPort(from.String())
	return dialPreferringQUIC(ctx, p, rt, hbone.ForwardedFor(ap, false), p.client3.Dial, p.client.Dial)
}

// dialPreferringQUIC is dialTunnel's choice of transport for any kind of
// tunnel, whose Forwarded header is forwarded (hbone.ForwardedFor):
// overQUIC and overH2 open one for a target.
func dialPreferringQUIC[T any](ctx context.Context, p *podProxy, rt outbound.Route, forwarded string,
	overQUIC, overH2 func(context.Context, hbone.Target) (T, error)) (T, workloadapi.TunnelTransport, error) {
	t := hbone.Target{
		Source: p.id, Destination: rt.Identity, Address: rt.TunnelAddr, Authority: rt.Target,
		Header: http.Header{"Forwarded": {forwarded}},
	}
	return quicfallback.Dial(ctx, p.z.quicDown, t, rt.Transport == workloadapi.TunnelTransport_QUIC,
		quicfallback.Budget(p.z.cfg.ConnectTimeout), overQUIC, overH2, p.z.quicFailed)
}

// listenQUIC opens the UDP socket of one outbound QUIC connection inside
// the pod's namespace, from the pod's address and marked as ztunnel's own.
func (p *podProxy) listenQUIC(_ context.Context, _ spiffeid.ID, dst netip.AddrPort) (net.PacketConn, error) {
	local := netip.AddrPortFrom(p.addrFor(dst.Addr()), 0)
	c, err := netns.ListenUDP(p.nsPath, local.String(), netns.WithMark(redirect.ZtunnelMark))
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return c, nil
}

// addrFor is the pod's address of dst's family, else that family's
// unspecified address (the kernel picks).
func (p *podProxy) addrFor(dst netip.Addr) netip.Addr {
	v4 := dst.Unmap().Is4()
	for _, a := range p.ips {
		if a.Is4() == v4 {
			return a
		}
	}
	if v4 {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// transportName names a tunnel transport in flow records and metrics.
func transportName(t workloadapi.TunnelTransport) string {
	if t == workloadapi.TunnelTransport_QUIC {
		return telemetry.TransportHBONE3
	}
	return telemetry.TransportHBONE
}
