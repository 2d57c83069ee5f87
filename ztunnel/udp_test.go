package ztunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/metricstest"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/quicfallback"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// udpMesh is newMesh with UDP capture on both nodes and UDP flows that
// end after idle (so that their records come soon).
func udpMesh(t *testing.T, idle time.Duration) *mesh {
	return newMesh(t, func(c *Config) { c.CaptureUDP, c.UDPIdleTimeout = true, idle })
}

// resolver is a DNS-style UDP app: it answers each query with "answer to "
// and the query, and reports the source address of each query it saw.
type resolver struct {
	seen chan netip.AddrPort
}

func startResolver(t *testing.T, p *testenv.Pod, port uint16) *resolver {
	t.Helper()
	c, err := netns.ListenUDP(p.Path, fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &resolver{seen: make(chan netip.AddrPort, 64)}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, src, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case r.seen <- src:
			default:
			}
			c.WriteToUDPAddrPort(append([]byte("answer to "), buf[:n]...), src)
		}
	}()
	return r
}

// udpQuery sends query from pod `from` to `to` as an app would (a
// connected UDP socket, not marked: captured) and returns the answer.
func udpQuery(t *testing.T, from *testenv.Pod, to netip.AddrPort, query string, wait time.Duration) (string, error) {
	t.Helper()
	c, err := netns.DialUDP(context.Background(), from.Path, to.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return udpAsk(c, query, wait)
}

func udpAsk(c *net.UDPConn, query string, wait time.Duration) (string, error) {
	if _, err := c.Write([]byte(query)); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func udpAddr(p *testenv.Pod, port uint16) netip.AddrPort { return netip.AddrPortFrom(p.IP, port) }

// TestZtunnel_UDPRequestResponseCarriesCallerIdentity: with CaptureUDP, a
// DNS-style query from a pod to a pod on the other node is answered
// through the tunnel, over HTTP/2 and, when the server asks for QUIC,
// over HTTP/3 datagrams; nothing but tunnel traffic crosses the node link;
// the app sees the client app's socket (the pod's IP, the app's port) as
// the source; both ends record the
// flow as UDP with the client's identity and the bytes each way.
func TestZtunnel_UDPRequestResponseCarriesCallerIdentity(t *testing.T) {
	for _, tc := range []struct {
		transport string
		tr        workloadapi.TunnelTransport
	}{{"hbone", workloadapi.TunnelTransport_H2}, {"hbone3", workloadapi.TunnelTransport_QUIC}} {
		t.Run(tc.transport, func(t *testing.T) {
			// A mesh each: no straggler of the other transport on the link.
			m := udpMesh(t, 500*time.Millisecond)
			alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
			res := startResolver(t, server, 5353)
			m.setTransport(t, server, tc.tr)
			waitFor(t, "server transport", func() bool {
				return m.store.Current().Workload(podUID(server)).GetTunnelTransport() == tc.tr
			})
			capture := m.topo.Nodes[1].Capture(t)
			query := "hello from " + podUID(alice) + " over " + tc.transport
			c, err := netns.DialUDP(context.Background(), alice.Path, udpAddr(server, 5353).String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			answer, err := udpAsk(c, query, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if answer != "answer to "+query {
				t.Fatalf("answer %q", answer)
			}
			capture.Stop()
			udp, tcp := tunnelPackets(t, capture) // only 15008, never the marker in clear
			if tc.tr == workloadapi.TunnelTransport_QUIC && (udp == 0 || tcp != 0) ||
				tc.tr == workloadapi.TunnelTransport_H2 && (tcp == 0 || udp != 0) {
				t.Fatalf("node link carried %d UDP and %d TCP packets of port 15008 over %s", udp, tcp, tc.transport)
			}
			if src, app := <-res.seen, c.LocalAddr().(*net.UDPAddr).AddrPort(); src.Addr().Unmap() != alice.IP || src.Port() != app.Port() {
				t.Fatalf("the app saw the query from %s, want the client app's socket, %s port %d", src, alice.IP, app.Port())
			}
			want := map[string]any{"src.identity": id("alice"), "dst.identity": id("server"), "decision": "allow",
				"transport": tc.transport, "protocol": "udp", "bytes_sent": float64(len(query)),
				"bytes_received": float64(len("answer to ") + len(query))}
			want["reporter"] = "destination"
			f := findFlow(t, m.logs[1], want)
			if f["error"] != nil {
				t.Errorf("idle end recorded as an error: %v", f)
			}
			want["reporter"] = "source"
			findFlow(t, m.logs[0], want)
			// Counted as UDP, never as TCP, on both sides.
			for i, reporter := range []string{"source", "destination"} {
				labels := map[string]string{"reporter": reporter, "request_protocol": "udp", "source_principal": "cluster.local/ns/shop/sa/alice"}
				if got := metricstest.Sum(t, m.regs[i], "ambient_udp_sent_bytes_total", labels); got != float64(len(query)) {
					t.Errorf("%s ambient_udp_sent_bytes_total = %v, want %d", reporter, got, len(query))
				}
				if got := metricstest.Sum(t, m.regs[i], "istio_tcp_connections_opened_total", map[string]string{"request_protocol": "udp"}); got != 0 {
					t.Errorf("%s counted the UDP flow as a TCP connection", reporter)
				}
			}
		})
	}
}

// TestZtunnel_UDPOneSocketTwoDestinations: one app socket talking to two
// ports of a pod on the other node opens two flows, and each app sees the
// same source, the app's socket: the destination ztunnel binds that
// address once per flow (shared, each socket connected to its app).
func TestZtunnel_UDPOneSocketTwoDestinations(t *testing.T) {
	m := udpMesh(t, 500*time.Millisecond)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	resolvers := []*resolver{startResolver(t, server, 5353), startResolver(t, server, 5354)}
	c, err := netns.ListenUDP(alice.Path, "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	app := c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	for i, port := range []uint16{5353, 5354} {
		if _, err := c.WriteToUDPAddrPort([]byte("q"), udpAddr(server, port)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 64)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != "answer to q" || from.Port() != port {
			t.Fatalf("to port %d: %q from %s, %v", port, buf[:n], from, err)
		}
		if src := <-resolvers[i].seen; src.Addr().Unmap() != alice.IP || src.Port() != app {
			t.Errorf("the app on port %d saw %s, want %s port %d", port, src, alice.IP, app)
		}
	}
}

// TestZtunnel_UDPBlockedQUICFallsBackToHTTP2: a UDP flow to a QUIC
// destination with UDP 15008 dropped on the way is carried over HTTP/2
// capsules instead, within one connect timeout, and the failure is
// remembered for the next flow (no UDP 15008 on the link at all).
func TestZtunnel_UDPBlockedQUICFallsBackToHTTP2(t *testing.T) {
	const connectTimeout = 2 * time.Second
	m := newMesh(t, func(c *Config) {
		c.CaptureUDP, c.UDPIdleTimeout, c.ConnectTimeout = true, 500*time.Millisecond, connectTimeout
	})
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	startResolver(t, server, 5353)
	m.setTransport(t, server, workloadapi.TunnelTransport_QUIC)
	waitFor(t, "server transport", func() bool {
		return m.store.Current().Workload(podUID(server)).GetTunnelTransport() == workloadapi.TunnelTransport_QUIC
	})
	dropQUIC(t, m.topo.Nodes[1])

	start := time.Now()
	answer, err := udpQuery(t, alice, udpAddr(server, 5353), "first", 10*time.Second)
	if err != nil || answer != "answer to first" {
		t.Fatalf("query with QUIC blocked: %q, %v", answer, err)
	}
	took := time.Since(start)
	t.Logf("first flow, QUIC blocked: answered in %v (QUIC budget %v, connect timeout %v)", took, quicfallback.Budget(connectTimeout), connectTimeout)
	if took < quicfallback.Budget(connectTimeout) || took >= connectTimeout {
		t.Errorf("answered after %v; want QUIC tried for %v, then HTTP/2, all within %v", took, quicfallback.Budget(connectTimeout), connectTimeout)
	}
	want := map[string]any{"src.identity": id("alice"), "protocol": "udp", "transport": "hbone", "decision": "allow"}
	want["reporter"] = "source"
	findFlow(t, m.logs[0], want)
	want["reporter"] = "destination"
	findFlow(t, m.logs[1], want)
	if n := metricstest.Sum(t, m.regs[0], "ambient_tunnel_quic_fallbacks_total", nil); n != 1 {
		t.Fatalf("fallbacks = %v, want 1", n)
	}

	// A new flow (another source port) goes straight to HTTP/2.
	client := m.proxyOf(t, 1, alice).client3
	waitFor(t, "the failed QUIC handshake to end", func() bool { conns, _ := client.PoolStats(); return conns == 0 })
	capture := m.topo.Nodes[0].Capture(t)
	if answer, err := udpQuery(t, alice, udpAddr(server, 5353), "second", 10*time.Second); err != nil || answer != "answer to second" {
		t.Fatalf("second query: %q, %v", answer, err)
	}
	capture.Stop()
	if udp, tcp := tunnelPackets(t, capture); udp != 0 || tcp == 0 {
		t.Fatalf("while remembered: %d UDP and %d TCP packets of port 15008; want TCP only", udp, tcp)
	}
}

// TestZtunnel_UDPFlowsInDebugConnections: an open UDP flow is listed by
// /debug/connections on both sides: outbound on the client's node from
// the app's socket to the destination, inbound on the server's with the
// caller's identity.
func TestZtunnel_UDPFlowsInDebugConnections(t *testing.T) {
	m := udpMesh(t, time.Minute)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	startResolver(t, server, 5353)
	c, err := netns.DialUDP(context.Background(), alice.Path, udpAddr(server, 5353).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if answer, err := udpAsk(c, "ping", 10*time.Second); err != nil || answer != "answer to ping" {
		t.Fatalf("query: %q, %v", answer, err)
	}
	app := c.LocalAddr().String()
	conns := func(i int, dir string) []ConnDebug {
		var out []ConnDebug
		for _, pd := range m.zt[i].Debug().Pods {
			for _, cd := range pd.Connections {
				if cd.Direction == dir && cd.Protocol == "udp" {
					out = append(out, cd)
				}
			}
		}
		return out
	}
	if out := conns(0, "outbound"); len(out) != 1 || out[0].Local != app || out[0].Remote != udpAddr(server, 5353).String() {
		t.Fatalf("client node's outbound UDP flows = %+v; want one from %s to %s", out, app, udpAddr(server, 5353))
	}
	in := conns(1, "inbound")
	if len(in) != 1 || in[0].Peer != id("alice") || in[0].SrcIP != alice.IP.String() || in[0].Port != 5353 {
		t.Fatalf("server node's inbound UDP flows = %+v; want one from %s (%s) to port 5353", in, id("alice"), alice.IP)
	}
}

// TestZtunnel_UDPDenyPolicyBlocksFlow: an L4 DENY for the client's
// principal on the server refuses its UDP tunnel (ports are
// protocol-agnostic): no answer, the app sees nothing, and both ends log
// the deny, the destination naming the policy.
func TestZtunnel_UDPDenyPolicyBlocksFlow(t *testing.T) {
	m := udpMesh(t, 500*time.Millisecond)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	res := startResolver(t, server, 5353)
	m.applyPolicy(t, denyAlice(), server)
	if answer, err := udpQuery(t, alice, udpAddr(server, 5353), "hello from alice", 2*time.Second); err == nil {
		t.Fatalf("answered %q through a DENY policy", answer)
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("query: %v, want no answer", err)
	}
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"), "protocol": "udp",
		"decision": "deny", "policy": "shop/deny-alice"})
	findFlow(t, m.logs[0], map[string]any{"reporter": "source", "src.identity": id("alice"), "protocol": "udp", "decision": "deny"})
	select {
	case src := <-res.seen:
		t.Fatalf("the app received a denied datagram from %s", src)
	default:
	}

	// A refused flow is not re-dialled per datagram: 20 more from the same
	// socket within the hold add no tunnel attempt and no record.
	c, err := netns.DialUDP(context.Background(), alice.Path, udpAddr(server, 5353).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := udpAsk(c, "first", 500*time.Millisecond); err == nil {
		t.Fatal("answered through a DENY policy")
	}
	denials := func() int {
		n := 0
		for _, f := range m.logs[1].JSONLines(t) {
			if f["reporter"] == "destination" && f["protocol"] == "udp" && f["decision"] == "deny" {
				n++
			}
		}
		return n
	}
	before := denials()
	for i := range 20 {
		if _, err := c.Write([]byte(fmt.Sprintf("again %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	// A datagram from another socket is a new flow, refused and recorded:
	// once it is, the 20 above had their chance to be recorded too.
	udpQuery(t, alice, udpAddr(server, 5353), "from another socket", 100*time.Millisecond)
	waitFor(t, "the other socket's denial recorded", func() bool { return denials() > before })
	if got := denials() - before; got != 1 {
		t.Fatalf("%d denials recorded at the destination after 20 datagrams of a refused flow and one new flow, want 1", got)
	}
}

// TestZtunnel_UDPIdleFlowExpires: a flow with no datagram for the idle
// timeout ends on both sides (flow records), leaves no flow or reply
// socket behind, and the app's next datagram opens a new flow.
func TestZtunnel_UDPIdleFlowExpires(t *testing.T) {
	m := udpMesh(t, 300*time.Millisecond)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	startResolver(t, server, 5353)
	c, err := netns.DialUDP(context.Background(), alice.Path, udpAddr(server, 5353).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := udpAsk(c, "first", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	app := c.LocalAddr().String()
	findFlow(t, m.logs[0], map[string]any{"reporter": "source", "protocol": "udp", "src.addr": app, "bytes_sent": float64(5)})
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "protocol": "udp", "bytes_sent": float64(5)})
	u := m.proxyOf(t, 1, alice).udpOut
	waitFor(t, "flow table and reply sockets empty", func() bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		return len(u.flows) == 0 && len(u.replies) == 0
	})
	if _, err := udpAsk(c, "second", 10*time.Second); err != nil {
		t.Fatalf("same socket after expiry: %v", err)
	}
	findFlow(t, m.logs[0], map[string]any{"reporter": "source", "protocol": "udp", "src.addr": app, "bytes_sent": float64(6)})
}

// TestZtunnel_UDPFlowDrains: a stopping ztunnel keeps relaying an open
// outbound UDP flow, as it does an open connection: the app's next
// datagram is still answered while it drains, and it exits once the flow
// has been idle for the UDP idle timeout, well before the drain timeout;
// the flow record holds both exchanges.
func TestZtunnel_UDPFlowDrains(t *testing.T) {
	const idle = time.Second
	m := udpMesh(t, idle)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	startResolver(t, server, 5353)
	m.stopZtunnel(1)
	m.startZtunnel(t, 1, func(c *Config) { c.CaptureUDP, c.UDPIdleTimeout, c.DrainTimeout = true, idle, 30*time.Second })
	waitFor(t, "ztunnel 1 ready", func() bool { return m.zt[0].Ready() && len(m.zt[0].Pods()) == 2 })

	c, err := netns.DialUDP(context.Background(), alice.Path, udpAddr(server, 5353).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := udpAsk(c, "before", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { m.stopZtunnel(1); close(stopped) }()
	waitFor(t, "ztunnel 1 draining", m.zt[0].Draining)
	if answer, err := udpAsk(c, "while draining", 10*time.Second); err != nil || answer != "answer to while draining" {
		t.Fatalf("the open flow while draining: %q, %v", answer, err)
	}
	select {
	case <-stopped:
		t.Fatal("ztunnel stopped while its UDP flow was still in use")
	default:
	}
	select {
	case <-stopped:
	case <-time.After(15 * time.Second):
		t.Fatal("ztunnel still draining 15s after its UDP flow went idle")
	}
	findFlow(t, m.logs[0], map[string]any{"reporter": "source", "protocol": "udp", "src.addr": c.LocalAddr().String(),
		"bytes_sent": float64(len("before") + len("while draining"))})
}

// TestZtunnel_UDPPassthroughToPodOutsideTheMesh: UDP to a pod that is not
// enrolled leaves the client pod as sent (from a marked socket) and the
// answers are relayed back.
func TestZtunnel_UDPPassthroughToPodOutsideTheMesh(t *testing.T) {
	m := udpMesh(t, 300*time.Millisecond)
	alice := m.topo.Pod(1, 1)
	out := outsider(t, m)
	res := startResolver(t, out, 5353)
	answer, err := udpQuery(t, alice, udpAddr(out, 5353), "plain query", 10*time.Second)
	if err != nil || answer != "answer to plain query" {
		t.Fatalf("answer %q, %v", answer, err)
	}
	if src := <-res.seen; src.Addr().Unmap() != alice.IP {
		t.Fatalf("the app saw the query from %s, want %s", src, alice.IP)
	}
	findFlow(t, m.logs[0], map[string]any{"reporter": "source", "protocol": "udp", "transport": "direct", "security": "none"})
}

// TestZtunnel_UDPBulkTransferArrivesIntact: 100 MB (10 MB under the race
// detector) in 1,200-byte
// datagrams with app-level flow control (windows of 64, each acknowledged
// by the receiver, resent on a lost ack) arrive intact through the tunnel
// (SHA-256 on both ends).
func TestZtunnel_UDPBulkTransferArrivesIntact(t *testing.T) {
	m := udpMesh(t, 2*time.Second)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	const chunk, window = 1200, 64
	windows := 1366 // 104,908,800 bytes: over 100 MiB
	if raceEnabled {
		windows = 137 // over 10 MiB
	}
	size := chunk * window * windows
	rc, err := netns.ListenUDP(server.Path, "0.0.0.0:9000")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := make(chan [32]byte, 1)
	go receiveWindows(rc, chunk, window, windows, got)

	c, err := netns.DialUDP(context.Background(), alice.Path, udpAddr(server, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	gen := mrand.NewChaCha8([32]byte{1})
	sum := sha256.New()
	data := make([]byte, chunk*window)
	pkt := make([]byte, 4+chunk)
	ack := make([]byte, 16)
	resends := 0
	for w := 0; w < windows; w++ {
		gen.Read(data)
		sum.Write(data)
		for try := 0; ; try++ {
			if try == 20 {
				t.Fatalf("window %d never acknowledged", w)
			}
			for i := range window {
				binary.BigEndian.PutUint32(pkt, uint32(w*window+i))
				copy(pkt[4:], data[i*chunk:(i+1)*chunk])
				if _, err := c.Write(pkt); err != nil {
					t.Fatal(err)
				}
			}
			if waitAck(c, ack, w) {
				break
			}
			resends++
		}
	}
	select {
	case got := <-got:
		if !bytes.Equal(got[:], sum.Sum(nil)) {
			t.Fatal("the receiver's SHA-256 differs from the data sent")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("receiver did not finish")
	}
	el := time.Since(start)
	t.Logf("%d bytes in %v (%.1f MB/s), %d windows resent", size, el, float64(size)/el.Seconds()/1e6, resends)
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"), "protocol": "udp",
		"bytes_sent": float64(size + 4*window*(windows+resends))})
}

// waitAck waits for the acknowledgement of window w, skipping stale ones.
func waitAck(c *net.UDPConn, buf []byte, w int) bool {
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	for {
		n, err := c.Read(buf)
		if err != nil {
			return false
		}
		if n == 4 && int(binary.BigEndian.Uint32(buf)) == w {
			return true
		}
	}
}

// receiveWindows is the bulk receiver: datagrams are [seq uint32][chunk].
// A complete window is hashed and acknowledged (again on a duplicate: the
// ack may have been lost); windows complete in order, since the sender
// waits for each ack. At the end it reports the SHA-256 of the data.
func receiveWindows(c *net.UDPConn, chunk, window, windows int, done chan<- [32]byte) {
	sum := sha256.New()
	data := make([]byte, chunk*window)
	have := make([]bool, window)
	cur, count := 0, 0 // the window being received, and its datagrams so far
	buf := make([]byte, 4+chunk+16)
	for {
		n, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if n != 4+chunk {
			continue
		}
		seq := int(binary.BigEndian.Uint32(buf))
		w, i := seq/window, seq%window
		switch {
		case w < cur: // a resent window already complete: ack again
			c.WriteToUDPAddrPort(binary.BigEndian.AppendUint32(nil, uint32(w)), src)
			continue
		case w > cur: // cannot happen: the sender waits for the ack
			continue
		}
		if have[i] {
			continue
		}
		have[i] = true
		copy(data[i*chunk:], buf[4:n])
		if count++; count < window {
			continue
		}
		sum.Write(data)
		c.WriteToUDPAddrPort(binary.BigEndian.AppendUint32(nil, uint32(w)), src)
		cur, count = cur+1, 0
		clear(have)
		if cur == windows {
			var out [32]byte
			copy(out[:], sum.Sum(nil))
			done <- out
			return
		}
	}
}

// TestZtunnel_UDPNewDenyClosesOpenFlow: a policy change closes an open
// inbound UDP flow it no longer allows, over either transport, and the
// flow's next datagram is refused.
func TestZtunnel_UDPNewDenyClosesOpenFlow(t *testing.T) {
	for _, tr := range []workloadapi.TunnelTransport{workloadapi.TunnelTransport_H2, workloadapi.TunnelTransport_QUIC} {
		t.Run(tr.String(), func(t *testing.T) {
			m := udpMesh(t, time.Minute)
			alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
			m.setTransport(t, server, tr)
			startResolver(t, server, 5353)
			c, err := netns.DialUDP(context.Background(), alice.Path, udpAddr(server, 5353).String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := udpAsk(c, "hello from alice", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			m.applyPolicy(t, denyAlice(), server)
			findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"), "protocol": "udp",
				"decision": "deny", "policy": "shop/deny-alice", "bytes_sent": float64(len("hello from alice"))})
			if answer, err := udpAsk(c, "again", 2*time.Second); err == nil {
				t.Fatalf("answered %q after the deny", answer)
			}
		})
	}
}
