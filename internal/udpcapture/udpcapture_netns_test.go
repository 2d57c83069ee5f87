package udpcapture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/redirect"
	"github.com/ambientmesh/ambient/internal/testenv"
)

// datagram is what a peer socket received.
type datagram struct {
	payload string
	from    netip.AddrPort
}

// peer records every datagram to addr in ns.
func peer(t *testing.T, ns testenv.NS, addr string) <-chan datagram {
	t.Helper()
	c, err := netns.ListenUDP(ns.Path, addr)
	if err != nil {
		t.Fatalf("peer listen %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan datagram, 100)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- datagram{string(buf[:n]), netip.AddrPortFrom(from.Addr().Unmap(), from.Port())}
		}
	}()
	return ch
}

// expect waits for the next datagram from ch.
func expect(t *testing.T, ch <-chan datagram, what string) datagram {
	t.Helper()
	select {
	case d := <-ch:
		return d
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: nothing arrived", what)
		return datagram{}
	}
}

// app opens a connected UDP socket from ns to addr, as an application does.
func app(t *testing.T, ns testenv.NS, addr string, opts ...netns.Option) *net.UDPConn {
	t.Helper()
	c, err := netns.DialUDP(context.Background(), ns.Path, addr, opts...)
	if err != nil {
		t.Fatalf("dial udp %s from %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c *net.UDPConn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("send %q from %s: %v", msg, c.LocalAddr(), err)
	}
}

func recv(t *testing.T, c *net.UDPConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("app %s: no reply: %v", c.LocalAddr(), err)
	}
	return string(buf[:n])
}

// capture reads the next captured datagram.
func capture(t *testing.T, l *Listener) (string, netip.AddrPort, netip.AddrPort) {
	t.Helper()
	l.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, src, od, err := l.ReadFrom(buf)
	if err != nil {
		t.Fatalf("listener: %v", err)
	}
	return string(buf[:n]), src, od
}

// nothingCaptured asserts the listener has nothing (within a short wait).
func nothingCaptured(t *testing.T, l *Listener) {
	t.Helper()
	l.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 1500)
	n, src, od, err := l.ReadFrom(buf)
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("listener got %q from %s to %s (err %v), want nothing", buf[:n], src, od, err)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// routing is the pod's policy routing state as iproute2 shows it.
func routing(t *testing.T, ns testenv.NS) string {
	t.Helper()
	var out []string
	for _, args := range [][]string{
		{"-4", "rule", "show"}, {"-6", "rule", "show"},
		{"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"},
	} {
		b, err := ns.Command(context.Background(), "ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, b)
		}
		out = append(out, "# ip "+strings.Join(args, " "), string(b))
	}
	return strings.Join(out, "\n")
}

func nftRuleset(t *testing.T, ns testenv.NS) string {
	t.Helper()
	b, err := ns.Command(context.Background(), "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, b)
	}
	return string(b)
}

// TestOutboundUDP is the whole outbound story in one enrolled pod a, with
// pod b on another node as "elsewhere".
func TestOutboundUDP(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 2, PodsPerNode: 1})
	a, b := topo.Pod(1, 1), topo.Pod(2, 1)
	dst := netip.MustParseAddrPort(b.Addr(9999))

	before := routing(t, a.NS)
	if err := redirect.Install(a.Path, redirect.Config{CaptureUDP: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Remove(a.Path) })
	installed, rules := routing(t, a.NS), nftRuleset(t, a.NS)
	for _, want := range []string{"fwmark 0x53a/0xfff lookup 1338", "local default dev lo table 1338"} {
		if !strings.Contains(installed, want) {
			t.Errorf("routing lacks %q:\n%s", want, installed)
		}
	}

	l, err := Listen(a.Path, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	at9999, at53 := peer(t, b.NS, "0.0.0.0:9999"), peer(t, b.NS, "0.0.0.0:53")

	c := app(t, a.NS, dst.String())
	var reply *Reply
	parent := t
	t.Run("app's datagram reaches the listener with source and original destination", func(t *testing.T) {
		send(t, c, "hello")
		msg, src, od := capture(t, l)
		if msg != "hello" || src != addrPort(c.LocalAddr()) || od != dst {
			t.Fatalf("captured %q from %s to %s, want %q from %s to %s", msg, src, od, "hello", c.LocalAddr(), dst)
		}
	})
	t.Run("a reply from the original destination reaches the app's connected socket", func(t *testing.T) {
		var err error
		if reply, err = ListenReply(a.Path, dst); err != nil {
			t.Fatal(err)
		}
		parent.Cleanup(func() { reply.Close() }) // used by later subtests
		if _, err := reply.WriteTo([]byte("pong"), addrPort(c.LocalAddr())); err != nil {
			t.Fatal(err)
		}
		// A connected UDP socket accepts only datagrams from the address
		// it is connected to: the reply's source is the original destination.
		if got := recv(t, c); got != "pong" {
			t.Fatalf("app got %q, want pong", got)
		}
	})
	t.Run("the flow's next datagrams still reach the listener, not the reply socket", func(t *testing.T) {
		send(t, c, "again")
		if msg, _, od := capture(t, l); msg != "again" || od != dst {
			t.Fatalf("captured %q to %s", msg, od)
		}
	})
	t.Run("ztunnel's own marked datagrams are not captured", func(t *testing.T) {
		z := app(t, a.NS, dst.String(), netns.WithMark(redirect.ZtunnelMark))
		send(t, z, "from ztunnel")
		// The peer's first datagram is this one: the app's, sent earlier
		// on the same path, never got there.
		if d := expect(t, at9999, "marked datagram at the peer"); d.payload != "from ztunnel" {
			t.Fatalf("peer got %q first, want %q (app datagrams leaked?)", d.payload, "from ztunnel")
		}
	})
	t.Run("DNS is not captured by default", func(t *testing.T) {
		q := app(t, a.NS, b.Addr(53))
		send(t, q, "query")
		if d := expect(t, at53, "DNS at the peer"); d.payload != "query" || d.from != addrPort(q.LocalAddr()) {
			t.Fatalf("peer :53 got %q from %s", d.payload, d.from)
		}
		nothingCaptured(t, l)
	})
	t.Run("allocation-free read and reply", func(t *testing.T) {
		buf, in := make([]byte, 1500), make([]byte, 1500)
		msg := []byte("x")
		to := addrPort(c.LocalAddr())
		// One round trip with deadlines first, so a broken path fails
		// rather than hangs.
		send(t, c, "x")
		if got, _, _ := capture(t, l); got != "x" {
			t.Fatalf("captured %q, want x", got)
		}
		if _, err := reply.WriteTo(msg, to); err != nil {
			t.Fatal(err)
		}
		if got := recv(t, c); got != "x" {
			t.Fatalf("app got %q, want x", got)
		}
		l.SetReadDeadline(time.Now().Add(10 * time.Second))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var failed error
		allocs := testing.AllocsPerRun(50, func() {
			c.Write(msg)
			if _, _, _, err := l.ReadFrom(buf); err != nil {
				failed = err
			}
			reply.WriteTo(msg, to)
			c.Read(in)
		})
		if failed != nil {
			t.Fatal(failed)
		}
		if allocs > 0 {
			t.Errorf("%.1f allocations per round trip, want 0", allocs)
		}
	})

	t.Run("Install again is idempotent", func(t *testing.T) {
		if err := redirect.Install(a.Path, redirect.Config{CaptureUDP: true}); err != nil {
			t.Fatal(err)
		}
		if got := routing(t, a.NS); got != installed {
			t.Errorf("routing after a second Install:\n%s\nafter the first:\n%s", got, installed)
		}
		if got := nftRuleset(t, a.NS); got != rules {
			t.Errorf("rules after a second Install:\n%s\nafter the first:\n%s", got, rules)
		}
	})
	t.Run("CaptureDNS captures DNS", func(t *testing.T) {
		if err := redirect.Install(a.Path, redirect.Config{CaptureUDP: true, CaptureDNS: true}); err != nil {
			t.Fatal(err)
		}
		q := app(t, a.NS, b.Addr(53))
		send(t, q, "query 2")
		if msg, src, od := capture(t, l); msg != "query 2" || src != addrPort(q.LocalAddr()) || od.String() != b.Addr(53) {
			t.Fatalf("captured %q from %s to %s", msg, src, od)
		}
		z := app(t, a.NS, b.Addr(53), netns.WithMark(redirect.ZtunnelMark))
		send(t, z, "sentinel")
		if d := expect(t, at53, "marked DNS at the peer"); d.payload != "sentinel" {
			t.Fatalf("peer :53 got %q first, want sentinel (captured DNS leaked?)", d.payload)
		}
	})
	t.Run("TCP-only Install drops the UDP routing", func(t *testing.T) {
		if err := redirect.Install(a.Path, redirect.Config{}); err != nil {
			t.Fatal(err)
		}
		if got := routing(t, a.NS); got != before {
			t.Errorf("routing after a TCP-only Install:\n%s\nbefore any:\n%s", got, before)
		}
		if err := redirect.Install(a.Path, redirect.Config{CaptureUDP: true}); err != nil {
			t.Fatal(err)
		}
	})

	for range 2 {
		if err := redirect.Remove(a.Path); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("after Remove the app's UDP reaches the peer and nothing is left", func(t *testing.T) {
		send(t, c, "direct")
		if d := expect(t, at9999, "datagram after Remove"); d.payload != "direct" || d.from != addrPort(c.LocalAddr()) {
			t.Fatalf("peer got %q from %s, want direct from %s", d.payload, d.from, c.LocalAddr())
		}
		nothingCaptured(t, l)
		if got := routing(t, a.NS); got != before {
			t.Errorf("routing after Remove:\n%s\nbefore Install:\n%s", got, before)
		}
		if got := nftRuleset(t, a.NS); strings.TrimSpace(got) != "" {
			t.Errorf("rules after Remove:\n%s", got)
		}
	})
}

// addIPv6 gives pods a and b (same node) IPv6 addresses in a private ULA
// prefix, routed through their node as testenv routes IPv4: the node end
// of each pod veth carries the gateway address.
func addIPv6(t *testing.T, a, b *testenv.Pod) (netip.Addr, netip.Addr) {
	t.Helper()
	gw := "fdac:a4b1:e5::1"
	aIP, bIP := netip.MustParseAddr("fdac:a4b1:e5::2"), netip.MustParseAddr("fdac:a4b1:e5::3")
	run := func(ns testenv.NS, args ...string) {
		t.Helper()
		if out, err := ns.Command(context.Background(), "ip", append([]string{"-6"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip -6 %v in %s: %v: %s", args, ns.Name, err, out)
		}
	}
	node := a.Node
	if err := node.Exec(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1\n"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		pod *testenv.Pod
		ip  netip.Addr
	}{{a, aIP}, {b, bIP}} {
		run(node.NS, "addr", "add", gw+"/128", "dev", p.pod.HostIf, "nodad")
		run(node.NS, "route", "add", p.ip.String()+"/128", "dev", p.pod.HostIf)
		run(p.pod.NS, "addr", "add", p.ip.String()+"/128", "dev", p.pod.Iface, "nodad")
		run(p.pod.NS, "route", "add", gw+"/128", "dev", p.pod.Iface)
		run(p.pod.NS, "route", "add", "default", "via", gw, "dev", p.pod.Iface)
	}
	return aIP, bIP
}

func TestOutboundUDP_IPv6(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 1, PodsPerNode: 2})
	a, b := topo.Pod(1, 1), topo.Pod(1, 2)
	_, bIP := addIPv6(t, a, b)
	dst := netip.AddrPortFrom(bIP, 9999)
	at9999 := peer(t, b.NS, "[::]:9999")

	// The path works before capture (neighbour discovery may take a moment).
	z := app(t, a.NS, dst.String(), netns.WithMark(redirect.ZtunnelMark))
	deadline := time.Now().Add(10 * time.Second)
	for ready := false; !ready; {
		send(t, z, "probe")
		select {
		case <-at9999:
			ready = true
		case <-time.After(200 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("IPv6 path between the pods does not work")
			}
		}
	}

	if err := redirect.Install(a.Path, redirect.Config{CaptureUDP: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Remove(a.Path) })
	l, err := Listen(a.Path, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	c := app(t, a.NS, dst.String())
	send(t, c, "hello6")
	msg, src, od := capture(t, l)
	if msg != "hello6" || src != addrPort(c.LocalAddr()) || od != dst {
		t.Fatalf("captured %q from %s to %s, want hello6 from %s to %s", msg, src, od, c.LocalAddr(), dst)
	}
	r, err := ListenReply(a.Path, od)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.WriteTo([]byte("pong6"), src); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, c); got != "pong6" {
		t.Fatalf("app got %q, want pong6", got)
	}
	send(t, z, "sentinel")
	d := expect(t, at9999, "marked datagram")
	for d.payload == "probe" { // late probes, queued behind neighbour discovery
		d = expect(t, at9999, "marked datagram")
	}
	if d.payload != "sentinel" {
		t.Fatalf("peer got %q first, want sentinel (app datagram leaked?)", d.payload)
	}

	if err := redirect.Remove(a.Path); err != nil {
		t.Fatal(err)
	}
	send(t, c, "direct6")
	if d := expect(t, at9999, "datagram after Remove"); d.payload != "direct6" {
		t.Fatalf("peer got %q after Remove, want direct6", d.payload)
	}
}

// TestDialApp_DeliversWithRemoteSourceAndGetsReplies is the destination
// side: ztunnel in pod a delivers a datagram to a's app from pod b's
// address, and the app's reply comes back to ztunnel's socket, not to b.
func TestDialApp_DeliversWithRemoteSourceAndGetsReplies(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 2, PodsPerNode: 1})
	a, b := topo.Pod(1, 1), topo.Pod(2, 1)
	remote, appAddr := netip.MustParseAddrPort(b.Addr(5555)), netip.MustParseAddrPort(a.Addr(7777))
	if err := redirect.Install(a.Path, redirect.Config{CaptureUDP: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Remove(a.Path) })
	l, err := Listen(a.Path, 0) // ztunnel's outbound listener, as in a real pod
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	at5555 := peer(t, b.NS, "0.0.0.0:5555")

	// The app: an unconnected server that answers whoever wrote.
	srv, err := netns.ListenUDP(a.Path, "0.0.0.0:7777")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	z, err := DialApp(a.Path, remote, appAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	for i, msg := range []string{"hi", "hi again"} {
		if _, err := z.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 1500)
		n, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("app: %v", err)
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if string(buf[:n]) != msg || from != remote {
			t.Fatalf("app got %q from %s, want %q from %s", buf[:n], from, msg, remote)
		}
		if _, err := srv.WriteToUDPAddrPort([]byte("re: "+msg), from); err != nil {
			t.Fatal(err)
		}
		if got := recv(t, z); got != "re: "+msg {
			t.Fatalf("round %d: ztunnel got %q, want %q", i, got, "re: "+msg)
		}
	}
	nothingCaptured(t, l)
	s := app(t, a.NS, remote.String(), netns.WithMark(redirect.ZtunnelMark))
	send(t, s, "sentinel")
	if d := expect(t, at5555, "marked datagram at b"); d.payload != "sentinel" {
		t.Fatalf("b got %q first, want sentinel (the app's reply leaked?)", d.payload)
	}
}

// TestOutboundUDP_WithoutListenerDoesNotLeak: captured UDP with nothing on
// 15001 is dropped inside the pod, never sent on uncaptured.
func TestOutboundUDP_WithoutListenerDoesNotLeak(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 2, PodsPerNode: 1})
	a, b := topo.Pod(1, 1), topo.Pod(2, 1)
	if err := redirect.Install(a.Path, redirect.Config{CaptureUDP: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Remove(a.Path) })
	at9999 := peer(t, b.NS, "0.0.0.0:9999")
	c := app(t, a.NS, b.Addr(9999))
	send(t, c, "lost")
	// The kernel drops it inside the pod (no ICMP error reaches the app).
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("app read after a datagram nobody captured: %d bytes, %v; want a timeout", n, err)
	}
	send(t, app(t, a.NS, b.Addr(9999), netns.WithMark(redirect.ZtunnelMark)), "sentinel")
	if d := expect(t, at9999, "marked datagram at b"); d.payload != "sentinel" {
		t.Fatalf("b got %q first, want sentinel (uncaptured datagram leaked)", d.payload)
	}
}

// TestReply_WhenAnAppHoldsThePort: an app bound to the wildcard address on
// port 9999 (a server that also calls peers on its own port) sends to a
// peer's 9999. No UDP socket can then be bound to peer:9999 in the pod;
// the reply goes out through a raw socket and the app receives it from
// the peer's address and port.
func TestReply_WhenAnAppHoldsThePort(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 2, PodsPerNode: 1})
	a, b := topo.Pod(1, 1), topo.Pod(2, 1)
	dst := netip.MustParseAddrPort(b.Addr(9999))
	if err := redirect.Install(a.Path, redirect.Config{CaptureUDP: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Remove(a.Path) })
	l, err := Listen(a.Path, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	srv, err := netns.ListenUDP(a.Path, "0.0.0.0:9999")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if _, err := srv.WriteToUDPAddrPort([]byte("query"), dst); err != nil {
		t.Fatal(err)
	}
	msg, src, od := capture(t, l)
	if msg != "query" || od != dst || src.Port() != 9999 {
		t.Fatalf("captured %q from %s to %s", msg, src, od)
	}
	reply, err := ListenReply(a.Path, dst)
	if err != nil {
		t.Fatalf("reply socket while the app holds port 9999: %v", err)
	}
	t.Cleanup(func() { reply.Close() })
	if reply.raw == nil {
		t.Fatal("expected the raw fallback: the app holds the port")
	}
	for i := range 3 {
		if _, err := reply.WriteTo([]byte(fmt.Sprintf("answer %d", i)), src); err != nil {
			t.Fatal(err)
		}
		srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 1500)
		n, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("app: no reply: %v", err)
		}
		if got, want := string(buf[:n]), fmt.Sprintf("answer %d", i); got != want || netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != dst {
			t.Fatalf("app got %q from %s, want %q from %s", got, from, want, dst)
		}
	}
}
