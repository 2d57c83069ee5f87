package localcluster

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestNewPlan_DefaultsLayOutNodesOnTheLink(t *testing.T) {
	p, err := NewPlan(Config{Nodes: 3})
	if err != nil {
		t.Fatal(err)
	}
	if p.Server != "https://172.30.0.254:6443" || p.HostIP != netip.MustParseAddr("172.30.0.254") {
		t.Errorf("server %s host %s", p.Server, p.HostIP)
	}
	if p.ClusterDNS != netip.MustParseAddr("10.96.0.10") {
		t.Errorf("cluster DNS %s, want 10.96.0.10", p.ClusterDNS)
	}
	if q, err := NewPlan(Config{ServiceCIDR: netip.MustParsePrefix("10.100.1.0/24")}); err != nil || q.ClusterDNS != netip.MustParseAddr("10.100.1.10") {
		t.Errorf("service CIDR 10.100.1.0/24: cluster DNS %v (%v), want 10.100.1.10", q, err)
	}
	if p.LinkNetns != "ambient-link" || p.HostIface != "ambient-host" {
		t.Errorf("link netns %q host iface %q", p.LinkNetns, p.HostIface)
	}
	var got []string
	for _, n := range p.Nodes {
		got = append(got, n.Name+" "+n.Netns+" "+n.IP.String()+" "+n.Port)
	}
	want := []string{
		"ambient-node-1 /run/netns/ambient-node-1 172.30.0.1 n1",
		"ambient-node-2 /run/netns/ambient-node-2 172.30.0.2 n2",
		"ambient-node-3 /run/netns/ambient-node-3 172.30.0.3 n3",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("nodes (-want +got):\n%s", d)
	}
}

func TestGuardRoutes_CoverEveryCIDRAndAreOwnedPerLink(t *testing.T) {
	p, _ := NewPlan(Config{})
	var got []string
	for _, r := range GuardRoutes(p) {
		got = append(got, strings.Join(r.Args(), " "))
	}
	want := []string{
		"unreachable 10.244.0.0/16 proto 168 metric 1000",
		"unreachable 10.96.0.0/16 proto 168 metric 1000",
		"unreachable 172.30.0.0/16 proto 168 metric 1000",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("guards (-want +got):\n%s", d)
	}
	q, _ := NewPlan(Config{LinkCIDR: netip.MustParsePrefix("172.30.201.0/24")})
	if q.GuardMetric == p.GuardMetric || q.HostIP.String() != "172.30.201.254" {
		t.Errorf("second link: metric %d host %s", q.GuardMetric, q.HostIP)
	}
	// Every address the cluster uses is under a guard.
	for _, n := range q.Nodes {
		if !q.NodeCIDR.Contains(n.IP) {
			t.Errorf("node %s at %s outside the guarded %s", n.Name, n.IP, q.NodeCIDR)
		}
	}
}

func TestNewPlan_RefusesBadConfigs(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"too many nodes", Config{Nodes: MaxNodes + 1}, "nodes must be"},
		{"negative nodes", Config{Nodes: -1}, "nodes must be"},
		{"long name", Config{Name: "abcdefghijk"}, "1..10 characters"},
		{"bad name", Config{Name: "Amb_x"}, "only a-z"},
		{"link not /24", Config{LinkCIDR: netip.MustParsePrefix("172.30.0.0/23")}, "IPv4 /24"},
		{"link outside node CIDR", Config{LinkCIDR: netip.MustParsePrefix("192.168.9.0/24")}, "inside node CIDR"},
		{"pods overlap services", Config{PodCIDR: netip.MustParsePrefix("10.96.0.0/16")}, "overlaps service"},
		{"pods overlap nodes", Config{PodCIDR: netip.MustParsePrefix("172.30.0.0/16")}, "overlaps the node CIDR"},
		{"pod CIDR too small", Config{PodCIDR: netip.MustParsePrefix("10.244.0.0/22")}, "too small"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewPlan(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestCNIPaths_MatchTheInstaller: the ambient-cni-node DaemonSet's host
// paths are the node's CNI directories the node agent uses.
func TestCNIPaths_MatchTheInstaller(t *testing.T) {
	b, err := os.ReadFile("../manifests/cni/cni.yaml")
	if err != nil {
		t.Fatal(err)
	}
	root := HostPathRoot("/s", "n")
	for _, dir := range []string{CNIConfDir("/s", "n"), CNIPluginDir("/s", "n"), root + ZtunnelRunDir} {
		want := "path: " + strings.TrimPrefix(dir, root) + "\n"
		if !strings.Contains(string(b), want) {
			t.Errorf("manifests/cni/cni.yaml lacks hostPath %q", strings.TrimSpace(want))
		}
	}
}

// TestZtunnelPaths_MatchTheDaemonSet keeps ambient-cni's socket and state
// dir where the ztunnel DaemonSet's hostPath puts them under the node's
// host-path root.
func TestZtunnelPaths_MatchTheDaemonSet(t *testing.T) {
	b, err := os.ReadFile("../manifests/ztunnel.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{
		"path: " + ZtunnelRunDir + "\n",
		"--cni-socket=" + strings.TrimPrefix(ZtunnelSocket("", "n"), HostPathRoot("", "n")) + "\n",
		"--cni-state-dir=" + strings.TrimPrefix(CNIStateDir("", "n"), HostPathRoot("", "n")) + "\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("manifests/ztunnel.yaml lacks %q", strings.TrimSpace(want))
		}
	}
}

func TestRenderKubeProxyConfig(t *testing.T) {
	p, _ := NewPlan(Config{})
	b, err := RenderKubeProxyConfig(p, p.Nodes[1], "/s/kubeconfig")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"kind: KubeProxyConfiguration",
		"kubeconfig: /s/kubeconfig",
		"hostnameOverride: ambient-node-2",
		"bindAddress: 172.30.0.2",
		"clusterCIDR: 10.244.0.0/16",
		"mode: iptables",
		"maxPerCore: 0",
	} {
		if !strings.Contains(string(b), s) {
			t.Errorf("kube-proxy config lacks %q:\n%s", s, b)
		}
	}
}

func TestNodeNetCommands_ServiceRouteButNoDefault(t *testing.T) {
	p, _ := NewPlan(Config{})
	got := NodeNetCommands(p, p.Nodes[0])
	want := []string{"addr add 172.30.0.1/24 dev eth0", "link set eth0 up", "route add 10.96.0.0/16 dev eth0 src 172.30.0.1"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if got := strings.Join(NodeMasqRule(p), " "); got != "-s 10.244.0.0/16 -d 172.30.0.254/32 -j MASQUERADE" {
		t.Errorf("masquerade rule %q", got)
	}
}

func TestProcStart_ReadsOwnStartTime(t *testing.T) {
	a, err := procStart(1)
	if err != nil {
		t.Skip("no /proc:", err)
	}
	_ = a
	if (ProcEntry{Pid: 1, Start: a + 1}).alive() {
		t.Error("a pid with another start time counts as alive")
	}
}

func TestUp_RefusesANonEmptyStateDirWithoutACluster(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "precious"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Up(context.Background(), Config{StateDir: dir, Etcd: "/nonexistent"})
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("err = %v, want a refusal", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
		t.Errorf("the directory's file is gone: %v", err)
	}
}
