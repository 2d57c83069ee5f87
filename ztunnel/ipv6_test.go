package ztunnel

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// TestZtunnel_IPv6: in a dual-stack topology, traffic between the pods'
// IPv6 addresses is meshed as their IPv4 traffic is. TCP is tunnelled with
// both identities, and only IPv6 tunnel packets, never the app's bytes,
// cross the node link. A dual-stack service's IPv6 VIP is captured and
// tunnelled to the pod's IPv6 address. With UDP capture, a DNS-style query is answered
// through the tunnel over HTTP/2 and over QUIC, the app seeing the client
// pod's IPv6 address. An L4 policy refuses a caller over IPv6 as over IPv4.
func TestZtunnel_IPv6(t *testing.T) {
	m := newMeshOn(t, testenv.Spec{Nodes: 2, PodsPerNode: 2, DualStack: true},
		func(c *Config) { c.CaptureUDP, c.UDPIdleTimeout = true, 500*time.Millisecond })
	alice, bob, server := m.topo.Pod(1, 1), m.topo.Pod(1, 2), m.topo.Pod(2, 1)

	t.Run("TCP across nodes", func(t *testing.T) {
		capture := m.topo.Nodes[1].Capture(t)
		if err := roundTripAddr(t, alice, server.Addr6(8080)); err != nil {
			t.Fatal(err)
		}
		capture.Stop()
		var v6 int
		for _, p := range capture.Packets() {
			if p.Src.Port() != 15008 && p.Dst.Port() != 15008 {
				t.Fatalf("packet outside the tunnel on the node link: %v -> %v", p.Src, p.Dst)
			}
			if bytes.Contains(p.Payload, []byte("hello from")) {
				t.Fatalf("app bytes in clear on the node link: %q", p.Payload)
			}
			if p.Dst.Addr() == server.IP6 || p.Src.Addr() == server.IP6 {
				v6++
			}
		}
		if v6 == 0 {
			t.Fatal("no IPv6 tunnel packet to or from the server pod on the node link")
		}
		for i, reporter := range []string{"source", "destination"} {
			findFlow(t, m.logs[i], map[string]any{"reporter": reporter, "src.identity": id("alice"),
				"dst.identity": id("server"), "dst.addr": server.Addr6(8080), "decision": "allow", "transport": "hbone"})
		}
	})

	t.Run("dual-stack service", func(t *testing.T) {
		const vip4, vip6 = "10.96.0.10", "fd00:10:96::10"
		const host = "server.shop.svc.cluster.local"
		m.setWorkload(t, server, func(w *workloadapi.Workload) {
			w.Services = map[string]*workloadapi.PortList{"shop/" + host: {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}}
		})
		if err := m.store.Apply(state.Update{Services: []*workloadapi.Service{{
			Name: "server", Namespace: "shop", Hostname: host,
			Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(vip4).AsSlice()}, {Address: netip.MustParseAddr(vip6).AsSlice()}},
			Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}},
		}}}); err != nil {
			t.Fatal(err)
		}
		// Each VIP reaches the endpoint's address of its own family.
		for _, tc := range []struct{ vip, endpoint string }{
			{"[" + vip6 + "]:80", server.Addr6(8080)},
			{vip4 + ":80", server.Addr(8080)},
		} {
			if err := roundTripAddr(t, alice, tc.vip); err != nil {
				t.Fatalf("%s: %v", tc.vip, err)
			}
			findFlow(t, m.logs[0], map[string]any{"reporter": "source", "src.identity": id("alice"), "dst.identity": id("server"),
				"dst.service": host, "dst.addr": tc.endpoint, "decision": "allow"})
		}
	})

	t.Run("UDP over HTTP/2 and QUIC", func(t *testing.T) {
		res := startResolver(t, server, 5353)
		for _, tc := range []struct {
			transport string
			tr        workloadapi.TunnelTransport
		}{{"hbone", workloadapi.TunnelTransport_H2}, {"hbone3", workloadapi.TunnelTransport_QUIC}} {
			m.setTransport(t, server, tc.tr)
			waitFor(t, "server transport", func() bool {
				return m.store.Current().Workload(podUID(server)).GetTunnelTransport() == tc.tr
			})
			query := "hello from alice over IPv6 and " + tc.transport
			answer, err := udpQuery(t, alice, netip.AddrPortFrom(server.IP6, 5353), query, 10*time.Second)
			if err != nil || answer != "answer to "+query {
				t.Fatalf("%s: answer %q, %v", tc.transport, answer, err)
			}
			if src := <-res.seen; src.Addr() != alice.IP6 {
				t.Fatalf("%s: the app saw the query from %s, want the client pod's IPv6 address %s", tc.transport, src, alice.IP6)
			}
			findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "protocol": "udp", "transport": tc.transport,
				"src.identity": id("alice"), "dst.identity": id("server"), "decision": "allow"})
		}
	})

	t.Run("L4 policy", func(t *testing.T) {
		m.applyPolicy(t, allowOnly("alice"), server)
		if err := roundTripAddr(t, alice, server.Addr6(8080)); err != nil {
			t.Fatalf("alice refused: %v", err)
		}
		if err := roundTripAddr(t, bob, server.Addr6(8080)); err == nil {
			t.Fatal("bob was let through over IPv6")
		}
		findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("bob"), "decision": "deny"})
	})
}
