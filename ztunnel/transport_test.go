package ztunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/metricstest"
	"github.com/ambientmesh/ambient/internal/quicfallback"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// fakeClock is a Config.Clock that moves only when told.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// setTransport makes pod p ask for tr.
func (m *mesh) setTransport(t testing.TB, p *testenv.Pod, tr workloadapi.TunnelTransport) {
	t.Helper()
	m.setWorkload(t, p, func(w *workloadapi.Workload) { w.TunnelTransport = tr })
}

// proxyOf returns the proxy node n's ztunnel runs for pod p.
func (m *mesh) proxyOf(t testing.TB, n int, p *testenv.Pod) *podProxy {
	t.Helper()
	z := m.zt[n-1]
	z.mu.Lock()
	defer z.mu.Unlock()
	pp := z.pods[podUID(p)]
	if pp == nil {
		t.Fatalf("node %d serves no pod %s", n, podUID(p))
	}
	return pp
}

// bulkRoundTrip sends size random bytes from pod `from` to `to`:8080 and
// checks the echo, byte for byte.
func bulkRoundTrip(t *testing.T, from, to *testenv.Pod, size int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, to.Addr(8080))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	msg := make([]byte, size)
	rand.Read(msg)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		t.Fatalf("write: %v", werr)
	}
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo of %d bytes differs (got %d bytes)", size, len(got))
	}
}

// tunnelPackets counts the captured packets to or from port 15008, UDP
// and TCP, and fails on any other packet or on app bytes in clear.
func tunnelPackets(t *testing.T, c *testenv.Capture) (udp, tcp int) {
	t.Helper()
	for _, p := range c.Packets() {
		if p.Src.Port() != 15008 && p.Dst.Port() != 15008 {
			t.Fatalf("packet outside the tunnel on the node link: proto %d %v -> %v", p.Proto, p.Src, p.Dst)
		}
		if bytes.Contains(p.Payload, []byte("hello from")) {
			t.Fatalf("app bytes in clear on the node link: %q", p.Payload)
		}
		switch p.Proto {
		case unix.IPPROTO_UDP:
			udp++
		case unix.IPPROTO_TCP:
			tcp++
		}
	}
	return udp, tcp
}

// TestZtunnel_QUICDestinationIsReachedOverUDP: a destination whose
// workload asks for QUIC is reached over HBONE/3 on UDP 15008 — only UDP
// 15008 crosses the node link, never TCP 15008 — with every byte intact;
// both ends' flow records and the tunnel metric say hbone3. The server's
// transport changes at run time: its ztunnel listens on UDP 15008 anyway.
func TestZtunnel_QUICDestinationIsReachedOverUDP(t *testing.T) {
	m := newMesh(t)
	alice, bob, server := m.topo.Pod(1, 1), m.topo.Pod(1, 2), m.topo.Pod(2, 1)
	m.setTransport(t, server, workloadapi.TunnelTransport_QUIC)

	capture := m.topo.Nodes[1].Capture(t)
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatal(err)
	}
	const size = 4 << 20
	bulkRoundTrip(t, alice, server, size)
	capture.Stop()
	udp, tcp := tunnelPackets(t, capture)
	t.Logf("node link: %d UDP 15008 packets, %d TCP 15008 packets", udp, tcp)
	if udp == 0 || tcp != 0 {
		t.Fatalf("node link carried %d UDP and %d TCP packets of port 15008; want UDP only", udp, tcp)
	}

	f := findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"),
		"dst.identity": id("server"), "decision": "allow", "transport": "hbone3", "bytes_sent": float64(size)})
	if f["bytes_received"].(float64) != size {
		t.Errorf("destination flow counted %v bytes back, want %d: %v", f["bytes_received"], size, f)
	}
	findFlow(t, m.logs[0], map[string]any{"reporter": "source", "src.identity": id("alice"),
		"dst.identity": id("server"), "decision": "allow", "transport": "hbone3", "bytes_sent": float64(size)})
	for i, reporter := range []string{"source", "destination"} {
		waitFor(t, reporter+" tunnel metric", func() bool {
			return metricstest.Sum(t, m.regs[i], "ambient_tunnel_connections_total", map[string]string{"reporter": reporter, "transport": "hbone3"}) >= 2
		})
		if n := metricstest.Sum(t, m.regs[i], "ambient_tunnel_connections_total", map[string]string{"transport": "hbone"}); n != 0 {
			t.Errorf("%s counted %v HTTP/2 tunnels, want 0", reporter, n)
		}
	}
	if n := metricstest.Sum(t, m.regs[1], "istio_tcp_connections_closed_total", map[string]string{
		"reporter": "destination", "source_principal": "cluster.local/ns/shop/sa/alice", "connection_security_policy": "mutual_tls",
	}); n < 2 {
		t.Errorf("Istio's TCP metrics counted %v QUIC-carried connections, want 2", n)
	}

	// /debug/connections shows the pooled QUIC connection with quic-go's
	// measurements of the path it has just carried 8 MiB over.
	tun := onlyTunnel(t, m.zt[0], alice, server, id("server"))
	if tun.Transport != "hbone3" || tun.Path == nil || tun.Path.Congestion != "reno" || tun.Path.SmoothedRTT <= 0 || tun.Path.CongestionWindow == 0 || tun.Path.Sent < size/1500 {
		t.Errorf("alice's tunnel to the server = %+v (path %+v), want hbone3 with quic-go's algorithm, RTT, window and packets sent", tun, tun.Path)
	}

	t.Run("same node", func(t *testing.T) {
		m.setTransport(t, alice, workloadapi.TunnelTransport_QUIC)
		if err := roundTrip(t, bob, alice); err != nil {
			t.Fatal(err)
		}
		findFlow(t, m.logs[0], map[string]any{"reporter": "destination", "src.identity": id("bob"),
			"dst.identity": id("alice"), "transport": "hbone3"})
	})
}

// TestZtunnel_HTTP2RemainsTheDefault: a destination that asks for nothing
// is reached over TCP 15008 only, as before QUIC existed.
func TestZtunnel_HTTP2RemainsTheDefault(t *testing.T) {
	m := newMesh(t)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	capture := m.topo.Nodes[1].Capture(t)
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatal(err)
	}
	capture.Stop()
	if udp, tcp := tunnelPackets(t, capture); udp != 0 || tcp == 0 {
		t.Fatalf("node link carried %d UDP and %d TCP packets of port 15008; want TCP only", udp, tcp)
	}
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"), "transport": "hbone"})
	findFlow(t, m.logs[0], map[string]any{"reporter": "source", "src.identity": id("alice"), "transport": "hbone"})
	waitFor(t, "tunnel metric", func() bool {
		return metricstest.Sum(t, m.regs[0], "ambient_tunnel_connections_total", map[string]string{"reporter": "source", "transport": "hbone"}) >= 1
	})
	// /debug/connections shows the pooled TCP connection with the
	// kernel's TCP_INFO.
	tun := onlyTunnel(t, m.zt[0], alice, server, id("server"))
	if tun.Transport != "hbone" || tun.Path == nil || tun.Path.Congestion == "" || tun.Path.SmoothedRTT <= 0 || tun.Path.CongestionWindow == 0 || tun.Path.Sent == 0 {
		t.Errorf("alice's tunnel to the server = %+v (path %+v), want hbone with the socket's algorithm, RTT, window and segments sent", tun, tun.Path)
	}
}

// TestZtunnel_TunnelCongestionControl: with TunnelCongestion set, the
// HBONE connection runs that algorithm at both ends — the one alice's
// ztunnel dials and the one the server's 15008 accepts — whatever the
// pods' namespaces default to.
func TestZtunnel_TunnelCongestionControl(t *testing.T) {
	m := newMesh(t, func(c *Config) { c.TunnelCongestion = "reno" })
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	for _, p := range []*testenv.Pod{alice, server} {
		if err := p.Sysctl("net.ipv4.tcp_congestion_control", "cubic"); err != nil {
			t.Fatalf("pod %s default cubic: %v", p.Name, err)
		}
	}
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatal(err)
	}
	if tun := onlyTunnel(t, m.zt[0], alice, server, id("server")); tun.Path == nil || tun.Path.Congestion != "reno" {
		t.Errorf("alice's tunnel path %+v, want reno", tun.Path)
	}
	out, err := server.Command(context.Background(), "ss", "-Htin", "state", "established", "( sport = :15008 )").CombinedOutput()
	if err != nil {
		t.Fatalf("ss in the server pod: %v: %s", err, out)
	}
	if !strings.Contains(string(out), " reno ") || strings.Contains(string(out), "cubic") {
		t.Errorf("the server's accepted tunnel socket does not run reno:\n%s", out)
	}
}

// onlyTunnel is the one pooled tunnel connection z's debug snapshot shows
// for pod from, which must lead to pod to and its identity peer.
func onlyTunnel(t *testing.T, z *Ztunnel, from, to *testenv.Pod, peer string) hbone.TunnelStats {
	t.Helper()
	for _, pd := range z.Debug().Pods {
		if pd.IP != from.IP.String() {
			continue
		}
		if len(pd.Tunnels) != 1 {
			t.Fatalf("pod %s has %d pooled tunnels, want 1: %+v", pd.Name, len(pd.Tunnels), pd.Tunnels)
		}
		tun := pd.Tunnels[0]
		if want := netip.AddrPortFrom(to.IP, 15008).String(); tun.Remote != want || tun.Peer != peer {
			t.Fatalf("pod %s's tunnel goes to %s (%s), want %s (%s)", pd.Name, tun.Remote, tun.Peer, want, peer)
		}
		return tun
	}
	t.Fatalf("no pod with IP %s in the debug snapshot", from.IP)
	return hbone.TunnelStats{}
}

// dropQUIC makes node n drop the UDP 15008 packets it would forward to its
// pods, as a firewall blocking QUIC would; the returned func lifts it.
func dropQUIC(t *testing.T, node *testenv.Node) (lift func()) {
	t.Helper()
	nft := func(script string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := node.Command(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft in %s: %v: %s", node.Name, err, out)
		}
	}
	nft("table inet amt_block_quic {\n chain block {\n  type filter hook forward priority 0; policy accept;\n  udp dport 15008 drop\n }\n}\n")
	return func() { nft("delete table inet amt_block_quic\n") }
}

// TestZtunnel_BlockedQUICFallsBackToHTTP2: with UDP 15008 dropped on the
// way, a connection to a QUIC destination still succeeds, over HTTP/2,
// within one connect timeout; the failure is remembered, so the next
// connection goes straight to HTTP/2 (no UDP 15008 on the wire at all);
// once the memory expires QUIC is tried again and, unblocked, carries it.
func TestZtunnel_BlockedQUICFallsBackToHTTP2(t *testing.T) {
	const connectTimeout, retryAfter = 2 * time.Second, 5 * time.Minute
	clk := newFakeClock()
	m := newMesh(t, func(c *Config) { c.ConnectTimeout, c.QUICRetryAfter, c.Clock = connectTimeout, retryAfter, clk.now })
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	m.setTransport(t, server, workloadapi.TunnelTransport_QUIC)
	lift := dropQUIC(t, m.topo.Nodes[1])
	fallbacks := func() float64 { return metricstest.Sum(t, m.regs[0], "ambient_tunnel_quic_fallbacks_total", nil) }

	start := time.Now()
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatalf("connection with QUIC blocked: %v", err)
	}
	first := time.Since(start)
	t.Logf("first connection, QUIC blocked: %v (QUIC budget %v, connect timeout %v)", first, quicfallback.Budget(connectTimeout), connectTimeout)
	if first < quicfallback.Budget(connectTimeout) || first >= connectTimeout {
		t.Errorf("fallback took %v; want QUIC tried for %v, then HTTP/2, all within %v", first, quicfallback.Budget(connectTimeout), connectTimeout)
	}
	findFlow(t, m.logs[0], map[string]any{"reporter": "source", "src.identity": id("alice"), "transport": "hbone", "decision": "allow"})
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"), "transport": "hbone", "decision": "allow"})
	if n := fallbacks(); n != 1 {
		t.Fatalf("fallbacks = %v, want 1", n)
	}

	// The abandoned handshake has ended (it is bounded by the QUIC budget
	// too): from here any UDP 15008 packet would be a new attempt.
	client := m.proxyOf(t, 1, alice).client3
	waitFor(t, "the failed QUIC handshake to end", func() bool { conns, _ := client.PoolStats(); return conns == 0 })
	capture := m.topo.Nodes[0].Capture(t)
	start = time.Now()
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatal(err)
	}
	second := time.Since(start)
	capture.Stop()
	t.Logf("second connection, failure remembered: %v", second)
	if udp, tcp := tunnelPackets(t, capture); udp != 0 || tcp == 0 {
		t.Fatalf("while remembered: %d UDP and %d TCP packets of port 15008; want no QUIC attempt, TCP only", udp, tcp)
	}
	if second >= quicfallback.Budget(connectTimeout) || fallbacks() != 1 {
		t.Errorf("second connection took %v with %v fallbacks; want straight to HTTP/2", second, fallbacks())
	}

	lift()
	clk.advance(retryAfter)
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatal(err)
	}
	findFlow(t, m.logs[0], map[string]any{"reporter": "source", "src.identity": id("alice"), "transport": "hbone3"})
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"), "transport": "hbone3"})
}

func denyAlice() *security.Authorization {
	deny := allowOnly("alice")
	deny.Name, deny.Action = "deny-alice", security.Action_DENY
	return deny
}

func (m *mesh) applyPolicy(t testing.TB, p *security.Authorization, on *testenv.Pod) {
	t.Helper()
	if err := m.store.Apply(state.Update{Policies: []*security.Authorization{p}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "policy", func() bool {
		return len(m.store.Current().PoliciesFor(m.store.Current().Workload(podUID(on)))) == 1
	})
}

// TestZtunnel_QUICDenialIsNotRetriedOverHTTP2: a QUIC tunnel the
// destination's policy refuses (401) fails the client's connection; it is
// not asked again over HTTP/2 (no TCP 15008 on the wire, no HTTP/2 stream
// at the destination) and the failure is not taken for a broken QUIC path.
func TestZtunnel_QUICDenialIsNotRetriedOverHTTP2(t *testing.T) {
	m := newMesh(t)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	m.setTransport(t, server, workloadapi.TunnelTransport_QUIC)
	m.applyPolicy(t, denyAlice(), server)

	capture := m.topo.Nodes[1].Capture(t)
	if err := roundTrip(t, alice, server); err == nil {
		t.Fatal("alice was let through a DENY policy")
	}
	f := findFlow(t, m.logs[0], map[string]any{"reporter": "source", "src.identity": id("alice"), "transport": "hbone3", "decision": "deny"})
	if !strings.Contains(fmt.Sprint(f["error"]), "401") {
		t.Errorf("source flow does not carry the refusal: %v", f)
	}
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"), "transport": "hbone3",
		"decision": "deny", "policy": "shop/deny-alice"})
	capture.Stop()
	if udp, tcp := tunnelPackets(t, capture); udp == 0 || tcp != 0 {
		t.Fatalf("node link carried %d UDP and %d TCP packets of port 15008; want the QUIC attempt only", udp, tcp)
	}
	for _, f := range m.logs[1].JSONLines(t) {
		if f["transport"] == "hbone" {
			t.Fatalf("the denied tunnel was retried over HTTP/2: %v", f)
		}
	}
	if n := metricstest.Sum(t, m.regs[0], "ambient_tunnel_quic_fallbacks_total", nil); n != 0 || m.zt[0].quicDown.Len() != 0 {
		t.Fatalf("a denial counted as a QUIC failure: %v fallbacks, %d remembered", n, m.zt[0].quicDown.Len())
	}
}

// TestZtunnel_NewDenyClosesOpenQUICConnection: a policy change closes an
// open connection carried over HBONE/3 that it no longer allows, as it
// does over HTTP/2.
func TestZtunnel_NewDenyClosesOpenQUICConnection(t *testing.T) {
	m := newMesh(t)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	m.setTransport(t, server, workloadapi.TunnelTransport_QUIC)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := alice.Dial(ctx, server.Addr(8080))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	var in []ConnDebug
	for _, pd := range m.zt[1].Debug().Pods {
		for _, c := range pd.Connections {
			if c.Direction == "inbound" {
				in = append(in, c)
			}
		}
	}
	if len(in) != 1 || in[0].Peer != id("alice") || in[0].SrcIP != alice.IP.String() || in[0].Port != 8080 {
		t.Fatalf("inbound connections on the server's node = %+v, want one from %s (%s) to port 8080", in, id("alice"), alice.IP)
	}
	m.applyPolicy(t, denyAlice(), server)
	if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
		t.Fatalf("read after deny: %v", err)
	}
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"), "transport": "hbone3",
		"decision": "deny", "policy": "shop/deny-alice"})
}

// TestZtunnel_DrainServesQUICUntilTheLastConnectionEnds: a stopping
// ztunnel keeps serving HBONE/3, new connections included, while an open
// one drains, and exits once it ends, as over HTTP/2.
func TestZtunnel_DrainServesQUICUntilTheLastConnectionEnds(t *testing.T) {
	m := newMesh(t)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	m.setTransport(t, server, workloadapi.TunnelTransport_QUIC)
	drainWithHeldConnection(t, m, alice, server)
	var quic int
	for _, f := range m.logs[1].JSONLines(t) {
		if f["reporter"] == "destination" && f["transport"] == "hbone3" && f["decision"] == "allow" {
			quic++
		}
	}
	if quic != 2 {
		t.Fatalf("%d connections recorded over hbone3 at the destination, want 2 (the held one and the one opened while draining)", quic)
	}
}
