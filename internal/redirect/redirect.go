// Package redirect installs ztunnel's in-pod traffic capture: nftables
// rules inside an enrolled pod's network namespace, Istio's in-pod
// redirection model (DESIGN.md §5).
//
// # Rules
//
// Everything lives in one nftables table of our own, "inet ambient", with
// two NAT base chains (see Rules for the exact text, and
// testdata/rules.golden):
//
//	AMBIENT_PREROUTING (nat prerouting, priority -100, i.e. dstnat) — inbound:
//	  loopback                          → untouched
//	  packet mark & 0xfff == 0x539      → untouched (ztunnel's own sockets)
//	  non-TCP                           → untouched
//	  TCP to 15008                      → untouched (HBONE)
//	  any other TCP                     → REDIRECT to 15006 (inbound plaintext;
//	                                      ztunnel refuses it there when it was for
//	                                      15001 or 15006, its own ports)
//	AMBIENT_OUTPUT (nat output, priority -100) — outbound:
//	  out via loopback                  → untouched (127.0.0.0/8 and the pod's own IP)
//	  packet mark & 0xfff == 0x539      → untouched
//	  any TCP                           → REDIRECT to 15001 (outbound)
//
// By default only TCP is captured: UDP passes both chains untouched, so
// HBONE/3 (QUIC on UDP 15008, internal/hbone3) reaches ztunnel's socket in
// the pod and ztunnel's own QUIC connections leave as they are. ztunnel
// marks its UDP sockets 0x539 all the same, like its TCP ones.
//
// # UDP capture (Config.CaptureUDP)
//
// Outbound UDP is captured with TPROXY, the standard technique for locally
// generated traffic, since NAT would lose the original destination of
// every datagram but a flow's first. Two more chains, and policy routing:
//
//	AMBIENT_UDP_OUTPUT (route output, priority mangle) — outbound UDP:
//	  non-UDP                           → untouched
//	  ztunnel's (0x539) datagram to lo  → ct mark 0x539 (see below), untouched
//	  out via loopback                  → untouched
//	  packet mark & 0xfff == 0x539      → untouched (ztunnel's own sockets)
//	  reply in a flow with ct mark 0x539 → mark |= 0x53a (captured)
//	  UDP to port 53                    → untouched unless Config.CaptureDNS
//	  multicast or broadcast            → untouched
//	  any other UDP                     → mark |= 0x53a (Config.UDPMark)
//	ip rule fwmark 0x53a/0xfff lookup 1338; table 1338: local default dev lo
//	  → a marked datagram is re-routed to lo (a "route" chain re-routes when
//	    it changes the mark) and comes back in, still marked
//	AMBIENT_UDP_PREROUTING (filter prerouting, priority mangle):
//	  in via lo, UDP, mark & 0xfff == 0x53a → tproxy to :15001
//	  → the datagram, addressed to its real destination, is delivered to
//	    ztunnel's transparent socket on 15001, which learns that
//	    destination from IP_ORIGDSTADDR (internal/udpcapture).
//
// The mark also makes the input route lookup local (the fwmark rule), as
// TPROXY requires. If nothing listens on 15001 the kernel drops the
// datagram inside the pod (silently: the app gets no ICMP error); it never
// leaves the pod uncaptured. ztunnel answers from the original
// destination with a transparent socket bound to it and marked 0x539,
// which the rules leave alone (internal/udpcapture.Reply).
//
// The destination side uses the same chains. ztunnel delivers a datagram
// to an app of the pod from the remote source address (a transparent
// socket bound to it, marked 0x539, internal/udpcapture.DialApp); the
// first rule of AMBIENT_UDP_OUTPUT sets ct mark 0x539 on that flow's
// conntrack entry. The app's replies are that entry's reply direction:
// they get the capture mark (DNS or not), go to lo, and TPROXY hands them
// to ztunnel's socket, which, connected to the app, is the exact match.
//
// UDP capture is off by default: with it on, the pod's UDP reaches the
// world only through whatever serves 15001/udp.
//
// NAT rules see only a connection's first packet; conntrack applies the
// translation to the rest. The mark match uses Istio's mask 0xfff so
// ztunnel's sockets (SO_MARK 0x539, see netns.WithMark) bypass capture.
//
// The "inet" family covers IPv4 and IPv6 at once. Owning a whole table
// makes the rules easy to reason about: Install replaces the table in one
// atomic nft transaction (idempotent, never a moment without capture),
// Remove deletes it (idempotent), and nothing else in the pod's ruleset,
// iptables-nft or nft, is touched.
//
// The nft binary (Debian package nftables) must be installed. It runs on a
// thread switched into the pod's namespace (internal/netns), so the pod
// needs no tooling of its own.
//
// OriginalDst recovers a redirected connection's real destination with
// SO_ORIGINAL_DST (IP6T_SO_ORIGINAL_DST for IPv6).
package redirect

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/ambientmesh/ambient/internal/netns"
)

// Well-known ztunnel values (Istio's).
const (
	OutboundPort  = 15001 // outbound capture
	InboundPort   = 15006 // inbound plaintext capture
	TunnelPort    = 15008 // inbound HBONE (TCP) and HBONE/3 (UDP), never redirected
	ZtunnelMark   = 0x539 // SO_MARK of ztunnel's own sockets
	ZtunnelMask   = 0xfff // bits of the mark compared
	Table         = "ambient"
	Family        = "inet"
	ChainInbound  = "AMBIENT_PREROUTING"
	ChainOutbound = "AMBIENT_OUTPUT"
	// UDP capture, with Config.CaptureUDP.
	ChainUDPOutput     = "AMBIENT_UDP_OUTPUT"
	ChainUDPPrerouting = "AMBIENT_UDP_PREROUTING"
)

// Config parametrizes the rules. The zero value means Istio's defaults.
type Config struct {
	OutboundPort uint16 // 15001 when zero
	InboundPort  uint16 // 15006 when zero
	TunnelPort   uint16 // 15008 when zero
	Mark         uint32 // 0x539 when zero
	MarkMask     uint32 // 0xfff when zero
	// HostAddrs are the addresses the node itself reaches the pod from (the
	// host end of the pod's link, its default gateway): connections from
	// them — the kubelet's probes — are not captured, so an ALLOW policy
	// never fails a pod's health checks. Istio exempts probes the same way
	// (its CNI SNATs them to 169.254.7.127, which the in-pod rules skip).
	// Only IPv4 addresses are used.
	HostAddrs []netip.Addr

	// CaptureUDP also captures outbound UDP to OutboundPort with TPROXY
	// (see the package comment); someone must serve it there.
	CaptureUDP bool
	// CaptureDNS, with CaptureUDP, captures UDP to port 53 too. Without it
	// DNS queries leave the pod as they are.
	CaptureDNS bool
	// UDPMark is the mark of captured UDP, 0x53a when zero. Under MarkMask
	// it must differ from Mark.
	UDPMark uint32
}

// UDPMark is the default mark of captured UDP datagrams.
const UDPMark = 0x53a

func (c Config) withDefaults() Config {
	if c.OutboundPort == 0 {
		c.OutboundPort = OutboundPort
	}
	if c.InboundPort == 0 {
		c.InboundPort = InboundPort
	}
	if c.TunnelPort == 0 {
		c.TunnelPort = TunnelPort
	}
	if c.Mark == 0 {
		c.Mark = ZtunnelMark
	}
	if c.MarkMask == 0 {
		c.MarkMask = ZtunnelMask
	}
	if c.UDPMark == 0 {
		c.UDPMark = UDPMark
	}
	return c
}

// Validate reports a config that would capture ztunnel's own traffic.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.OutboundPort == c.InboundPort || c.OutboundPort == c.TunnelPort || c.InboundPort == c.TunnelPort {
		return fmt.Errorf("redirect: ports must differ: outbound %d, inbound %d, tunnel %d", c.OutboundPort, c.InboundPort, c.TunnelPort)
	}
	if c.Mark&c.MarkMask != c.Mark {
		return fmt.Errorf("redirect: mark %#x has bits outside mask %#x", c.Mark, c.MarkMask)
	}
	if c.CaptureUDP {
		if c.UDPMark&c.MarkMask != c.UDPMark {
			return fmt.Errorf("redirect: UDP mark %#x has bits outside mask %#x", c.UDPMark, c.MarkMask)
		}
		if c.UDPMark == c.Mark {
			return fmt.Errorf("redirect: UDP mark %#x is ztunnel's own mark: choose another", c.UDPMark)
		}
	}
	return nil
}

// Rules renders the nftables table, one line per element, as nft -f reads
// it. It is a pure function of cfg.
//
// Only a connection's opening SYN is redirected. Installing the first NAT
// table is what starts connection tracking in the pod's namespace, so a
// connection opened before capture has no conntrack entry: its next packet
// is picked up mid-stream as new and, without the SYN check, redirected to
// a port where nothing knows it — the kernel resets it. With the check such
// connections carry on untouched, as they would have without the mesh.
func Rules(cfg Config) []string {
	c := cfg.withDefaults()
	mark := fmt.Sprintf("meta mark & %#x == %#x return", c.MarkMask, c.Mark)
	notSYN := "tcp flags & (fin | syn | rst | ack) != syn return"
	rules := []string{
		fmt.Sprintf("table %s %s {", Family, Table),
		fmt.Sprintf("\tchain %s {", ChainInbound),
		"\t\ttype nat hook prerouting priority -100; policy accept;",
		`		iifname "lo" return`,
		"\t\t" + mark,
		"\t\tmeta l4proto != tcp return",
		// Only HBONE is reached from outside: TCP to ztunnel's other ports
		// is redirected to 15006 too, where it is refused, so nothing
		// from outside meets the outbound listener (Istio's rule).
		fmt.Sprintf("\t\ttcp dport %d return", c.TunnelPort),
	}
	if hosts := hostSet(c.HostAddrs); hosts != "" {
		rules = append(rules, "\t\tip saddr "+hosts+" return")
	}
	rules = append(rules,
		"\t\t"+notSYN,
		fmt.Sprintf("\t\tmeta l4proto tcp redirect to :%d", c.InboundPort),
		"\t}",
		fmt.Sprintf("\tchain %s {", ChainOutbound),
		"\t\ttype nat hook output priority -100; policy accept;",
		`		oifname "lo" return`,
		"\t\t"+mark,
		"\t\t"+notSYN,
		fmt.Sprintf("\t\tmeta l4proto tcp redirect to :%d", c.OutboundPort),
		"\t}",
	)
	if c.CaptureUDP {
		rules = append(rules, udpRules(c)...)
	}
	return append(rules, "}")
}

// udpRules are the chains of UDP capture; see the package comment.
func udpRules(c Config) []string {
	rules := []string{
		fmt.Sprintf("\tchain %s {", ChainUDPOutput),
		"\t\ttype route hook output priority mangle; policy accept;",
		"\t\tmeta l4proto != udp return",
		// Flows ztunnel opens to an app of the pod (inbound delivery from
		// a remote source address) are remembered on their conntrack
		// entry, and the app's replies to them captured like outbound.
		fmt.Sprintf(`		oifname "lo" meta mark & %#x == %#x ct direction original ct mark set ct mark & %#x | %#x`, c.MarkMask, c.Mark, ^c.MarkMask, c.Mark),
		`		oifname "lo" return`,
		fmt.Sprintf("\t\tmeta mark & %#x == %#x return", c.MarkMask, c.Mark),
		fmt.Sprintf("\t\tct direction reply ct mark & %#x == %#x meta mark set meta mark & %#x | %#x return", c.MarkMask, c.Mark, ^c.MarkMask, c.UDPMark),
	}
	if !c.CaptureDNS {
		rules = append(rules, "\t\tudp dport 53 return")
	}
	return append(rules,
		"\t\tip daddr { 224.0.0.0/4, 255.255.255.255 } return",
		"\t\tip6 daddr ff00::/8 return",
		fmt.Sprintf("\t\tmeta mark set meta mark & %#x | %#x", ^c.MarkMask, c.UDPMark),
		"\t}",
		fmt.Sprintf("\tchain %s {", ChainUDPPrerouting),
		"\t\ttype filter hook prerouting priority mangle; policy accept;",
		`		iifname != "lo" return`,
		"\t\tmeta l4proto != udp return",
		fmt.Sprintf("\t\tmeta mark & %#x != %#x return", c.MarkMask, c.UDPMark),
		fmt.Sprintf("\t\tmeta l4proto udp tproxy ip to :%d", c.OutboundPort),
		fmt.Sprintf("\t\tmeta l4proto udp tproxy ip6 to :%d", c.OutboundPort),
		"\t}",
	)
}

// hostSet is the nft set of the IPv4 addresses among addrs, or "".
func hostSet(addrs []netip.Addr) string {
	var v4 []string
	for _, a := range addrs {
		if a = a.Unmap(); a.Is4() {
			v4 = append(v4, a.String())
		}
	}
	if len(v4) == 0 {
		return ""
	}
	return "{ " + strings.Join(v4, ", ") + " }"
}

// DefaultGateways returns the IPv4 gateways of the default routes in the
// network namespace at nsPath: for a pod, the host end of its link, where
// the node's own connections to it come from.
func DefaultGateways(nsPath string) ([]netip.Addr, error) {
	var table []byte
	err := netns.Do(nsPath, func() error {
		// /proc/thread-self/net is the calling thread's namespace.
		var err error
		table, err = os.ReadFile("/proc/thread-self/net/route")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redirect: routes of %s: %w", nsPath, err)
	}
	return parseDefaultGateways(string(table)), nil
}

// parseDefaultGateways reads /proc/net/route: the gateway of each default
// route (destination and mask 0, flag RTF_GATEWAY), little-endian hex.
func parseDefaultGateways(table string) []netip.Addr {
	var gws []netip.Addr
	for _, line := range strings.Split(table, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 8 || f[1] != "00000000" || f[7] != "00000000" {
			continue
		}
		flags, err1 := strconv.ParseUint(f[3], 16, 16)
		gw, err2 := strconv.ParseUint(f[2], 16, 32)
		if err1 != nil || err2 != nil || flags&0x2 == 0 || gw == 0 {
			continue
		}
		a := netip.AddrFrom4([4]byte{byte(gw), byte(gw >> 8), byte(gw >> 16), byte(gw >> 24)})
		if !slices.Contains(gws, a) {
			gws = append(gws, a)
		}
	}
	return gws
}

// dropTable deletes our table in one transaction whether or not it exists
// (nft 1.0.6 has no "destroy"; adding an existing table is a no-op).
var dropTable = []string{
	fmt.Sprintf("add table %s %s", Family, Table),
	fmt.Sprintf("delete table %s %s", Family, Table),
}

// InstallScript is the nft -f script Install runs: drop and recreate the
// table, atomically.
func InstallScript(cfg Config) string {
	return strings.Join(append(append([]string{}, dropTable...), Rules(cfg)...), "\n") + "\n"
}

// Install captures the traffic of the pod whose network namespace is at
// nsPath. Installing again replaces the rules atomically; with
// Config.CaptureUDP it also adds the policy routing (if missing), without
// it it removes any left by an earlier Install.
func Install(nsPath string, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	c := cfg.withDefaults()
	// Routing before the rules that mark, so a marked datagram always has
	// its route to lo (and never leaves by the default route).
	if c.CaptureUDP {
		if err := installRouting(nsPath, c); err != nil {
			return fmt.Errorf("redirect: install UDP routing in %s: %w", nsPath, err)
		}
	}
	if _, err := nft(nsPath, InstallScript(cfg), "-f", "-"); err != nil {
		return fmt.Errorf("redirect: install in %s: %w", nsPath, err)
	}
	if !c.CaptureUDP {
		if err := removeRouting(nsPath); err != nil {
			return fmt.Errorf("redirect: remove UDP routing in %s: %w", nsPath, err)
		}
	}
	return nil
}

// Remove deletes every rule and chain Install created, and the UDP policy
// routing. Removing from a namespace without them succeeds.
func Remove(nsPath string) error {
	if _, err := nft(nsPath, strings.Join(dropTable, "\n")+"\n", "-f", "-"); err != nil {
		return fmt.Errorf("redirect: remove in %s: %w", nsPath, err)
	}
	if err := removeRouting(nsPath); err != nil {
		return fmt.Errorf("redirect: remove UDP routing in %s: %w", nsPath, err)
	}
	return nil
}

// Installed reports whether the capture table exists in the namespace.
func Installed(nsPath string) (bool, error) {
	out, err := nft(nsPath, "", "list", "tables", Family)
	if err != nil {
		return false, fmt.Errorf("redirect: list tables in %s: %w", nsPath, err)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == fmt.Sprintf("table %s %s", Family, Table) {
			return true, nil
		}
	}
	return false, nil
}

// nft runs the nft binary inside the namespace with stdin and args.
func nft(nsPath, stdin string, args ...string) (string, error) {
	bin, err := exec.LookPath("nft")
	if err != nil {
		return "", errors.New("nft not found: install the nftables package")
	}
	var out string
	err = netns.Do(nsPath, func() error {
		// The child is forked from this thread and so starts in its namespace.
		cmd := exec.Command(bin, args...)
		cmd.Stdin = strings.NewReader(stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		out = stdout.String()
		return nil
	})
	return out, err
}
