package localcluster

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/ambientmesh/ambient/internal/netns"
)

// GuardRoutes are the root namespace's unreachable routes for a plan.
func GuardRoutes(p *Plan) []Route {
	var rs []Route
	for _, g := range p.Guards {
		rs = append(rs, Route{Type: "unreachable", Dst: g.String(), Proto: GuardProto, Metric: p.GuardMetric})
	}
	return rs
}

// buildNetwork creates the guard routes, the node link, the host link and
// the node namespaces, recording each before creating it.
func (c *Cluster) buildNetwork() error {
	p := c.Plan
	if err := preflight(p); err != nil {
		return err
	}
	for _, r := range GuardRoutes(p) {
		if err := c.rec.update(func(rec *Record) { rec.Routes = append(rec.Routes, r) }); err != nil {
			return err
		}
		if err := ip(append([]string{"route", "replace"}, r.Args()...)...); err != nil {
			return fmt.Errorf("localcluster: guard route: %w", err)
		}
	}
	if err := c.addNetns(p.LinkNetns); err != nil {
		return err
	}
	if err := ipBatch(p.LinkNetns, "link add "+p.Bridge+" type bridge", "link set "+p.Bridge+" up"); err != nil {
		return err
	}
	for _, n := range p.Nodes {
		if err := c.addNetns(n.Name); err != nil {
			return err
		}
		if err := ipBatch(p.LinkNetns,
			fmt.Sprintf("link add %s type veth peer name eth0 netns %s", n.Port, n.Name),
			fmt.Sprintf("link set %s master %s up", n.Port, p.Bridge),
		); err != nil {
			return err
		}
		if err := ipBatch(n.Name, NodeNetCommands(p, n)...); err != nil {
			return err
		}
		if err := netns.Do(n.Netns, func() error {
			return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
		}); err != nil {
			return fmt.Errorf("localcluster: ip_forward in %s: %w", n.Name, err)
		}
		if err := run("ip", append([]string{"netns", "exec", n.Name, "iptables", "-t", "nat", "-A", "POSTROUTING"}, NodeMasqRule(p)...)...); err != nil {
			return err
		}
	}
	// The host link: created with its peer in the link namespace, so
	// deleting that namespace also deletes the root end.
	if err := c.rec.update(func(r *Record) { r.Links = append(r.Links, p.HostIface) }); err != nil {
		return err
	}
	if err := ip("link", "add", p.HostIface, "type", "veth", "peer", "name", p.HostPort, "netns", p.LinkNetns); err != nil {
		return err
	}
	if err := ipBatch(p.LinkNetns, fmt.Sprintf("link set %s master %s up", p.HostPort, p.Bridge)); err != nil {
		return err
	}
	if err := ip("addr", "add", fmt.Sprintf("%s/%d", p.HostIP, p.LinkCIDR.Bits()), "dev", p.HostIface); err != nil {
		return err
	}
	return ip("link", "set", p.HostIface, "up")
}

// preflight refuses to build over namespaces, links or routes that exist
// already: they belong to another cluster (or its leftovers), and since
// everything is recorded before it is created, Down would remove them.
func preflight(p *Plan) error {
	var taken []string
	names := []string{p.LinkNetns}
	for _, n := range p.Nodes {
		names = append(names, n.Name)
	}
	for _, n := range names {
		if _, err := os.Stat(NetnsPath(n)); err == nil {
			taken = append(taken, "network namespace "+n)
		}
	}
	if _, err := os.Stat("/sys/class/net/" + p.HostIface); err == nil {
		taken = append(taken, "link "+p.HostIface)
	}
	if out, err := exec.Command("ip", "-o", "addr", "show", "to", p.HostIP.String()+"/32").Output(); err == nil && len(strings.TrimSpace(string(out))) > 0 {
		taken = append(taken, "address "+p.HostIP.String())
	}
	for _, r := range GuardRoutes(p) {
		if routeExists(r) {
			taken = append(taken, "route "+strings.Join(r.Args(), " "))
		}
	}
	if len(taken) > 0 {
		return fmt.Errorf("localcluster: %s already exist: another local cluster uses this name or node link; run ambientctl cluster down with its --state-dir, or choose another --name and --link-cidr", strings.Join(taken, ", "))
	}
	return nil
}

func (c *Cluster) addNetns(name string) error {
	if err := c.rec.update(func(r *Record) { r.Netns = append(r.Netns, name) }); err != nil {
		return err
	}
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	return ip("-n", name, "link", "set", "lo", "up")
}

// ip runs `ip args...`.
func ip(args ...string) error { return run("ip", args...) }

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("localcluster: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ipBatch runs `ip -n ns -batch -` over cmds.
func ipBatch(ns string, cmds ...string) error {
	c := exec.Command("ip", "-n", ns, "-batch", "-")
	c.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("localcluster: ip -n %s -batch [%s]: %w: %s", ns, strings.Join(cmds, "; "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
