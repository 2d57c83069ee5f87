// Package testenv builds test topologies of nodes and pods in real Linux
// network namespaces, the shape of DESIGN.md §9.2.
//
// # Topology
//
// NewTopology(t, Spec{Nodes: N, PodsPerNode: M}) creates, per run:
//
//   - one "fabric" namespace holding a Linux bridge br0: the shared node
//     link. Each node has a veth pair whose node end is eth0 in the node
//     namespace (address 172.30.0.<n>/24, n from 1) and whose other end,
//     n<n>, is a port of br0. Node-to-node traffic therefore crosses a real
//     link: capture one node's traffic on Node.LinkIf in Node.Path
//     (`ip netns exec <Node.Name> tcpdump -i eth0`), or every node's on the
//     bridge (`ip netns exec <Topology.Fabric.Name> tcpdump -i br0`).
//   - one namespace per node with net.ipv4.ip_forward=1 (only there: pods
//     and the root namespace are untouched).
//   - one namespace per pod, pod m of node n at 10.244.<n>.<m+1>/32 on its
//     eth0, a veth whose node end is p<m> in the node namespace. The node
//     end carries the pod gateway 10.244.<n>.1/32 (the same /32 on every pod
//     veth of that node, the point-to-point model Calico uses), so the pod
//     needs no ARP proxy. Pod routes: 10.244.<n>.1 on-link, default and
//     10.96.0.0/16 (service VIPs, which ztunnel captures before routing) via
//     the gateway. Node routes: a /32 per own pod, 10.244.<k>.0/24 via
//     172.30.0.<k> for every other node k, and nothing else: no default
//     route, so a packet for an address outside the topology is answered by
//     the node with ICMP unreachable and the dial fails at once.
//
// With Spec.DualStack every node and pod also has an IPv6 address, with
// the same shape: node n at fd00:172:30::<n>/64 on eth0, pod m of node n at
// fd00:10:244:<n>::<m+1>/128 with the gateway fd00:10:244:<n>::1/128 on
// every pod veth of the node, a default route via it in the pod (which
// also carries IPv6 service VIPs, fd00:10:96::/112, to ztunnel's capture),
// net.ipv6 forwarding on
// in the node, and fd00:10:244:<k>::/64 via fd00:172:30::<k> for every
// other node k. Duplicate address detection is off on these addresses, so
// they are usable at once.
//
// The root namespace holds no link of the topology (every veth is created
// directly inside its namespaces), unless Spec.HostLink asks for one; see
// Host links below. While any topology of this
// process lives, the root namespace also has `unreachable` routes for
// 10.244.0.0/16, 10.96.0.0/16 and 172.30.0.0/16, and for their IPv6
// counterparts fd00:10:244::/48, fd00:10:96::/112 and fd00:172:30::/48
// (protocol 167, metric =
// this process's pid, so concurrent test binaries each own theirs), so a
// misrouted packet can never leave by the machine's default route.
//
// # Host link
//
// With Spec.HostLink the root namespace joins the node link, for a process
// that must stay there (a control plane talking to an apiserver on
// 127.0.0.1) yet be reachable by the nodes: a veth whose root end,
// Topology.Host.Iface, carries HostIP (172.30.0.254/24) and whose other end
// is a port of br0. Nodes reach HostIP on-link; the root namespace gains only
// the connected route 172.30.0.0/24 to its own topology's nodes (more
// specific than the guard route, which stays), and pods and service VIPs
// stay unreachable from it. Since every topology uses the same node
// addresses, one host-linked topology per machine exists at a time: a
// second one waits (flock on /run/amt-hostlink.lock) for the first to
// close. Close deletes the root end at once; after a crash, deleting the
// fabric namespace (CleanStale) destroys the pair.
//
// # Names and crash recovery
//
// Every namespace is named amt-<pid>-<seq>-<role>. NewTopology first
// deletes namespaces and guard routes left behind by a process that no
// longer exists (a crashed or killed earlier run), and Close (registered
// with t.Cleanup) deletes everything it created even when a test fails.
//
// Tests need root. Without it they skip, unless CI=true, where they fail:
// CI must run them.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambientmesh/ambient/internal/netns"
)

// Address plan. Every address the topology uses is inside these prefixes.
var (
	PodCIDR     = netip.MustParsePrefix("10.244.0.0/16")
	ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	NodeCIDR    = netip.MustParsePrefix("172.30.0.0/16")
	// The IPv6 plan of a Spec.DualStack topology (unique local addresses).
	PodCIDR6     = netip.MustParsePrefix("fd00:10:244::/48")
	ServiceCIDR6 = netip.MustParsePrefix("fd00:10:96::/112")
	NodeCIDR6    = netip.MustParsePrefix("fd00:172:30::/48")
)

// Spec sizes a topology.
type Spec struct {
	Nodes       int // 1..200
	PodsPerNode int // 0..200
	// HostLink connects the root namespace to the node link at HostIP; see
	// the package comment.
	HostLink bool
	// DualStack gives every node and pod an IPv6 address beside its IPv4
	// one, with the same routes; see the package comment.
	DualStack bool
}

// HostIP is the root namespace's address on the node link of a topology
// built with Spec.HostLink, inside NodeCIDR and outside the node addresses.
var HostIP = netip.MustParseAddr("172.30.0.254")

// Host is the root namespace's end of a host link.
type Host struct {
	IP    netip.Addr // HostIP
	Iface string     // the veth in the root namespace
}

// NS is one network namespace of a topology.
type NS struct {
	Name string // name for `ip netns exec` / `ip -n`
	Path string // bind mount, /run/netns/<Name>
}

// Exec runs fn on a thread inside the namespace.
func (n NS) Exec(fn func() error) error { return netns.Do(n.Path, fn) }

// Command returns a command that runs inside the namespace (through
// `ip netns exec`), for tools such as tcpdump, nft or iptables-save.
func (n NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Sysctl sets the namespace's own value of a per-namespace sysctl, such as
// net.ipv4.tcp_congestion_control, without the sysctl tool: /proc/sys/net
// shows the namespace of the thread that opens it.
func (n NS) Sysctl(key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return n.Exec(func() error { return os.WriteFile(path, []byte(value+"\n"), 0o644) })
}

// Listen opens a TCP listener inside the namespace.
func (n NS) Listen(addr string, opts ...netns.Option) (net.Listener, error) {
	return netns.ListenTCP(n.Path, addr, opts...)
}

// Dial opens a TCP connection from inside the namespace.
func (n NS) Dial(ctx context.Context, addr string, opts ...netns.Option) (*net.TCPConn, error) {
	return netns.DialTCP(ctx, n.Path, addr, opts...)
}

// ServeTCP listens on addr inside the namespace and serves it (Serve).
func (n NS) ServeTCP(t testing.TB, addr string, handle func(net.Conn)) {
	t.Helper()
	ln, err := n.Listen(addr)
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, n.Name, err)
	}
	Serve(t, ln, handle)
}

// Serve serves each connection ln accepts with handle, on a goroutine
// of its own, closing it after; ln closes at the end of the test.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// Echo, a ServeTCP handler, sends back what it reads.
func Echo(c net.Conn) { io.Copy(c, c) }

// Node is a simulated node.
type Node struct {
	NS
	Index   int          // 1-based
	IP      netip.Addr   // 172.30.0.<Index>
	PodCIDR netip.Prefix // 10.244.<Index>.0/24
	Gateway netip.Addr   // 10.244.<Index>.1, the pods' next hop
	LinkIf  string       // the node's interface on the shared link, in Path
	Pods    []*Pod
	// With Spec.DualStack (else zero): fd00:172:30::<Index>,
	// fd00:10:244:<Index>::/64 and fd00:10:244:<Index>::1.
	IP6      netip.Addr
	PodCIDR6 netip.Prefix
	Gateway6 netip.Addr
}

// Pod is a simulated pod.
type Pod struct {
	NS
	Node   *Node
	Index  int        // 1-based within its node
	IP     netip.Addr // 10.244.<node>.<Index+1>
	Iface  string     // eth0 inside the pod
	HostIf string     // the node end of the pod's veth, in Node.Path
	IP6    netip.Addr // fd00:10:244:<node>::<Index+1> with Spec.DualStack, else zero
}

// Addr is the pod's IP with port.
func (p *Pod) Addr(port uint16) string { return netip.AddrPortFrom(p.IP, port).String() }

// Addr6 is the pod's IPv6 address with port (Spec.DualStack).
func (p *Pod) Addr6(port uint16) string { return netip.AddrPortFrom(p.IP6, port).String() }

// Topology is a set of nodes and pods; see the package comment.
type Topology struct {
	Prefix string // amt-<pid>-<seq>-, shared by every namespace it owns
	Fabric NS     // holds Bridge, the shared node link
	Bridge string
	Nodes  []*Node
	Host   *Host // nil unless Spec.HostLink

	seq       int64
	hostLock  *os.File // flock held while the host link exists
	closeOnce sync.Once
	closeErr  error
	// created lists the namespaces to delete, in creation order.
	created []string
	guarded bool
}

var topoSeq atomic.Int64

// RequireRoot skips the test when not root, or fails it under CI=true.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const why = "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces"
	if os.Getenv("CI") == "true" {
		t.Fatal("testenv: " + why + "; CI=true forbids skipping: run the tests as root")
	}
	t.Skip("testenv: " + why + "; run as root (CI does)")
}

// NewTopology builds a topology and registers its teardown with t.Cleanup.
func NewTopology(t testing.TB, spec Spec) *Topology {
	t.Helper()
	RequireRoot(t)
	if spec.Nodes < 1 || spec.Nodes > 200 || spec.PodsPerNode < 0 || spec.PodsPerNode > 200 {
		t.Fatalf("testenv: bad spec %+v: want 1..200 nodes, 0..200 pods per node", spec)
	}
	if err := CleanStale(); err != nil {
		t.Fatalf("testenv: removing leftovers of an earlier run: %v", err)
	}
	seq := topoSeq.Add(1)
	topo := &Topology{
		Prefix: fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), seq),
		Bridge: "br0",
		seq:    seq,
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("testenv: teardown: %v", err)
		}
	})
	if err := acquireGuard(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	topo.guarded = true
	if err := topo.build(spec); err != nil {
		t.Fatalf("testenv: build %+v: %v", spec, err)
	}
	return topo
}

// Pod returns pod podIdx (1-based) of node nodeIdx (1-based).
func (tp *Topology) Pod(nodeIdx, podIdx int) *Pod { return tp.Nodes[nodeIdx-1].Pods[podIdx-1] }

// Close deletes every namespace (and so every veth and route in them) and
// releases the root guard routes. It is idempotent.
func (tp *Topology) Close() error {
	tp.closeOnce.Do(func() {
		var errs []error
		if tp.Host != nil {
			// Deleting the fabric namespace would destroy the pair too, but
			// asynchronously; delete the root end now.
			if err := ipCmd("link", "del", tp.Host.Iface); err != nil {
				errs = append(errs, err)
			}
		}
		if tp.hostLock != nil {
			tp.hostLock.Close() // releases the flock
		}
		for i := len(tp.created) - 1; i >= 0; i-- {
			if err := ipCmd("netns", "del", tp.created[i]); err != nil {
				errs = append(errs, err)
			}
		}
		if tp.guarded {
			if err := releaseGuard(); err != nil {
				errs = append(errs, err)
			}
		}
		tp.closeErr = errors.Join(errs...)
	})
	return tp.closeErr
}

func (tp *Topology) addNS(role string) (NS, error) {
	name := tp.Prefix + role
	if err := ipCmd("netns", "add", name); err != nil {
		return NS{}, err
	}
	tp.created = append(tp.created, name)
	if err := ipCmd("-n", name, "link", "set", "lo", "up"); err != nil {
		return NS{}, err
	}
	return NS{Name: name, Path: "/run/netns/" + name}, nil
}

func (tp *Topology) build(spec Spec) error {
	var err error
	if tp.Fabric, err = tp.addNS("fab"); err != nil {
		return err
	}
	fab := tp.Fabric.Name
	if err := ipBatch(fab,
		"link add "+tp.Bridge+" type bridge",
		"link set "+tp.Bridge+" up",
	); err != nil {
		return err
	}
	for n := 1; n <= spec.Nodes; n++ {
		node := &Node{
			Index:   n,
			IP:      netip.AddrFrom4([4]byte{172, 30, 0, byte(n)}),
			PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(n), 0}), 24),
			Gateway: netip.AddrFrom4([4]byte{10, 244, byte(n), 1}),
			LinkIf:  "eth0",
		}
		if spec.DualStack {
			node.IP6 = v6(NodeCIDR6, 0, uint16(n))
			node.PodCIDR6 = netip.PrefixFrom(v6(PodCIDR6, uint16(n), 0), 64)
			node.Gateway6 = v6(PodCIDR6, uint16(n), 1)
		}
		if node.NS, err = tp.addNS(fmt.Sprintf("n%d", n)); err != nil {
			return err
		}
		port := fmt.Sprintf("n%d", n)
		if err := ipBatch(fab,
			fmt.Sprintf("link add %s type veth peer name %s netns %s", port, node.LinkIf, node.Name),
			fmt.Sprintf("link set %s master %s up", port, tp.Bridge),
		); err != nil {
			return err
		}
		if err := ipBatch(node.Name,
			fmt.Sprintf("addr add %s/24 dev %s", node.IP, node.LinkIf),
			fmt.Sprintf("link set %s up", node.LinkIf),
		); err != nil {
			return err
		}
		if err := node.Exec(func() error {
			if spec.DualStack {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1\n"), 0o644); err != nil {
					return err
				}
			}
			return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
		}); err != nil {
			return fmt.Errorf("enable forwarding in %s: %w", node.Name, err)
		}
		if spec.DualStack {
			if err := ipBatch(node.Name, fmt.Sprintf("addr add %s/64 dev %s nodad", node.IP6, node.LinkIf)); err != nil {
				return err
			}
		}
		for m := 1; m <= spec.PodsPerNode; m++ {
			pod := &Pod{
				Node:   node,
				Index:  m,
				IP:     netip.AddrFrom4([4]byte{10, 244, byte(n), byte(m + 1)}),
				Iface:  "eth0",
				HostIf: fmt.Sprintf("p%d", m),
			}
			if spec.DualStack {
				pod.IP6 = v6(PodCIDR6, uint16(n), uint16(m+1))
			}
			if pod.NS, err = tp.addNS(fmt.Sprintf("n%dp%d", n, m)); err != nil {
				return err
			}
			if err := ipBatch(node.Name,
				fmt.Sprintf("link add %s type veth peer name %s netns %s", pod.HostIf, pod.Iface, pod.Name),
				fmt.Sprintf("addr add %s/32 dev %s", node.Gateway, pod.HostIf),
				fmt.Sprintf("link set %s up", pod.HostIf),
				fmt.Sprintf("route add %s/32 dev %s src %s", pod.IP, pod.HostIf, node.Gateway),
			); err != nil {
				return err
			}
			if err := ipBatch(pod.Name,
				fmt.Sprintf("addr add %s/32 dev %s", pod.IP, pod.Iface),
				fmt.Sprintf("link set %s up", pod.Iface),
				fmt.Sprintf("route add %s/32 dev %s scope link", node.Gateway, pod.Iface),
				fmt.Sprintf("route add default via %s dev %s src %s", node.Gateway, pod.Iface, pod.IP),
				fmt.Sprintf("route add %s via %s dev %s src %s", ServiceCIDR, node.Gateway, pod.Iface, pod.IP),
			); err != nil {
				return err
			}
			if spec.DualStack {
				if err := ipBatch(node.Name,
					fmt.Sprintf("addr add %s/128 dev %s nodad", node.Gateway6, pod.HostIf),
					fmt.Sprintf("route add %s/128 dev %s src %s", pod.IP6, pod.HostIf, node.Gateway6),
				); err != nil {
					return err
				}
				if err := ipBatch(pod.Name,
					fmt.Sprintf("addr add %s/128 dev %s nodad", pod.IP6, pod.Iface),
					fmt.Sprintf("route add %s/128 dev %s", node.Gateway6, pod.Iface),
					fmt.Sprintf("route add default via %s dev %s src %s", node.Gateway6, pod.Iface, pod.IP6),
				); err != nil {
					return err
				}
			}
			node.Pods = append(node.Pods, pod)
		}
		tp.Nodes = append(tp.Nodes, node)
	}
	if spec.HostLink {
		if err := tp.buildHostLink(); err != nil {
			return err
		}
	}
	// Every node reaches every other node's pods through that node.
	for _, node := range tp.Nodes {
		var cmds []string
		for _, other := range tp.Nodes {
			if other != node {
				cmds = append(cmds, fmt.Sprintf("route add %s via %s dev %s", other.PodCIDR, other.IP, node.LinkIf))
				if spec.DualStack {
					cmds = append(cmds, fmt.Sprintf("route add %s via %s dev %s", other.PodCIDR6, other.IP6, node.LinkIf))
				}
			}
		}
		if err := ipBatch(node.Name, cmds...); err != nil {
			return err
		}
	}
	return nil
}

// v6 is the address of prefix p (a /48) with hextets 4 and 8 set:
// p:<subnet>::<host>.
func v6(p netip.Prefix, subnet, host uint16) netip.Addr {
	b := p.Addr().As16()
	b[6], b[7] = byte(subnet>>8), byte(subnet)
	b[14], b[15] = byte(host>>8), byte(host)
	return netip.AddrFrom16(b)
}

// hostLockPath serializes host-linked topologies across processes.
const hostLockPath = "/run/amt-hostlink.lock"

// hostLockWait bounds the wait for another process's host-linked topology.
const hostLockWait = 5 * time.Minute

// buildHostLink adds the veth between the root namespace and br0.
func (tp *Topology) buildHostLink() error {
	f, err := os.OpenFile(hostLockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("host link lock: %w", err)
	}
	deadline := time.Now().Add(hostLockWait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return fmt.Errorf("host link lock %s (held by another host-linked topology?): %w", hostLockPath, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	tp.hostLock = f
	// amt<pid>h<seq>: at most 15 bytes for pids up to 7 digits.
	host := &Host{IP: HostIP, Iface: fmt.Sprintf("amt%dh%d", os.Getpid(), tp.seq)}
	if len(host.Iface) > 15 {
		return fmt.Errorf("host link name %q too long", host.Iface)
	}
	if err := ipCmd("link", "add", host.Iface, "type", "veth", "peer", "name", "host", "netns", tp.Fabric.Name); err != nil {
		return err
	}
	tp.Host = host
	if err := ipBatch(tp.Fabric.Name,
		"link set host master "+tp.Bridge+" up",
	); err != nil {
		return err
	}
	if err := ipCmd("addr", "add", host.IP.String()+"/24", "dev", host.Iface); err != nil {
		return err
	}
	return ipCmd("link", "set", host.Iface, "up")
}

// ipCmd runs `ip args...`.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ipBatch runs `ip -n ns -batch -` over cmds, one command per line.
func ipBatch(ns string, cmds ...string) error {
	if len(cmds) == 0 {
		return nil
	}
	c := exec.Command("ip", "-n", ns, "-batch", "-")
	c.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s -batch [%s]: %w: %s", ns, strings.Join(cmds, "; "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
