package redirect

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambientmesh/ambient/internal/netns"
)

// Policy routing for UDP capture, the same as
//
//	ip    rule add fwmark <UDPMark>/<MarkMask> lookup RouteTable pref RulePriority
//	ip -6 rule add fwmark <UDPMark>/<MarkMask> lookup RouteTable pref RulePriority
//	ip    route replace local 0.0.0.0/0 dev lo table RouteTable
//	ip -6 route replace local ::/0 dev lo table RouteTable
//
// through rtnetlink (vishvananda/netlink) on a thread in the pod's
// namespace: the pod needs no iproute2.
const (
	RouteTable   = 1338  // 0x53a, the policy routing table of captured UDP
	RulePriority = 32764 // before the main table's rule (32766)
)

// routeFamilies are the address families routed, with their default
// destination. IPv6 is skipped in a namespace without it.
var routeFamilies = []struct {
	family int
	dflt   *net.IPNet
}{
	{netlink.FAMILY_V4, &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}},
	{netlink.FAMILY_V6, &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
}

// installRouting adds the rules and routes; adding them again is a no-op.
func installRouting(nsPath string, c Config) error {
	return netns.Do(nsPath, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		for _, f := range routeFamilies {
			if f.family == netlink.FAMILY_V6 && !ipv6Enabled() {
				continue
			}
			rule := netlink.NewRule()
			rule.Family, rule.Table, rule.Priority = f.family, RouteTable, RulePriority
			mask := c.MarkMask
			rule.Mark, rule.Mask = c.UDPMark, &mask
			// EEXIST: the identical rule is there already.
			if err := netlink.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add rule fwmark %#x/%#x lookup %d: %w", c.UDPMark, c.MarkMask, RouteTable, err)
			}
			route := &netlink.Route{Family: f.family, LinkIndex: lo.Attrs().Index, Dst: f.dflt,
				Table: RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Protocol: unix.RTPROT_STATIC}
			if err := netlink.RouteReplace(route); err != nil {
				return fmt.Errorf("add route local %s dev lo table %d: %w", f.dflt, RouteTable, err)
			}
		}
		return nil
	})
}

// removeRouting deletes every rule that looks up RouteTable and the
// table's routes. Removing what is not there succeeds.
func removeRouting(nsPath string) error {
	return netns.Do(nsPath, func() error {
		for _, f := range routeFamilies {
			rules, err := netlink.RuleList(f.family)
			if errors.Is(err, unix.EAFNOSUPPORT) {
				continue
			}
			if err != nil {
				return fmt.Errorf("list rules: %w", err)
			}
			for _, r := range rules {
				if r.Table != RouteTable {
					continue
				}
				if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("delete rule lookup %d: %w", RouteTable, err)
				}
			}
			routes, err := netlink.RouteListFiltered(f.family, &netlink.Route{Table: RouteTable}, netlink.RT_FILTER_TABLE)
			if err != nil {
				return fmt.Errorf("list routes of table %d: %w", RouteTable, err)
			}
			for _, r := range routes {
				if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
					return fmt.Errorf("delete route %s table %d: %w", r.Dst, RouteTable, err)
				}
			}
		}
		return nil
	})
}

// ipv6Enabled reports whether the calling thread's namespace has IPv6 on
// its loopback (/proc/sys/net is the caller's namespace).
func ipv6Enabled() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
	return err == nil && len(b) > 0 && b[0] == '0'
}
