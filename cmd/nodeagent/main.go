// Command nodeagent runs one simulated node of the local cluster: it
// registers the Node and runs the pods bound to it as processes in
// per-pod network namespaces wired by CNI plugins (see package nodeagent).
//
//	nodeagent --kubeconfig FILE --node-name NAME --node-ip IP
//	          [--node-netns /run/netns/NODE] [--pod-cidr CIDR]
//	          --state-dir DIR --cni-bin-dir DIR[,DIR] [--cni-conflist TEMPLATE]
//	          [--cni-conf-dir DIR]
//	          [--image-table FILE | --bin-dir DIR] [--peer-routes]
//	          [--pod-apiserver URL] [--cluster-dns IP[,IP]]
//	          [--cluster-domain cluster.local] [--resolv-conf /etc/resolv.conf]
//	          [--host-path-root DIR] [--host-path-passthrough /run/netns,...]
//	          [--kubelet-port 10250] [--kubelet-client-ca FILE]
//	nodeagent cleanup --state-dir DIR
//
// `cleanup` kills the processes, runs CNI DEL and deletes the network
// namespaces recorded under the state directory (what a crashed agent
// left); the agent also does it when it starts. Runs as root. SIGINT or
// SIGTERM stops the agent, which stops its pods and removes their
// networks.
//
// The kubelet API (kubectl logs, exec, port-forward through the
// apiserver; see package kubeletapi) listens on --node-ip:--kubelet-port
// inside the node's namespace and accepts only client certificates of
// --kubelet-client-ca, by default the kubeconfig's certificate authority
// (the cluster CA, which signs the apiserver's kubelet client
// certificate).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambientmesh/ambient/nodeagent"
	"github.com/ambientmesh/ambient/nodeagent/images"
	"github.com/ambientmesh/ambient/nodeagent/podenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(ctx, os.Args[1:], os.Stderr, log); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "nodeagent:", err)
		os.Exit(1)
	}
}

// options are the parsed command line.
type options struct {
	cleanup     bool
	kubeconfig  string
	nodeName    string
	nodeNetns   string
	nodeIP      string
	podCIDR     string
	stateDir    string
	cniBinDir   string
	cniConfList string
	cniConfDir  string
	imageTable  string
	binDir      string
	backoff     time.Duration
	peerRoutes  bool
	apiServer   string
	clusterDNS  string
	domain      string
	resolvConf  string
	hostRoot    string
	hostPass    string
	kubeletPort int
	kubeletCA   string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	if len(args) > 0 && args[0] == "cleanup" {
		o.cleanup = true
		args = args[1:]
	}
	fs := flag.NewFlagSet("nodeagent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	fs.StringVar(&o.nodeName, "node-name", "", "name of this node")
	fs.StringVar(&o.nodeNetns, "node-netns", "", "the node's network namespace (/run/netns/NAME); empty: the agent's own")
	fs.StringVar(&o.nodeIP, "node-ip", "", "the node's address")
	fs.StringVar(&o.podCIDR, "pod-cidr", "", "pod CIDR when the controller-manager allocates none")
	fs.StringVar(&o.stateDir, "state-dir", "", "directory for pod state, logs and volumes")
	fs.StringVar(&o.cniBinDir, "cni-bin-dir", "", "CNI plugin directories, comma-separated (hack/build-cni-plugins.sh prints one)")
	fs.StringVar(&o.cniConfList, "cni-conflist", "", "CNI conflist template file (default: ptp + host-local, see nodeagent.DefaultConfList)")
	fs.StringVar(&o.cniConfDir, "cni-conf-dir", "", "the node's CNI configuration directory (like /etc/cni/net.d): pods use its primary configuration, which the agent writes from --cni-conflist when there is none; empty: pods use --cni-conflist")
	fs.StringVar(&o.imageTable, "image-table", "", "image table YAML (default: the built-in table over --bin-dir)")
	fs.StringVar(&o.binDir, "bin-dir", "", "directory of the project's binaries for the built-in image table (default: this executable's directory)")
	fs.StringVar(&o.apiServer, "pod-apiserver", "", "apiserver URL as pods reach it: pods with a ServiceAccount token get $KUBECONFIG for it")
	fs.StringVar(&o.clusterDNS, "cluster-dns", "", "cluster DNS service IPs, comma-separated (e.g. 10.96.0.10): pods with dnsPolicy ClusterFirst resolve through it; empty: pods see --resolv-conf")
	fs.StringVar(&o.domain, "cluster-domain", "cluster.local", "cluster DNS domain for the pods' search path")
	fs.StringVar(&o.resolvConf, "resolv-conf", "/etc/resolv.conf", "the node's resolv.conf (dnsPolicy Default, and search domains)")
	fs.StringVar(&o.hostRoot, "host-path-root", "", "this node's root for hostPath volumes: hostPath P becomes DIR/P (nodes on one machine share its file system); empty: the real paths")
	fs.StringVar(&o.hostPass, "host-path-passthrough", strings.Join(podenv.DefaultHostPathPassthrough, ","), "comma-separated path prefixes --host-path-root leaves real")
	fs.BoolVar(&o.peerRoutes, "peer-routes", false, "route other nodes' pod CIDRs via their InternalIPs in the node's namespace")
	fs.IntVar(&o.kubeletPort, "kubelet-port", 10250, "port of the kubelet API (logs, exec, port-forward for the apiserver) on --node-ip; 0 disables it")
	fs.StringVar(&o.kubeletCA, "kubelet-client-ca", "", "PEM file of the CA whose client certificates the kubelet API accepts (default: the kubeconfig's certificate authority)")
	fs.DurationVar(&o.backoff, "restart-backoff", 10*time.Second, "first container restart delay (doubles up to 5m)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.stateDir == "" {
		return o, errors.New("--state-dir is required")
	}
	if o.cleanup {
		return o, nil
	}
	for flagName, v := range map[string]string{"--node-name": o.nodeName, "--node-ip": o.nodeIP, "--cni-bin-dir": o.cniBinDir} {
		if v == "" {
			return o, fmt.Errorf("%s is required", flagName)
		}
	}
	return o, nil
}

func run(ctx context.Context, args []string, stderr io.Writer, log *slog.Logger) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.cleanup {
		return nodeagent.Cleanup(ctx, o.stateDir, log)
	}
	cfg, err := config(o, log)
	if err != nil {
		return err
	}
	a, err := nodeagent.New(cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// config turns options into the agent's Config.
func config(o options, log *slog.Logger) (nodeagent.Config, error) {
	cfg := nodeagent.Config{
		NodeName:       o.nodeName,
		NodeNetns:      o.nodeNetns,
		StateDir:       o.stateDir,
		CNIBinDirs:     strings.Split(o.cniBinDir, ","),
		CNIConfDir:     o.cniConfDir,
		RestartBackoff: o.backoff,
		PeerRoutes:     o.peerRoutes,
		APIServer:      o.apiServer,
		ClusterDomain:  o.domain,
		ResolvConf:     o.resolvConf,
		HostPathRoot:   o.hostRoot,
		Logger:         log,
	}
	var err error
	if cfg.HostPathPassthrough, err = podenv.ParsePassthrough(o.hostPass); err != nil {
		return cfg, fmt.Errorf("--host-path-passthrough: %w", err)
	}
	if cfg.HostPathPassthrough == nil {
		cfg.HostPathPassthrough = []string{} // explicitly none
	}
	if o.clusterDNS != "" {
		for _, s := range strings.Split(o.clusterDNS, ",") {
			ip, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				return cfg, fmt.Errorf("--cluster-dns: %w", err)
			}
			cfg.ClusterDNS = append(cfg.ClusterDNS, ip)
		}
	}
	if cfg.NodeIP, err = netip.ParseAddr(o.nodeIP); err != nil {
		return cfg, fmt.Errorf("--node-ip: %w", err)
	}
	if o.podCIDR != "" {
		if cfg.PodCIDR, err = netip.ParsePrefix(o.podCIDR); err != nil {
			return cfg, fmt.Errorf("--pod-cidr: %w", err)
		}
	}
	if o.cniConfList != "" {
		b, err := os.ReadFile(o.cniConfList)
		if err != nil {
			return cfg, fmt.Errorf("--cni-conflist: %w", err)
		}
		cfg.ConfList = string(b)
	}
	if o.imageTable != "" {
		if cfg.Images, err = images.Load(o.imageTable); err != nil {
			return cfg, err
		}
	} else {
		dir := o.binDir
		if dir == "" {
			exe, err := os.Executable()
			if err != nil {
				return cfg, fmt.Errorf("--bin-dir not given and the executable's directory unknown: %w", err)
			}
			dir = filepath.Dir(exe)
		}
		cfg.Images = images.Table{Images: images.Default, BaseDir: dir}
	}
	rc, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return cfg, fmt.Errorf("kubeconfig %q: %w (pass --kubeconfig or set KUBECONFIG)", o.kubeconfig, err)
	}
	cfg.KubeletPort = o.kubeletPort
	if o.kubeletPort != 0 {
		if cfg.KubeletClientCA, err = kubeletClientCA(o.kubeletCA, rc); err != nil {
			return cfg, err
		}
	}
	rc.UserAgent = "nodeagent/" + o.nodeName
	rc.QPS, rc.Burst = 50, 100 // a kubelet's defaults
	if cfg.Client, err = kubernetes.NewForConfig(rc); err != nil {
		return cfg, fmt.Errorf("kubernetes client: %w", err)
	}
	return cfg, nil
}

// kubeletClientCA is the --kubelet-client-ca file, else the kubeconfig's
// certificate authority.
func kubeletClientCA(file string, rc *rest.Config) ([]byte, error) {
	if file == "" && len(rc.TLSClientConfig.CAData) > 0 {
		return rc.TLSClientConfig.CAData, nil
	}
	what := "--kubelet-client-ca"
	if file == "" {
		file, what = rc.TLSClientConfig.CAFile, "the kubeconfig's certificate-authority"
	}
	if file == "" {
		return nil, errors.New("--kubelet-client-ca: the kubeconfig has no certificate authority: pass the cluster CA's file, or --kubelet-port=0")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return b, nil
}
