// Package nodeagent is the node agent of the local cluster: the one piece
// written in place of a kubelet. One agent runs per simulated node (a
// network namespace on a shared node link, see internal/testenv) and runs
// the pods bound to that node as local processes.
//
// # What it does
//
//   - Registers its Node (labels kubernetes.io/hostname, os, arch; the pod
//     CIDR the controller-manager allocated, else Config.PodCIDR; the
//     node's address as InternalIP; capacity) and keeps its Ready
//     condition and its Lease in kube-node-lease fresh.
//   - Watches the pods with spec.nodeName == its node. For each one it
//     creates a network namespace and runs the CNI chain on it through
//     libcni, inside the node's namespace, with the CNI_ARGS a kubelet
//     passes (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, ...): by default
//     ptp + host-local over the node's pod CIDR (DefaultConfList; a
//     conflist template by flag adds chained plugins such as ambient-cni).
//     With Config.CNIConfDir the chain is the node's primary
//     configuration file at the time the pod starts, as a runtime reads
//     it, so an installer DaemonSet can chain ambient-cni into it.
//     hostNetwork pods run in the node's namespace without CNI.
//   - Runs each container as a process in the pod's namespace: the image
//     maps to a local binary through the image table (package images),
//     env comes with downward-API, ConfigMap and Secret references, volumes
//     are files under the pod's directory that args and env are mapped to
//     (package podenv; projected ServiceAccount tokens from the
//     TokenRequest API, bound to the pod and refreshed). Restart policy
//     with a doubling backoff; readiness and liveness probes (httpGet,
//     tcpSocket) from the node's namespace to the pod IP, and exec probes
//     run in the container as `kubectl exec` runs commands (package probe).
//   - Gives each container a private mount namespace and its pod's DNS
//     (see "Mount namespaces and DNS" below).
//   - Reports pod IPs, phase, conditions and container statuses (ready,
//     restartCount, states) through the status subresource (package
//     podstatus).
//   - Serves the kubelet API the apiserver calls for kubectl logs, exec
//     and port-forward (see "Kubelet API" below).
//   - With Config.PeerRoutes, routes every other Node's pod CIDR via its
//     InternalIP in the node's namespace (host-gw).
//   - On deletion: SIGTERM, SIGKILL after the grace period, CNI DEL, the
//     namespace removed, then the pod object deleted with grace 0.
//
// # Mount namespaces and DNS
//
// Each container run gets a mount namespace of its own. Namespaces belong
// to threads, so startProcess forks the container from a locked OS thread
// that setns(2)es into the pod's network namespace, unshare(2)s
// CLONE_NEWNS, makes every mount recursively private (nothing propagates
// back to the node) and bind-mounts what the container needs; after the
// fork the thread returns to the agent's namespaces (and working
// directory) before it is unlocked. It is never destroyed: Pdeathsig
// fires when the thread that forked a child exits, so ending a runtime
// thread would SIGKILL whatever else it had started. The mount namespace
// dies with the container's last process, so mounts need no record and
// leave nothing behind after a crash.
//
// Today the one mount is DNS: package poddns computes the pod's
// resolv.conf as a kubelet does from dnsPolicy (ClusterFirst, the
// default: nameserver Config.ClusterDNS, search <ns>.svc.<domain>
// svc.<domain> <domain> and the node's, options ndots:5; hostNetwork pods
// with ClusterFirst, and policy Default, see the node's file;
// ClusterFirstWithHostNet the cluster one; None only spec.dnsConfig) and
// dnsConfig. It is written to <pod-dir>/resolv.conf and bind-mounted on
// /etc/resolv.conf; the node's file is never touched. Without
// Config.ClusterDNS every pod sees the node's file, as with a kubelet
// without --cluster-dns. The cluster DNS itself is package clusterdns,
// run as a pod (manifests/cluster/clusterdns.yaml).
//
// # Kubelet API
//
// With Config.KubeletPort (cmd/nodeagent: --kubelet-port, default 10250)
// the agent serves package kubeletapi on NodeIP inside the node's
// namespace, and the Node's status.daemonEndpoints.kubeletEndpoint
// carries the port, so the apiserver (which reaches nodes at their
// InternalIP) proxies `kubectl logs`, `exec` and `port-forward` to it.
// TLS with a self-signed certificate; only client certificates of
// Config.KubeletClientCA (the cluster CA; the apiserver's
// --kubelet-client-certificate is one, see internal/controlplane) get
// through the handshake, and only the apiserver's identity or
// system:masters past authorization.
//
//   - logs read <container>.log (see the state directory) with follow,
//     tailLines, limitBytes and sinceSeconds as kubeletapi.LogOptions
//     says: the file has no per-line times, so timestamps is ignored
//     and since cuts per file; runs are appended to one file, so
//     --previous is refused.
//   - exec runs the command as a container run is started (startProcess's
//     namespaces: the pod's network namespace, a mount namespace of its
//     own with the pod's resolv.conf) with the environment, working
//     directory and mounts the container's process got. The command must
//     name the image's entrypoint or one of its Tools in the image table
//     (package images); any other fails with exit code 126 and a message
//     naming the table. Exec probes run the same way.
//   - port-forward dials 127.0.0.1:<port> in the pod's network namespace
//     (the node's for hostNetwork pods); a refused dial is reported on
//     the error stream, as a kubelet does.
//
// # State directory
//
//	<state-dir>/pods/<ns>_<name>_<uid>/state.json   netns, CNI config/args/result, container pids
//	<state-dir>/pods/<ns>_<name>_<uid>/<container>.log   stdout+stderr (also in the pod annotation LogDirAnnotation)
//	<state-dir>/pods/<ns>_<name>_<uid>/volumes/<volume>/  volume files
//	<state-dir>/pods/<ns>_<name>_<uid>/resolv.conf   the containers' /etc/resolv.conf
//	<state-dir>/cni/ipam/   host-local's allocations;  <state-dir>/cni/cache/  libcni's cache
//
// Every resource is recorded before it is created, so Cleanup (run by
// `nodeagent cleanup --state-dir DIR` and first thing by Run) removes all
// of them after a crash. When Run returns (the agent stops), it stops its
// pods and removes their networks: like a node that goes down, it leaves
// the pod objects to the control plane.
//
// # hostPath volumes
//
// Every node on the machine shares its root file system, so with
// Config.HostPathRoot a node's hostPath volumes live under a root of its
// own (<root>/<path>, created as the volume's type asks), except the
// passthrough prefixes (Config.HostPathPassthrough: the netns
// directories, /proc, /sys, /dev, /lib/modules), which stay real.
// Without it hostPaths are the real paths.
//
// # Limits
//
// Volumes are not mounted at their mountPaths inside the mount namespace
// yet (hence the path mapping: programs reading fixed paths such as
// client-go's in-cluster files see the host's; see Config.APIServer);
// the rest of the filesystem is the node's. No /etc/hosts management, no
// cgroups (resources are reported, not
// enforced), no init containers (such pods wait with a reason saying so),
// no grpc probes, no image pulls. The kubelet API has no TTYs (exec -t
// fails saying so), no attach, no previous-run logs or log timestamps,
// and no stats, metrics or debug endpoints. ConfigMap and Secret volumes are
// refreshed with the tokens, not on every change.
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/ambientmesh/ambient/nodeagent/images"
	"github.com/ambientmesh/ambient/nodeagent/kubeletapi"
	"github.com/ambientmesh/ambient/nodeagent/podenv"
)

// Config configures an Agent.
type Config struct {
	Client   kubernetes.Interface
	NodeName string
	// NodeNetns is the path of the node's network namespace
	// (/run/netns/<name>), where CNI plugins and probes run and hostNetwork
	// pods live. Empty: the agent's own namespace is the node's.
	NodeNetns string
	// NodeIP is the node's address (InternalIP, hostIP).
	NodeIP netip.Addr
	// PodCIDR is used when the Node has none (no controller-manager
	// allocation); one of the two is needed.
	PodCIDR netip.Prefix
	// StateDir holds everything the agent creates; see the package comment.
	StateDir string
	// CNIBinDirs hold the plugin binaries (hack/build-cni-plugins.sh).
	CNIBinDirs []string
	// ConfList is the conflist template; empty: DefaultConfList.
	ConfList string
	// CNIConfDir, if set, is the node's CNI configuration directory (a
	// runtime's /etc/cni/net.d): each pod's network is set up with the
	// primary configuration found there when the pod starts, as containerd
	// and CRI-O do, so a chained plugin installed by a DaemonSet (such as
	// ambient-cni's installer) takes effect for the pods created after it.
	// The agent plays the cluster's network plugin too: when the directory
	// holds no configuration it writes ConfList, rendered, as
	// PrimaryConfName. Empty: every pod uses ConfList.
	CNIConfDir string
	// Images maps images to binaries.
	Images images.Table
	// NetnsPrefix starts the pods' namespace names; default "na-".
	NetnsPrefix string
	// APIServer, if set, is the apiserver URL as pods reach it. Each pod
	// with a ServiceAccount token mounted at ServiceAccountMountPath then
	// gets <pod-dir>/kubeconfig (that server, the mounted token file and
	// ca.crt) and $KUBECONFIG pointing at it, plus
	// $KUBERNETES_SERVICE_HOST/PORT: client-go's in-cluster config reads
	// fixed paths that do not exist without a mount namespace, while
	// clients that honour $KUBECONFIG (as istiod-lite does) just work.
	APIServer string
	// PeerRoutes keeps a route to every other Node's pod CIDR via its
	// InternalIP in the node's namespace (see routes.go); for nodes on one
	// link whose routes nothing else manages.
	PeerRoutes bool
	// ClusterDNS are the cluster DNS service's IPs (a kubelet's
	// --cluster-dns, usually 10.96.0.10): pods with dnsPolicy ClusterFirst
	// get a resolv.conf naming them (see package poddns). Empty: every pod
	// sees the node's resolv.conf, as with a kubelet without it.
	ClusterDNS []netip.Addr
	// ClusterDomain is the cluster's DNS domain; default "cluster.local".
	ClusterDomain string
	// ResolvConf is the node's resolv.conf (a kubelet's --resolv-conf),
	// for dnsPolicy Default and the search domains; default /etc/resolv.conf.
	ResolvConf string
	// HostPathRoot, if set, is this node's root for hostPath volumes:
	// nodes on one machine share its file system, so a hostPath P of a
	// pod on this node is HostPathRoot/P (created as the volume's type
	// asks), except under HostPathPassthrough. Empty: the real paths.
	HostPathRoot string
	// HostPathPassthrough are the path prefixes HostPathRoot leaves real;
	// nil: podenv.DefaultHostPathPassthrough (the netns directories,
	// /proc, /sys, /dev, /lib/modules).
	HostPathPassthrough []string
	// Labels are added to the Node's.
	Labels map[string]string
	// Capacity is the Node's capacity and allocatable; default 4 CPUs,
	// 8Gi memory, 110 pods.
	Capacity v1.ResourceList

	RestartBackoff    time.Duration // first restart delay; default 10s
	MaxRestartBackoff time.Duration // default 5m
	StatusPeriod      time.Duration // node status and lease renewal; default 10s
	ShutdownGrace     time.Duration // per pod when the agent stops; default 5s

	// KubeletPort is where the kubelet API (package kubeletapi: logs,
	// exec and port-forward for the apiserver) listens on NodeIP, inside
	// the node's namespace, and what the Node reports as its kubelet
	// endpoint; 0: not served (cmd/nodeagent's default is 10250).
	KubeletPort int
	// KubeletClientCA is PEM: the CAs whose client certificates the
	// kubelet API accepts (the cluster CA); required with KubeletPort.
	KubeletClientCA []byte

	Logger *slog.Logger
}

// Agent runs one node's pods. Create it with New.
type Agent struct {
	cfg Config
	log *slog.Logger

	podCIDR netip.Prefix // effective, set by registration

	mu      sync.Mutex // guards the fields below
	workers map[types.UID]*podWorker
	// finished are pods whose worker completed their deletion; their
	// remaining events are ignored until the informer drops them.
	finished map[types.UID]bool
	wg       sync.WaitGroup // running workers

	kubelet *kubeletapi.Server // nil without Config.KubeletPort
}

// New validates cfg and returns an agent.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("nodeagent: Config.Client is required")
	case cfg.NodeName == "":
		return nil, errors.New("nodeagent: Config.NodeName is required")
	case !cfg.NodeIP.IsValid():
		return nil, errors.New("nodeagent: Config.NodeIP is required")
	case cfg.StateDir == "":
		return nil, errors.New("nodeagent: Config.StateDir is required")
	case len(cfg.CNIBinDirs) == 0:
		return nil, errors.New("nodeagent: Config.CNIBinDirs is required (run hack/build-cni-plugins.sh)")
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("nodeagent: state dir: %w", err)
	}
	cfg.StateDir = abs
	if cfg.ConfList == "" {
		cfg.ConfList = DefaultConfList
	}
	if cfg.HostPathRoot != "" {
		if cfg.HostPathRoot, err = filepath.Abs(cfg.HostPathRoot); err != nil {
			return nil, fmt.Errorf("nodeagent: host path root: %w", err)
		}
	}
	if cfg.HostPathPassthrough == nil {
		cfg.HostPathPassthrough = podenv.DefaultHostPathPassthrough
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if cfg.NetnsPrefix == "" {
		cfg.NetnsPrefix = "na-"
	}
	if cfg.Capacity == nil {
		cfg.Capacity = v1.ResourceList{
			v1.ResourceCPU:    resource.MustParse("4"),
			v1.ResourceMemory: resource.MustParse("8Gi"),
			v1.ResourcePods:   resource.MustParse("110"),
		}
	}
	if cfg.RestartBackoff <= 0 {
		cfg.RestartBackoff = 10 * time.Second
	}
	if cfg.MaxRestartBackoff <= 0 {
		cfg.MaxRestartBackoff = 5 * time.Minute
	}
	if cfg.StatusPeriod <= 0 {
		cfg.StatusPeriod = 10 * time.Second
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if _, err := renderConfList(cfg.ConfList, confListParams{PodCIDR: "10.0.0.0/24", IPAMDir: "/x", NodeName: "n", StateDir: "/x"}); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:      cfg,
		log:      cfg.Logger.With("node", cfg.NodeName),
		workers:  map[types.UID]*podWorker{},
		finished: map[types.UID]bool{},
	}
	if cfg.KubeletPort != 0 {
		k, err := kubeletapi.New(kubeletapi.Config{
			NodeName: cfg.NodeName,
			NodeIP:   cfg.NodeIP,
			Port:     cfg.KubeletPort,
			ClientCA: cfg.KubeletClientCA,
			Runtime:  kubeletRuntime{a},
			Listen:   a.listenInNode,
			Logger:   a.log,
		})
		if err != nil {
			return nil, fmt.Errorf("nodeagent: %w", err)
		}
		a.kubelet = k
	}
	return a, nil
}

// hostPaths places this node's hostPath volumes.
func (a *Agent) hostPaths() podenv.HostPathMap {
	return podenv.HostPathMap{Root: a.cfg.HostPathRoot, Passthrough: a.cfg.HostPathPassthrough}
}

// confList is the CNI configuration for a new pod on this node: the
// primary configuration of CNIConfDir, else the rendered template.
func (a *Agent) confList() ([]byte, error) {
	if a.cfg.CNIConfDir != "" {
		return primaryConfList(a.cfg.CNIConfDir)
	}
	return a.renderedConfList()
}

// renderedConfList renders the conflist template for this node.
func (a *Agent) renderedConfList() ([]byte, error) {
	return renderConfList(a.cfg.ConfList, confListParams{
		PodCIDR:  a.podCIDR.String(),
		IPAMDir:  filepath.Join(a.cfg.StateDir, "cni", "ipam"),
		NodeName: a.cfg.NodeName,
		StateDir: a.cfg.StateDir,
	})
}

// Run cleans up what an earlier run left, registers the node, runs its
// pods until ctx ends, then stops them and removes their networks.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(a.cfg.StateDir, podsDir), 0o755); err != nil {
		return fmt.Errorf("nodeagent: state dir: %w", err)
	}
	if err := Cleanup(ctx, a.cfg.StateDir, a.log); err != nil {
		return fmt.Errorf("nodeagent: cleaning up an earlier run: %w", err)
	}
	if err := a.register(ctx); err != nil {
		return err
	}
	a.log.Info("node registered", "podCIDR", a.podCIDR, "ip", a.cfg.NodeIP)
	if a.cfg.CNIConfDir != "" {
		conf, err := a.renderedConfList()
		if err != nil {
			return err
		}
		if err := ensurePrimaryConf(a.cfg.CNIConfDir, conf); err != nil {
			return err
		}
	}

	factory := informers.NewSharedInformerFactoryWithOptions(a.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.podChanged(ctx, obj) },
		UpdateFunc: func(_, obj any) { a.podChanged(ctx, obj) },
		DeleteFunc: func(obj any) { a.podDeleted(obj) },
	}); err != nil {
		return fmt.Errorf("nodeagent: pod informer: %w", err)
	}
	factory.Start(ctx.Done())

	var hb sync.WaitGroup
	hb.Go(func() { a.heartbeat(ctx) })
	if a.kubelet != nil {
		hb.Go(func() {
			if err := a.kubelet.Run(ctx); err != nil {
				a.log.Error("kubelet API: kubectl logs, exec and port-forward will fail for this node", "err", err)
			}
		})
	}
	if a.cfg.PeerRoutes {
		nodeFactory := informers.NewSharedInformerFactory(a.cfg.Client, 0)
		loop, err := a.startPeerRoutes(nodeFactory)
		if err != nil {
			return err
		}
		nodeFactory.Start(ctx.Done())
		defer nodeFactory.Shutdown()
		hb.Go(func() { loop(ctx) })
	}
	<-ctx.Done()
	factory.Shutdown()
	hb.Wait()
	a.wg.Wait() // workers stop their pods on ctx.Done
	a.log.Info("node agent stopped")
	return nil
}

// podChanged starts a worker for a new pod or hands the worker the update.
func (a *Agent) podChanged(ctx context.Context, obj any) {
	pod, ok := obj.(*v1.Pod)
	if !ok || ctx.Err() != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.finished[pod.UID] {
		return
	}
	if w, ok := a.workers[pod.UID]; ok {
		w.setLatest(pod.DeepCopy())
		return
	}
	terminal := pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed
	if terminal && pod.DeletionTimestamp == nil {
		return // ran to completion before (an earlier agent run)
	}
	w := &podWorker{
		a:      a,
		uid:    pod.UID,
		log:    a.log.With("pod", pod.Namespace+"/"+pod.Name),
		dir:    filepath.Join(a.cfg.StateDir, podsDir, podDirName(pod.Namespace, pod.Name, string(pod.UID))),
		notify: make(chan struct{}, 1),
		gone:   make(chan struct{}),
		done:   make(chan struct{}),
		latest: pod.DeepCopy(),
	}
	a.workers[pod.UID] = w
	a.wg.Go(func() {
		w.run(ctx)
		a.mu.Lock()
		delete(a.workers, w.uid)
		select {
		case <-w.gone: // the informer has forgotten it already
		default:
			a.finished[w.uid] = true
		}
		a.mu.Unlock()
	})
}

// podDeleted ends a pod's worker at once (a forced deletion) and forgets
// the pod.
func (a *Agent) podDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if w, ok := a.workers[pod.UID]; ok {
		w.markGone()
	}
	delete(a.finished, pod.UID)
}
