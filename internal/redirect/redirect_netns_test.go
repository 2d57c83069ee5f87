package redirect

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/testenv"
)

// hit is what a tagging server saw for one accepted connection.
type hit struct {
	tag     string
	origDst netip.AddrPort // zero when the connection was not redirected
}

// tagServer answers every connection with its tag and records it.
type tagServer struct {
	mu   sync.Mutex // guards hits
	hits []hit
}

func (s *tagServer) serve(t *testing.T, ns testenv.NS, addr, tag string) {
	t.Helper()
	l, err := ns.Listen(addr)
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			od, _ := OriginalDst(c.(*net.TCPConn))
			s.mu.Lock()
			s.hits = append(s.hits, hit{tag: tag, origDst: od})
			s.mu.Unlock()
			_, _ = c.Write([]byte(tag))
			c.Close()
		}
	}()
}

func (s *tagServer) last() hit {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.hits) == 0 {
		return hit{}
	}
	return s.hits[len(s.hits)-1]
}

// reach dials addr from ns and returns the tag of the server that answered.
func reach(t *testing.T, ns testenv.NS, addr string, opts ...netns.Option) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, addr, opts...)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns.Name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return string(b)
}

// udpTag answers every datagram to addr in ns with tag.
func udpTag(t *testing.T, ns testenv.NS, addr, tag string) {
	t.Helper()
	c, err := netns.ListenUDP(ns.Path, addr, netns.WithMark(ZtunnelMark))
	if err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo([]byte(tag), from)
		}
	}()
}

// reachUDP sends a datagram to addr from ns and returns the tag answered.
func reachUDP(t *testing.T, ns testenv.NS, addr string, opts ...netns.Option) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := netns.DialUDP(ctx, ns.Path, addr, opts...)
	if err != nil {
		t.Fatalf("dial udp %s from %s: %v", addr, ns.Name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatalf("send to %s: %v", addr, err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no answer from udp %s: %v", addr, err)
	}
	return string(buf[:n])
}

func nftRuleset(t *testing.T, ns testenv.NS) string {
	t.Helper()
	out, err := ns.Command(context.Background(), "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	return string(out)
}

func iptablesRules(t *testing.T, ns testenv.NS) []string {
	t.Helper()
	out, err := ns.Command(context.Background(), "iptables-save").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	var rules []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, ":AMBIENT") {
			rules = append(rules, l)
		}
	}
	return rules
}

func TestInPodCapture(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 2, PodsPerNode: 1})
	a, b := topo.Pod(1, 1), topo.Pod(2, 1) // a is enrolled, b is not

	if ok, err := Installed(a.Path); err != nil || ok {
		t.Fatalf("Installed before Install = %v, %v", ok, err)
	}
	if err := Install(a.Path, Config{}); err != nil {
		t.Fatal(err)
	}
	first := nftRuleset(t, a.NS)
	if err := Install(a.Path, Config{}); err != nil {
		t.Fatalf("second Install: %v", err)
	}
	if again := nftRuleset(t, a.NS); again != first {
		t.Errorf("Install is not idempotent:\nfirst:\n%s\nagain:\n%s", first, again)
	}
	if ok, err := Installed(a.Path); err != nil || !ok {
		t.Fatalf("Installed after Install = %v, %v", ok, err)
	}
	if got := nftRuleset(t, b.NS); strings.TrimSpace(got) != "" {
		t.Fatalf("the other pod got rules:\n%s", got)
	}

	// ztunnel's listeners inside pod a, and the apps of both pods.
	var srv tagServer
	srv.serve(t, a.NS, "0.0.0.0:15001", "a:15001")
	srv.serve(t, a.NS, "0.0.0.0:15006", "a:15006")
	srv.serve(t, a.NS, a.Addr(15008), "a:15008")
	srv.serve(t, a.NS, "0.0.0.0:8080", "a:8080")
	srv.serve(t, b.NS, "0.0.0.0:8080", "b:8080")

	t.Run("outbound lands on 15001 with the real destination", func(t *testing.T) {
		if got := reach(t, a.NS, b.Addr(8080)); got != "a:15001" {
			t.Fatalf("a -> b:8080 answered by %q, want a:15001", got)
		}
		if got, want := srv.last().origDst.String(), b.Addr(8080); got != want {
			t.Errorf("OriginalDst = %s, want %s", got, want)
		}
	})
	t.Run("outbound to a service VIP lands on 15001", func(t *testing.T) {
		if got := reach(t, a.NS, "10.96.0.10:80"); got != "a:15001" {
			t.Fatalf("a -> 10.96.0.10:80 answered by %q, want a:15001", got)
		}
		if got := srv.last().origDst.String(); got != "10.96.0.10:80" {
			t.Errorf("OriginalDst = %s, want 10.96.0.10:80", got)
		}
	})
	t.Run("inbound to the app lands on 15006", func(t *testing.T) {
		if got := reach(t, b.NS, a.Addr(8080)); got != "a:15006" {
			t.Fatalf("b -> a:8080 answered by %q, want a:15006", got)
		}
		if got, want := srv.last().origDst.String(), a.Addr(8080); got != want {
			t.Errorf("OriginalDst = %s, want %s", got, want)
		}
	})
	t.Run("inbound HBONE on 15008 is not captured", func(t *testing.T) {
		if got := reach(t, b.NS, a.Addr(15008)); got != "a:15008" {
			t.Fatalf("b -> a:15008 answered by %q, want a:15008", got)
		}
		// Conntrack tracks it, untranslated: the original destination is
		// the one the connection arrived at.
		if od := srv.last().origDst; od.IsValid() && od.String() != a.Addr(15008) {
			t.Errorf("15008 connection was translated (OriginalDst %s)", od)
		}
	})
	t.Run("inbound HBONE/3 on UDP 15008 is neither captured nor dropped", func(t *testing.T) {
		udpTag(t, a.NS, "0.0.0.0:15008", "a:udp15008")
		if got := reachUDP(t, b.NS, a.Addr(15008)); got != "a:udp15008" {
			t.Fatalf("b -> udp a:15008 answered by %q, want a:udp15008", got)
		}
	})
	t.Run("outbound UDP, ztunnel's and the pod's, is not captured", func(t *testing.T) {
		udpTag(t, b.NS, "0.0.0.0:15008", "b:udp15008")
		if got := reachUDP(t, a.NS, b.Addr(15008), netns.WithMark(ZtunnelMark)); got != "b:udp15008" {
			t.Fatalf("marked a -> udp b:15008 answered by %q", got)
		}
		if got := reachUDP(t, a.NS, b.Addr(15008)); got != "b:udp15008" {
			t.Fatalf("a -> udp b:15008 answered by %q", got)
		}
	})
	t.Run("ztunnel-marked socket bypasses capture", func(t *testing.T) {
		if got := reach(t, a.NS, b.Addr(8080), netns.WithMark(ZtunnelMark)); got != "b:8080" {
			t.Fatalf("marked a -> b:8080 answered by %q, want b:8080", got)
		}
	})
	t.Run("loopback is left alone", func(t *testing.T) {
		for _, addr := range []string{"127.0.0.1:8080", a.Addr(8080)} {
			if got := reach(t, a.NS, addr); got != "a:8080" {
				t.Errorf("a -> %s answered by %q, want a:8080", addr, got)
			}
		}
	})

	if err := Remove(a.Path); err != nil {
		t.Fatal(err)
	}
	if err := Remove(a.Path); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	t.Run("Remove restores plain traffic and leaves no rules", func(t *testing.T) {
		if ok, err := Installed(a.Path); err != nil || ok {
			t.Errorf("Installed after Remove = %v, %v", ok, err)
		}
		if got := reach(t, a.NS, b.Addr(8080)); got != "b:8080" {
			t.Errorf("a -> b:8080 answered by %q after Remove, want b:8080", got)
		}
		if got := reach(t, b.NS, a.Addr(8080)); got != "a:8080" {
			t.Errorf("b -> a:8080 answered by %q after Remove, want a:8080", got)
		}
		if got := nftRuleset(t, a.NS); strings.TrimSpace(got) != "" {
			t.Errorf("nft ruleset not empty after Remove:\n%s", got)
		}
		if got := iptablesRules(t, a.NS); len(got) != 0 {
			t.Errorf("iptables-save shows rules after Remove: %q", got)
		}
	})
}

// Without NAT rules nothing in the namespace loads conntrack, so there is
// no original destination to report.
func TestOriginalDst_FailsWithoutConntrack(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 1, PodsPerNode: 1})
	p := topo.Pod(1, 1)
	l, err := p.Listen(p.Addr(0))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := <-accepted
	if sc == nil {
		t.Fatal("no connection accepted")
	}
	defer sc.Close()
	if od, err := OriginalDst(sc.(*net.TCPConn)); err == nil {
		t.Errorf("OriginalDst of an untranslated connection = %s, want an error", od)
	}
}

// Connections open when a pod is enrolled keep working in both directions:
// capture takes only new connections (their SYN), never one mid-stream.
func TestInstall_LeavesOpenConnectionsAlone(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 2, PodsPerNode: 1})
	a, b := topo.Pod(1, 1), topo.Pod(2, 1) // a gets enrolled

	b.ServeTCP(t, "0.0.0.0:9090", testenv.Echo) // a's outbound connection goes here
	a.ServeTCP(t, "0.0.0.0:9091", testenv.Echo) // b's inbound connection to a
	// Nothing listens on 15001/15006: a packet redirected there is reset.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := a.NS.Dial(ctx, b.Addr(9090))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in, err := b.NS.Dial(ctx, a.Addr(9091))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	roundTrip := func(c net.Conn, msg string) error {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if string(got) != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
		return nil
	}
	for _, c := range []net.Conn{out, in} {
		if err := roundTrip(c, "before"); err != nil {
			t.Fatal(err)
		}
	}
	if err := Install(a.Path, Config{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Remove(a.Path) })
	if err := roundTrip(out, "after, outbound"); err != nil {
		t.Errorf("a's connection opened before capture: %v", err)
	}
	if err := roundTrip(in, "after, inbound"); err != nil {
		t.Errorf("b's connection to a opened before capture: %v", err)
	}
}
