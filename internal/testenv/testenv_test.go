package testenv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// echoOnEveryPod serves echo on addr of every pod of topo.
func echoOnEveryPod(t *testing.T, topo *Topology, addr func(*Pod) string) {
	t.Helper()
	for _, n := range topo.Nodes {
		for _, p := range n.Pods {
			p.ServeTCP(t, addr(p), Echo)
		}
	}
}

func roundTrip(t *testing.T, from *Pod, to string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, to)
	if err != nil {
		t.Fatalf("%s -> %s: %v", from.Name, to, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := "hello from " + from.IP.String()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("%s -> %s: echo %q, %v", from.Name, to, buf, err)
	}
	want := from.IP
	if netip.MustParseAddrPort(to).Addr().Is6() {
		want = from.IP6
	}
	if got := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); got != want {
		t.Errorf("source address %s, want the pod IP %s", got, want)
	}
}

func TestTopology_PodToPodSameNodeAndAcrossNodes(t *testing.T) {
	topo := NewTopology(t, Spec{Nodes: 2, PodsPerNode: 2})
	if got, want := topo.Pod(2, 1).IP.String(), "10.244.2.2"; got != want {
		t.Fatalf("pod(2,1) IP = %s, want %s", got, want)
	}
	if got, want := topo.Nodes[1].IP.String(), "172.30.0.2"; got != want {
		t.Fatalf("node 2 IP = %s, want %s", got, want)
	}
	echoOnEveryPod(t, topo, func(p *Pod) string { return p.Addr(8080) })
	t.Run("same node", func(t *testing.T) { roundTrip(t, topo.Pod(1, 1), topo.Pod(1, 2).Addr(8080)) })
	t.Run("across nodes", func(t *testing.T) {
		roundTrip(t, topo.Pod(1, 1), topo.Pod(2, 2).Addr(8080))
		roundTrip(t, topo.Pod(2, 1), topo.Pod(1, 2).Addr(8080))
	})
}

func TestTopology_DualStack(t *testing.T) {
	topo := NewTopology(t, Spec{Nodes: 2, PodsPerNode: 2, DualStack: true})
	if got, want := topo.Pod(2, 1).IP6.String(), "fd00:10:244:2::2"; got != want {
		t.Fatalf("pod(2,1) IPv6 = %s, want %s", got, want)
	}
	if got, want := topo.Nodes[1].IP6.String(), "fd00:172:30::2"; got != want {
		t.Fatalf("node 2 IPv6 = %s, want %s", got, want)
	}
	echoOnEveryPod(t, topo, func(*Pod) string { return "[::]:8080" }) // both families
	t.Run("IPv6 same node", func(t *testing.T) { roundTrip(t, topo.Pod(1, 1), topo.Pod(1, 2).Addr6(8080)) })
	t.Run("IPv6 across nodes", func(t *testing.T) {
		roundTrip(t, topo.Pod(1, 1), topo.Pod(2, 2).Addr6(8080))
		roundTrip(t, topo.Pod(2, 1), topo.Pod(1, 2).Addr6(8080))
	})
	t.Run("IPv4 beside it", func(t *testing.T) { roundTrip(t, topo.Pod(1, 1), topo.Pod(2, 2).Addr(8080)) })
	// A pod address outside the plan, and a service VIP (which only
	// ztunnel's capture may take anywhere), fail at once as unreachable.
	for _, addr := range []string{"fd00:10:244:9::9", "fd00:10:96::10"} {
		t.Run("unreachable "+addr, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if c, err := topo.Pod(1, 1).Dial(ctx, "["+addr+"]:80"); err == nil {
				c.Close()
				t.Fatalf("dial %s succeeded", addr)
			} else if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("dial %s timed out instead of failing as unreachable: %v", addr, err)
			}
			out, err := exec.Command("ip", "-6", "route", "get", addr).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "No route to host") && !strings.Contains(string(out), "unreachable") {
				t.Errorf("root: ip -6 route get %s = %q, %v; want unreachable", addr, out, err)
			}
		})
	}
}

// TestTopology_CrossNodeTrafficCrossesTheNodeLink captures on the node's
// link with an AF_PACKET socket (ETH_P_ALL: outgoing frames too, as
// tcpdump sees them) and sees the pod-to-pod traffic.
func TestTopology_CrossNodeTrafficCrossesTheNodeLink(t *testing.T) {
	topo := NewTopology(t, Spec{Nodes: 2, PodsPerNode: 1})
	src, dst := topo.Pod(1, 1), topo.Pod(2, 1)
	dst.ServeTCP(t, dst.Addr(9090), Echo)

	var fd int
	node := topo.Nodes[0]
	if err := node.Exec(func() error {
		ifi, err := net.InterfaceByName(node.LinkIf)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}

	roundTrip(t, src, dst.Addr(9090))

	deadline := time.Now().Add(3 * time.Second)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue
		}
		if n < 14+24 || binary.BigEndian.Uint16(buf[12:14]) != unix.ETH_P_IP {
			continue
		}
		ip := buf[14:n] // Ethernet header, then IPv4
		if ip[9] != unix.IPPROTO_TCP {
			continue
		}
		ihl := int(ip[0]&0x0f) * 4
		s, d := net.IP(ip[12:16]).String(), net.IP(ip[16:20]).String()
		dport := binary.BigEndian.Uint16(ip[ihl+2:])
		if s == src.IP.String() && d == dst.IP.String() && dport == 9090 {
			return // seen on the wire between the nodes
		}
	}
	t.Fatalf("no %s -> %s:9090 packet seen on %s in %s", src.IP, dst.IP, node.LinkIf, node.Name)
}

func TestTopology_PodCannotReachOutsideTheTopology(t *testing.T) {
	topo := NewTopology(t, Spec{Nodes: 2, PodsPerNode: 1})
	for _, addr := range []string{"10.244.9.9:80", "10.96.0.10:80"} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		start := time.Now()
		c, err := topo.Pod(1, 1).Dial(ctx, addr)
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("dial %s succeeded", addr)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("dial %s took %v to fail (%v), want an immediate unreachable", addr, el, err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("dial %s timed out instead of failing as unreachable: %v", addr, err)
		}
	}
	// The root namespace drops the topology's address space too.
	out, err := exec.Command("ip", "route", "get", "10.244.9.9").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "No route to host") && !strings.Contains(string(out), "unreachable") {
		t.Errorf("root: ip route get 10.244.9.9 = %q, %v; want unreachable", out, err)
	}
}

func TestTopology_IPForwardOnlyOnNodes(t *testing.T) {
	topo := NewTopology(t, Spec{Nodes: 1, PodsPerNode: 1})
	read := func(ns NS) string {
		out, err := ns.Command(context.Background(), "cat", "/proc/sys/net/ipv4/ip_forward").Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	if got := read(topo.Nodes[0].NS); got != "1" {
		t.Errorf("node ip_forward = %s, want 1", got)
	}
	if got := read(topo.Pod(1, 1).NS); got != "0" {
		t.Errorf("pod ip_forward = %s, want 0", got)
	}
}

// rootState is what this process could leave in the root namespace: its
// namespaces, any link, and routes it owns or in the topology's space.
func rootState(t *testing.T) string {
	t.Helper()
	mine := fmt.Sprintf("%s%d-", namePrefix, os.Getpid())
	var b strings.Builder
	ns, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(ns), "\n") {
		if strings.HasPrefix(l, mine) {
			fmt.Fprintln(&b, "netns", l)
		}
	}
	links, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(links), "\n") {
		if f := strings.Fields(l); len(f) > 1 && !otherHostLink(f[1]) {
			fmt.Fprintln(&b, "link", f[1])
		}
	}
	routes, err := exec.Command("ip", "route", "show", "table", "all").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(routes), "\n") {
		if dev, ok := routeDev(l); ok && otherHostLink(dev) {
			continue // another test binary's host-linked topology
		}
		if strings.Contains(l, "metric "+strconv.Itoa(os.Getpid())) ||
			(strings.Contains(l, "10.244.") || strings.Contains(l, "172.30.") || strings.Contains(l, "10.96.")) &&
				!strings.Contains(l, "proto "+guardProto) {
			fmt.Fprintln(&b, "route", l)
		}
	}
	return b.String()
}

// otherHostLink reports whether an `ip link` name (maybe with "@peer:") is
// the host link of another process's topology, amt<pid>h<seq>.
func otherHostLink(name string) bool {
	name, _, _ = strings.Cut(strings.TrimSuffix(name, ":"), "@")
	rest, ok := strings.CutPrefix(name, "amt")
	if !ok {
		return false
	}
	pidStr, seq, ok := strings.Cut(rest, "h")
	pid, err := strconv.Atoi(pidStr)
	if _, serr := strconv.Atoi(seq); !ok || err != nil || serr != nil {
		return false
	}
	return pid != os.Getpid()
}

// routeDev returns the device of an `ip route` line.
func routeDev(line string) (string, bool) {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "dev" {
			return f[i+1], true
		}
	}
	return "", false
}

func TestTopology_TeardownLeavesNothingBehind(t *testing.T) {
	RequireRoot(t)
	before := rootState(t)
	topo := NewTopology(t, Spec{Nodes: 2, PodsPerNode: 2})
	during := rootState(t)
	if !strings.Contains(during, "netns "+topo.Prefix) || !strings.Contains(during, "unreachable 10.244.0.0/16") {
		t.Fatalf("topology not visible while alive:\n%s", during)
	}
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	if after := rootState(t); after != before {
		t.Errorf("root namespace changed by a topology's life:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := topo.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNewTopology_RemovesLeftoversOfACrashedRun(t *testing.T) {
	RequireRoot(t)
	// A pid that existed and is gone: the "crashed" run.
	p := exec.Command("true")
	if err := p.Run(); err != nil {
		t.Fatal(err)
	}
	dead := p.Process.Pid
	if alive(dead) {
		t.Skipf("pid %d was reused already", dead)
	}
	stale := fmt.Sprintf("%s%d-1-", namePrefix, dead)
	for _, role := range []string{"fab", "n1", "n1p1"} {
		if err := ipCmd("netns", "add", stale+role); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { // in case the code under test fails to
		for _, role := range []string{"fab", "n1", "n1p1"} {
			_ = exec.Command("ip", "netns", "del", stale+role).Run()
		}
		_ = deleteGuard(dead)
	})
	if err := ipBatch(stale+"n1", "link add p1 type veth peer name eth0 netns "+stale+"n1p1"); err != nil {
		t.Fatal(err)
	}
	for _, cidr := range guardCIDRs() {
		if err := ipCmd("route", "add", "unreachable", cidr, "proto", guardProto, "metric", strconv.Itoa(dead)); err != nil {
			t.Fatal(err)
		}
	}

	NewTopology(t, Spec{Nodes: 1, PodsPerNode: 1})

	ns, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(ns), stale) {
		t.Errorf("stale namespaces survive:\n%s", ns)
	}
	routes, _ := exec.Command("ip", "route", "show", "proto", guardProto).Output()
	if strings.Contains(string(routes), "metric "+strconv.Itoa(dead)) {
		t.Errorf("stale guard routes survive:\n%s", routes)
	}
	if !strings.Contains(string(routes), "metric "+strconv.Itoa(os.Getpid())) {
		t.Errorf("this run's guard routes missing:\n%s", routes)
	}
}

func TestOwnerPid(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  int
		ok   bool
	}{
		{"amt-123-4-n1p1", 123, true},
		{"amt-123-netns-X", 123, true},
		{"amt-x-1", 0, false},
		{"amt-123", 0, false},
		{"cni-123-4", 0, false},
		{"amt--1", 0, false},
	} {
		pid, ok := ownerPid(tc.name)
		if pid != tc.pid && tc.ok || ok != tc.ok {
			t.Errorf("ownerPid(%q) = %d, %v; want %d, %v", tc.name, pid, ok, tc.pid, tc.ok)
		}
	}
}

// TestTopology_HostLinkReachesNodesOnly: with Spec.HostLink a listener of
// the root namespace on HostIP is reachable from the nodes, the root
// namespace still has no route to pods, and Close leaves nothing behind.
func TestTopology_HostLinkReachesNodesOnly(t *testing.T) {
	RequireRoot(t)
	before := rootState(t)
	topo := NewTopology(t, Spec{Nodes: 2, PodsPerNode: 1, HostLink: true})
	if topo.Host == nil || topo.Host.IP != HostIP {
		t.Fatalf("Host = %+v, want %s", topo.Host, HostIP)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(HostIP.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	Serve(t, l, Echo)
	for _, n := range topo.Nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := n.Dial(ctx, l.Addr().String())
		cancel()
		if err != nil {
			t.Fatalf("%s -> host %s: %v", n.Name, l.Addr(), err)
		}
		if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != n.IP.String() {
			t.Errorf("source address %s, want the node IP %s", got, n.IP)
		}
		c.Close()
	}
	for _, dst := range []string{topo.Pod(1, 1).IP.String(), "10.96.0.10"} {
		out, err := exec.Command("ip", "route", "get", dst).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "No route to host") && !strings.Contains(string(out), "unreachable") {
			t.Errorf("root: ip route get %s = %q, %v; want unreachable", dst, out, err)
		}
	}
	out, err := exec.Command("ip", "route", "get", "172.30.0.1").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "dev "+topo.Host.Iface) {
		t.Errorf("root: ip route get 172.30.0.1 = %q, %v; want dev %s", out, err, topo.Host.Iface)
	}
	l.Close()
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	if after := rootState(t); after != before {
		t.Errorf("root namespace changed by a host-linked topology's life:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestNS_SysctlSetsOnlyThatNamespace: a per-namespace sysctl set in a pod
// is the pod's; the node beside it and the root namespace keep theirs.
func TestNS_SysctlSetsOnlyThatNamespace(t *testing.T) {
	topo := NewTopology(t, Spec{Nodes: 1, PodsPerNode: 1})
	const key = "/proc/sys/net/ipv4/tcp_congestion_control"
	root, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	want := "reno"
	if strings.TrimSpace(string(root)) == "reno" {
		want = "cubic"
	}
	if err := topo.Pod(1, 1).Sysctl("net.ipv4.tcp_congestion_control", want); err != nil {
		t.Fatal(err)
	}
	read := func(ns NS) string {
		out, err := ns.Command(context.Background(), "cat", key).Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	if got := read(topo.Pod(1, 1).NS); got != want {
		t.Errorf("pod: %s, want %s", got, want)
	}
	if got := read(topo.Nodes[0].NS); got == want {
		t.Errorf("node: %s, want the default it was made with", got)
	}
	if now, _ := os.ReadFile(key); string(now) != string(root) {
		t.Errorf("root namespace changed from %q to %q", root, now)
	}
}
