package localcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambientmesh/ambient/ambientctl/ztunnels"
	"github.com/ambientmesh/ambient/internal/controlplane"
)

// Cluster is a running local cluster, as Up left it.
type Cluster struct {
	Plan       *Plan
	StateDir   string
	Kubeconfig string
	Server     string

	rec *recorder
}

// Up creates the cluster described by cfg and waits until every node is
// Ready with a pod CIDR. A state directory left by an earlier cluster is
// cleaned up first (Down). On failure everything created so far is
// removed. The processes outlive ctx and the caller: Down stops them.
func Up(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg = cfg.withDefaults()
	if cfg.StateDir == "" {
		return nil, errors.New("localcluster: a state directory is required")
	}
	plan, err := NewPlan(cfg)
	if err != nil {
		return nil, err
	}
	_, recErr := os.Stat(filepath.Join(cfg.StateDir, RecordFile))
	// Down removes the whole state directory: never take over one that
	// holds anything but a cluster's.
	if entries, err := os.ReadDir(cfg.StateDir); recErr != nil && err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("localcluster: state directory %s is not empty and holds no cluster; choose an empty or new directory", cfg.StateDir)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("localcluster: the local cluster needs root (network namespaces, routes); run with sudo")
	}
	if recErr == nil {
		progress(cfg, "cleaning up the previous cluster in %s", cfg.StateDir)
		if err := Down(ctx, cfg); err != nil {
			return nil, fmt.Errorf("localcluster: cleaning up the previous cluster: %w", err)
		}
	}
	if err := resolveBinaries(ctx, &cfg); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("localcluster: %w", err)
	}
	c := &Cluster{
		Plan:       plan,
		StateDir:   cfg.StateDir,
		Kubeconfig: filepath.Join(cfg.StateDir, "kubeconfig"),
		Server:     plan.Server,
		rec:        &recorder{path: filepath.Join(cfg.StateDir, RecordFile)},
	}
	c.rec.rec = Record{Name: plan.Name, Server: plan.Server, NodeBin: filepath.Join(cfg.BinDir, "nodeagent")}
	if err := c.rec.update(func(*Record) {}); err != nil {
		return nil, err
	}
	if err := c.up(ctx, cfg); err != nil {
		progress(cfg, "failed; removing what was created")
		if derr := Down(context.WithoutCancel(ctx), cfg); derr != nil {
			err = errors.Join(err, fmt.Errorf("and cleaning up: %w", derr))
		}
		return nil, err
	}
	return c, nil
}

func progress(cfg Config, format string, args ...any) {
	fmt.Fprintf(cfg.Progress, "cluster: "+format+"\n", args...)
}

// resolveBinaries fills in the binary locations, building what is missing.
func resolveBinaries(ctx context.Context, cfg *Config) error {
	if cfg.Etcd == "" {
		p, err := exec.LookPath("etcd")
		if err != nil {
			return fmt.Errorf("localcluster: etcd not found (%w); run: hack/install-deps.sh test (Debian package etcd-server)", err)
		}
		cfg.Etcd = p
	}
	if cfg.RepoRoot == "" && (cfg.K8sBinDir == "" || cfg.CNIBinDir == "" || cfg.BinDir == "" || cfg.ClusterManifests == "") {
		root, err := controlplane.RepoRoot()
		if err != nil {
			return fmt.Errorf("localcluster: %w (run from the repository, or pass the binary directories)", err)
		}
		cfg.RepoRoot = root
	}
	if cfg.K8sBinDir == "" {
		progress(*cfg, "Kubernetes %s binaries (hack/build-k8s.sh; the first build takes minutes)", controlplane.Version)
		dir, err := controlplane.FindBinaries(cfg.RepoRoot, cfg.Progress)
		if err != nil {
			return err
		}
		cfg.K8sBinDir = dir
	}
	if cfg.CNIBinDir == "" {
		progress(*cfg, "CNI plugins (hack/build-cni-plugins.sh)")
		out, err := runScript(ctx, *cfg, filepath.Join(cfg.RepoRoot, "hack", "build-cni-plugins.sh"))
		if err != nil {
			return err
		}
		cfg.CNIBinDir = out
	}
	if cfg.BinDir == "" {
		cfg.BinDir = filepath.Join(cfg.RepoRoot, "bin")
	}
	if cfg.ClusterManifests == "" {
		cfg.ClusterManifests = filepath.Join(cfg.RepoRoot, "manifests", "cluster")
	}
	var missing []string
	for _, b := range []string{"nodeagent", "ambient-cni", "clusterdns", "sampleapp"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		if cfg.RepoRoot == "" {
			return fmt.Errorf("localcluster: %s missing from %s; run: go build -o %s/ ./cmd/...", strings.Join(missing, ", "), cfg.BinDir, cfg.BinDir)
		}
		progress(*cfg, "building the project's binaries into %s (go build ./cmd/...)", cfg.BinDir)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", cfg.BinDir+"/", "./cmd/...")
		cmd.Dir = cfg.RepoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("localcluster: go build -o %s/ ./cmd/...: %w\n%s", cfg.BinDir, err, out)
		}
	}
	return nil
}

// runScript runs a hack/ script that prints a directory as its last line.
func runScript(ctx context.Context, cfg Config, script string) (string, error) {
	cmd := exec.CommandContext(ctx, script)
	cmd.Stderr = cfg.Progress
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("localcluster: %s: %w", script, err)
	}
	s := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s, nil
}

func (c *Cluster) up(ctx context.Context, cfg Config) error {
	start := time.Now()
	p := c.Plan
	progress(cfg, "network: node link %s, host link %s (%s), %d node namespaces, guard routes", p.LinkNetns, p.HostIface, p.HostIP, len(p.Nodes))
	if err := c.buildNetwork(); err != nil {
		return err
	}

	progress(cfg, "control plane: etcd, kube-apiserver on %s", p.Server)
	pkiDir := filepath.Join(c.StateDir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return fmt.Errorf("localcluster: %w", err)
	}
	pki, err := controlplane.WritePKI(pkiDir, 365*24*time.Hour, net.IP(p.HostIP.AsSlice()))
	if err != nil {
		return err
	}
	token, err := controlplane.NewToken()
	if err != nil {
		return err
	}
	tokenFile := filepath.Join(pkiDir, "tokens.csv")
	if err := controlplane.WriteTokenFile(tokenFile, token, "ambient-admin"); err != nil {
		return err
	}
	if err := os.WriteFile(c.Kubeconfig, controlplane.KubeconfigYAML(p.Name, p.Server, pki.CAPEM, token), 0o600); err != nil {
		return fmt.Errorf("localcluster: %w", err)
	}
	ports, err := controlplane.FreePorts(4)
	if err != nil {
		return err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	if err := c.start(cfg, "etcd", "", cfg.Etcd, controlplane.EtcdArgs(controlplane.Etcd{
		Name:      p.Name,
		DataDir:   filepath.Join(c.StateDir, "etcd"),
		ClientURL: etcdURL,
		PeerURL:   "http://127.0.0.1:" + strconv.Itoa(ports[1]),
	})...); err != nil {
		return err
	}
	if err := c.start(cfg, "kube-apiserver", "", filepath.Join(cfg.K8sBinDir, "kube-apiserver"), controlplane.APIServerArgs(controlplane.APIServer{
		EtcdURL:     etcdURL,
		BindAddress: p.HostIP.String(),
		Port:        APIServerPort,
		CertDir:     filepath.Join(c.StateDir, "apiserver-certs"),
		PKI:         pki,
		TokenFile:   tokenFile,
		ServiceCIDR: p.ServiceCIDR.String(),
	})...); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	hc := controlplane.HTTPClient(pki.CAPEM, token)
	hc.Timeout = 2 * time.Second
	if err := controlplane.WaitReady(rctx, hc, p.Server, c.checkAlive); err != nil {
		return err
	}
	progress(cfg, "control plane: kube-controller-manager (pod CIDRs from %s), kube-scheduler", p.PodCIDR)
	if err := c.start(cfg, "kube-controller-manager", "", filepath.Join(cfg.K8sBinDir, "kube-controller-manager"), controlplane.ControllerManagerArgs(controlplane.ControllerManager{
		Kubeconfig:  c.Kubeconfig,
		Port:        ports[2],
		CertDir:     filepath.Join(c.StateDir, "controller-manager-certs"),
		PKI:         pki,
		ServiceCIDR: p.ServiceCIDR.String(),
		ClusterCIDR: p.PodCIDR.String(),
		ExtraArgs:   []string{"--node-cidr-mask-size=24"},
	})...); err != nil {
		return err
	}
	if err := c.start(cfg, "kube-scheduler", "", filepath.Join(cfg.K8sBinDir, "kube-scheduler"), controlplane.SchedulerArgs(controlplane.Scheduler{
		Kubeconfig: c.Kubeconfig,
		Port:       ports[3],
		CertDir:    filepath.Join(c.StateDir, "scheduler-certs"),
	})...); err != nil {
		return err
	}

	for _, n := range p.Nodes {
		progress(cfg, "node %s (%s): nodeagent, kube-proxy", n.Name, n.IP)
		if err := c.startNode(cfg, n); err != nil {
			return err
		}
	}
	progress(cfg, "waiting for %d nodes to be Ready", len(p.Nodes))
	if err := c.waitNodes(rctx); err != nil {
		return err
	}
	if err := c.writeClusterState(cfg); err != nil {
		return err
	}
	progress(cfg, "cluster DNS: kubectl apply -k %s (Service kube-dns at %s)", cfg.ClusterManifests, p.ClusterDNS)
	if err := c.installDNS(ctx, cfg); err != nil {
		return err
	}
	progress(cfg, "up in %v", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// start starts a detached process (inside netns when set), recording it.
func (c *Cluster) start(cfg Config, name, node, bin string, args ...string) error {
	if node != "" {
		args = append([]string{"netns", "exec", node, bin}, args...)
		bin = "ip"
	}
	proc, err := controlplane.StartProc(filepath.Join(c.StateDir, "logs"), name,
		controlplane.ProcOptions{Detached: true, Dir: c.StateDir}, bin, args...)
	if err != nil {
		return err
	}
	st, err := procStart(proc.Pid())
	if err != nil {
		// It died at once; record it anyway so Down kills its group.
		cfg.Logger.Warn("reading the start time", "proc", name, "err", err)
	}
	return c.rec.update(func(r *Record) {
		r.Procs = append(r.Procs, ProcEntry{Name: name, Pid: proc.Pid(), Start: st, Node: node})
	})
}

// checkAlive fails when a recorded process has exited.
func (c *Cluster) checkAlive() error {
	c.rec.mu.Lock()
	procs := append([]ProcEntry(nil), c.rec.rec.Procs...)
	c.rec.mu.Unlock()
	for _, p := range procs {
		if !p.alive() {
			return fmt.Errorf("localcluster: %s exited; its log: %s\n%s", p.Name,
				filepath.Join(c.StateDir, "logs", p.Name+".log"),
				controlplane.TailFile(filepath.Join(c.StateDir, "logs", p.Name+".log"), 2048))
		}
	}
	return nil
}

func (c *Cluster) startNode(cfg Config, n NodePlan) error {
	dir := filepath.Join(c.StateDir, "nodes", n.Name)
	// The node's CNI directories, filled in by the node agent (the
	// primary configuration) and the ambient-cni-node DaemonSet (the
	// plugin, chained), and ztunnel's hostPath /var/run/ambient.
	for _, d := range []string{CNIConfDir(c.StateDir, n.Name), CNIPluginDir(c.StateDir, n.Name), CNIStateDir(c.StateDir, n.Name)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("localcluster: %w", err)
		}
	}
	agentDir := filepath.Join(dir, "agent")
	if err := c.rec.update(func(r *Record) { r.AgentDirs = append(r.AgentDirs, agentDir) }); err != nil {
		return err
	}
	if err := c.start(cfg, "nodeagent-"+n.Name, "", filepath.Join(cfg.BinDir, "nodeagent"),
		"--kubeconfig="+c.Kubeconfig,
		"--node-name="+n.Name,
		"--node-ip="+n.IP.String(),
		"--node-netns="+n.Netns,
		"--state-dir="+agentDir,
		"--cni-bin-dir="+cfg.CNIBinDir+","+CNIPluginDir(c.StateDir, n.Name),
		"--cni-conf-dir="+CNIConfDir(c.StateDir, n.Name),
		"--bin-dir="+cfg.BinDir,
		"--peer-routes",
		"--pod-apiserver="+c.Server,
		"--cluster-dns="+c.Plan.ClusterDNS.String(),
		"--host-path-root="+HostPathRoot(c.StateDir, n.Name),
	); err != nil {
		return err
	}
	kpConf := filepath.Join(dir, "kube-proxy.yaml")
	b, err := RenderKubeProxyConfig(c.Plan, n, c.Kubeconfig)
	if err != nil {
		return err
	}
	if err := os.WriteFile(kpConf, b, 0o644); err != nil {
		return fmt.Errorf("localcluster: %w", err)
	}
	return c.start(cfg, "kube-proxy-"+n.Name, n.Name, filepath.Join(cfg.K8sBinDir, "kube-proxy"), "--config="+kpConf)
}

// installDNS applies the cluster add-ons (manifests/cluster: clusterdns)
// with the cached kubectl, server-side, and waits until the kube-dns
// Service, at the plan's ClusterDNS, has a ready endpoint.
func (c *Cluster) installDNS(ctx context.Context, cfg Config) error {
	dctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	cmd := exec.CommandContext(dctx, filepath.Join(cfg.K8sBinDir, "kubectl"), "--kubeconfig="+c.Kubeconfig,
		"apply", "--server-side", "--force-conflicts", "-k", cfg.ClusterManifests)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("localcluster: kubectl apply -k %s: %w\n%s", cfg.ClusterManifests, err, out)
	}
	cs, err := c.Client()
	if err != nil {
		return err
	}
	var last string
	for {
		if err := c.checkAlive(); err != nil {
			return err
		}
		last = c.dnsReady(dctx, cs)
		if last == "" {
			return nil
		}
		select {
		case <-dctx.Done():
			return fmt.Errorf("localcluster: cluster DNS not ready: %s (%w); see the node agents' pod logs under %s", last, dctx.Err(), filepath.Join(c.StateDir, "nodes"))
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// dnsReady says what the kube-dns Service still lacks ("" when ready).
func (c *Cluster) dnsReady(ctx context.Context, cs kubernetes.Interface) string {
	svc, err := cs.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
	if err != nil {
		return err.Error()
	}
	if svc.Spec.ClusterIP != c.Plan.ClusterDNS.String() {
		return fmt.Sprintf("Service kube-system/kube-dns has ClusterIP %s, not the plan's %s", svc.Spec.ClusterIP, c.Plan.ClusterDNS)
	}
	slices, err := cs.DiscoveryV1().EndpointSlices("kube-system").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kube-dns"})
	if err != nil {
		return err.Error()
	}
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready {
				return ""
			}
		}
	}
	return "no ready endpoint for Service kube-system/kube-dns"
}

// Client returns a client-go clientset for the cluster.
func (c *Cluster) Client() (*kubernetes.Clientset, error) {
	return clientFor(c.Kubeconfig)
}

func clientFor(kubeconfig string) (*kubernetes.Clientset, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("localcluster: kubeconfig %s: %w", kubeconfig, err)
	}
	rc.Timeout = 10 * time.Second
	return kubernetes.NewForConfig(rc)
}

// waitNodes waits until every planned node is Ready with a pod CIDR.
func (c *Cluster) waitNodes(ctx context.Context) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	var last string
	for {
		if err := c.checkAlive(); err != nil {
			return err
		}
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			ready := 0
			var waiting []string
			for _, pn := range c.Plan.Nodes {
				if n := findNode(nodes.Items, pn.Name); n != nil && nodeReady(n) && n.Spec.PodCIDR != "" {
					ready++
				} else {
					waiting = append(waiting, pn.Name)
				}
			}
			if ready == len(c.Plan.Nodes) {
				return nil
			}
			last = "waiting for " + strings.Join(waiting, ", ")
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("localcluster: nodes not Ready: %s (%w); see the logs in %s", last, ctx.Err(), filepath.Join(c.StateDir, "logs"))
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func findNode(nodes []v1.Node, name string) *v1.Node {
	for i := range nodes {
		if nodes[i].Name == name {
			return &nodes[i]
		}
	}
	return nil
}

func nodeReady(n *v1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// writeClusterState writes ambientctl's cluster-state file.
func (c *Cluster) writeClusterState(cfg Config) error {
	path := cfg.ClusterStateFile
	if path == "" {
		path = ztunnels.DefaultStatePath()
	}
	if path == "" {
		return nil
	}
	if err := c.rec.update(func(r *Record) { r.Files = append(r.Files, path) }); err != nil {
		return err
	}
	s := &ztunnels.ClusterState{
		Name:             c.Plan.Name,
		Server:           c.Server,
		Kubeconfig:       c.Kubeconfig,
		ZtunnelAdminAddr: ztunnels.DefaultAdminAddr,
	}
	for _, n := range c.Plan.Nodes {
		s.Nodes = append(s.Nodes, ztunnels.StateNode{Name: n.Name, Netns: n.Netns, IP: n.IP.String()})
	}
	if err := ztunnels.WriteState(path, s); err != nil {
		return fmt.Errorf("localcluster: cluster state %s: %w", path, err)
	}
	return nil
}
