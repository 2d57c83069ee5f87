package localcluster

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"text/template"
)

// Address plan defaults. Every address the cluster uses is inside these.
var (
	DefaultPodCIDR     = netip.MustParsePrefix("10.244.0.0/16")
	DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	DefaultNodeCIDR    = netip.MustParsePrefix("172.30.0.0/16") // guarded as a whole
	DefaultLinkCIDR    = netip.MustParsePrefix("172.30.0.0/24") // the node link: nodes .1.., host .254
)

// GuardProto marks the root namespace's guard routes as the local
// cluster's (internal/testenv uses 167).
const GuardProto = "168"

// APIServerPort is the apiserver's port on the host link.
const APIServerPort = 6443

// ClusterDNSOffset places the cluster DNS Service in the service CIDR:
// its ClusterIP is the CIDR's address + 10 (10.96.0.10 by default).
const ClusterDNSOffset = 10

// nthAddr is p's address + n (IPv4).
func nthAddr(p netip.Prefix, n uint32) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) + n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// MaxNodes bounds Config.Nodes (node addresses .1 to .MaxNodes of the link).
const MaxNodes = 50

// Plan is every name and address a cluster uses, computed from the Config
// alone (no I/O), so Up, Down and the tests agree.
type Plan struct {
	Name        string
	PodCIDR     netip.Prefix
	ServiceCIDR netip.Prefix
	NodeCIDR    netip.Prefix
	LinkCIDR    netip.Prefix

	LinkNetns string     // namespace holding the bridge (the node link)
	Bridge    string     // bridge device in LinkNetns
	HostIface string     // root end of the host link veth
	HostPort  string     // bridge end of the host link veth (in LinkNetns)
	HostIP    netip.Addr // root namespace's address on the node link
	Server    string     // https://HostIP:6443
	// ClusterDNS is the kube-dns Service's ClusterIP, the tenth address
	// of the service CIDR (10.96.0.10, as in manifests/cluster/), passed
	// to the node agents as --cluster-dns.
	ClusterDNS netip.Addr

	// Guards are the root namespace's unreachable routes, with protocol
	// GuardProto and metric GuardMetric: 1000 + the link's third octet, so
	// that clusters on different links (a test's and a user's) own
	// distinct routes (internal/testenv's use their pid as the metric).
	Guards      []netip.Prefix
	GuardMetric int
	Nodes       []NodePlan
}

// NodePlan is one simulated node.
type NodePlan struct {
	Index int
	Name  string     // Node name and netns name: <name>-node-<i>
	Netns string     // /run/netns/<Name>
	IP    netip.Addr // on eth0 in the node's namespace
	Port  string     // the bridge port of the node's veth, in LinkNetns
}

// NetnsPath is where `ip netns add NAME` puts a namespace.
func NetnsPath(name string) string { return "/run/netns/" + name }

// NewPlan checks cfg and lays the cluster out.
func NewPlan(cfg Config) (*Plan, error) {
	cfg = cfg.withDefaults()
	var errs []error
	if cfg.Nodes < 1 || cfg.Nodes > MaxNodes {
		errs = append(errs, fmt.Errorf("nodes must be 1..%d, not %d", MaxNodes, cfg.Nodes))
	}
	// Interface names are at most 15 bytes: <name>-host, <name>-br.
	if len(cfg.Name) == 0 || len(cfg.Name) > 10 {
		errs = append(errs, fmt.Errorf("name %q must be 1..10 characters", cfg.Name))
	}
	for _, r := range cfg.Name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			errs = append(errs, fmt.Errorf("name %q: only a-z, 0-9 and '-'", cfg.Name))
			break
		}
	}
	link := cfg.LinkCIDR.Masked()
	if !link.Addr().Is4() || link.Bits() != 24 {
		errs = append(errs, fmt.Errorf("link CIDR %s must be an IPv4 /24", cfg.LinkCIDR))
	}
	if !cfg.NodeCIDR.Contains(link.Addr()) || cfg.NodeCIDR.Bits() > link.Bits() {
		errs = append(errs, fmt.Errorf("link CIDR %s must lie inside node CIDR %s", link, cfg.NodeCIDR))
	}
	for _, p := range []netip.Prefix{cfg.PodCIDR, cfg.ServiceCIDR} {
		if p.Overlaps(cfg.NodeCIDR) {
			errs = append(errs, fmt.Errorf("%s overlaps the node CIDR %s", p, cfg.NodeCIDR))
		}
	}
	if cfg.PodCIDR.Overlaps(cfg.ServiceCIDR) {
		errs = append(errs, fmt.Errorf("pod CIDR %s overlaps service CIDR %s", cfg.PodCIDR, cfg.ServiceCIDR))
	}
	if !cfg.ServiceCIDR.Addr().Is4() || cfg.ServiceCIDR.Bits() > 28 {
		errs = append(errs, fmt.Errorf("service CIDR %s must be an IPv4 prefix of /28 or larger (the cluster DNS is its .%d)", cfg.ServiceCIDR, ClusterDNSOffset))
	}
	if cfg.PodCIDR.Bits() > 20 {
		errs = append(errs, fmt.Errorf("pod CIDR %s is too small for /24 node CIDRs", cfg.PodCIDR))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("localcluster: %w", err)
	}
	base := link.Addr().As4()
	host := base
	host[3] = 254
	p := &Plan{
		Name:        cfg.Name,
		PodCIDR:     cfg.PodCIDR.Masked(),
		ServiceCIDR: cfg.ServiceCIDR.Masked(),
		NodeCIDR:    cfg.NodeCIDR.Masked(),
		LinkCIDR:    link,
		LinkNetns:   cfg.Name + "-link",
		Bridge:      "br0",
		HostIface:   cfg.Name + "-host",
		HostPort:    "host",
		HostIP:      netip.AddrFrom4(host),
	}
	p.Server = "https://" + netip.AddrPortFrom(p.HostIP, APIServerPort).String()
	p.ClusterDNS = nthAddr(p.ServiceCIDR, ClusterDNSOffset)
	p.Guards = []netip.Prefix{p.PodCIDR, p.ServiceCIDR, p.NodeCIDR}
	p.GuardMetric = 1000 + int(base[2])
	for i := 1; i <= cfg.Nodes; i++ {
		ip := base
		ip[3] = byte(i)
		name := cfg.Name + "-node-" + strconv.Itoa(i)
		p.Nodes = append(p.Nodes, NodePlan{
			Index: i,
			Name:  name,
			Netns: NetnsPath(name),
			IP:    netip.AddrFrom4(ip),
			Port:  "n" + strconv.Itoa(i),
		})
	}
	return p, nil
}

// HostPathRoot is a node's root for hostPath volumes (the node agent's
// --host-path-root): nodes share the machine's file system, so each node's
// pods see hostPath P at HostPathRoot/P (the netns paths excepted).
func HostPathRoot(stateDir, node string) string {
	return stateDir + "/nodes/" + node + "/root"
}

// ZtunnelRunDir is the ztunnel DaemonSet's hostPath /var/run/ambient
// (manifests/ztunnel.yaml) on a node: its --cni-socket and --cni-state-dir
// are under it.
const ZtunnelRunDir = "/var/run/ambient"

// ZtunnelSocket is where the node's ztunnel listens for ambient-cni: its
// --cni-socket=/var/run/ambient/ztunnel.sock under the node's host-path
// root.
func ZtunnelSocket(stateDir, node string) string {
	return HostPathRoot(stateDir, node) + ZtunnelRunDir + "/ztunnel.sock"
}

// CNIStateDir is ambient-cni's per-node state directory: ztunnel's
// --cni-state-dir=/var/run/ambient/pods under the node's host-path root.
func CNIStateDir(stateDir, node string) string {
	return HostPathRoot(stateDir, node) + ZtunnelRunDir + "/pods"
}

// CNIConfDir is a node's CNI configuration directory, its /etc/cni/net.d
// under the host-path root: the node agent writes the primary network
// configuration (ptp + host-local) there and reads it for every new pod,
// and the ambient-cni-node DaemonSet (manifests/cni) chains ambient-cni
// into it through its hostPath, as on a real node.
func CNIConfDir(stateDir, node string) string {
	return HostPathRoot(stateDir, node) + "/etc/cni/net.d"
}

// CNIPluginDir is a node's /opt/cni/bin under the host-path root, where
// the ambient-cni-node DaemonSet installs the plugin; the node agent
// searches it after the standard plugins.
func CNIPluginDir(stateDir, node string) string {
	return HostPathRoot(stateDir, node) + "/opt/cni/bin"
}

// kubeProxyTemplate is kube-proxy's configuration file. Conntrack sizing is
// left alone (those sysctls are the host's, not the node namespace's).
var kubeProxyTmpl = template.Must(template.New("kube-proxy").Parse(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {{.Kubeconfig}}
hostnameOverride: {{.Node}}
bindAddress: {{.NodeIP}}
clusterCIDR: {{.PodCIDR}}
mode: iptables
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["{{.NodeIP}}/32"]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
`))

// RenderKubeProxyConfig is a node's kube-proxy configuration.
func RenderKubeProxyConfig(p *Plan, n NodePlan, kubeconfig string) ([]byte, error) {
	var b bytes.Buffer
	err := kubeProxyTmpl.Execute(&b, map[string]string{
		"Kubeconfig": kubeconfig,
		"Node":       n.Name,
		"NodeIP":     n.IP.String(),
		"PodCIDR":    p.PodCIDR.String(),
	})
	return b.Bytes(), err
}

// NodeNetCommands are the `ip -batch` lines run inside a node's namespace
// after its eth0 exists: the address, and a route for service VIPs so that
// connections from the node itself reach kube-proxy's DNAT (there is no
// default route: anything else is unreachable).
func NodeNetCommands(p *Plan, n NodePlan) []string {
	return []string{
		fmt.Sprintf("addr add %s/%d dev eth0", n.IP, p.LinkCIDR.Bits()),
		"link set eth0 up",
		fmt.Sprintf("route add %s dev eth0 src %s", p.ServiceCIDR, n.IP),
	}
}

// NodeMasqRule is the iptables rule (table nat, chain POSTROUTING) inside
// a node's namespace that lets pods reach the apiserver on the host link:
// the root namespace routes no pod CIDR back (its guard route makes pod
// addresses unreachable), so pods' connections to HostIP take the node's
// address.
func NodeMasqRule(p *Plan) []string {
	return []string{"-s", p.PodCIDR.String(), "-d", p.HostIP.String() + "/32", "-j", "MASQUERADE"}
}
