package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"go.uber.org/goleak"

	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/nodeagent/images"
)

// waitTimeout bounds every wait for a condition.
const waitTimeout = 45 * time.Second

const testNS = "agent-test"

// clusterDNS is the agents' --cluster-dns.
const clusterDNS = "10.96.0.10"

// cluster is a control plane, a two-node topology and one agent per node.
type cluster struct {
	t      *testing.T
	kc     *kubetest.Cluster
	client kubernetes.Interface
	topo   *testenv.Topology
	agents []*agentRun
	prefix string // pods' netns name prefix of this run
}

type agentRun struct {
	cfg    Config
	cancel context.CancelFunc
	done   chan error
}

// repoRoot is the module's directory.
func repoRoot(t *testing.T) string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// buildCNIPlugins runs hack/build-cni-plugins.sh (cached by version).
func buildCNIPlugins(t *testing.T, root string) string {
	cmd := exec.Command(filepath.Join(root, "hack", "build-cni-plugins.sh"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/build-cni-plugins.sh: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// logSink forwards agent logs to the test log until the test ends.
type logSink struct {
	mu     sync.Mutex
	t      *testing.T
	closed bool
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (s *logSink) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// cleanStaleNetns deletes pod namespaces of earlier test processes that
// no longer exist (na<pid>-...).
func cleanStaleNetns() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "na")
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil {
			continue
		}
		if _, err := os.Stat("/proc/" + pidStr); errors.Is(err, os.ErrNotExist) && pid > 0 {
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	return newClusterWith(t, clusterOptions{})
}

// clusterOptions vary newCluster's cluster.
type clusterOptions struct {
	// kubeletAPI links the host to the nodes (testenv.Spec.HostLink) and
	// serves the agents' kubelet API on 10250, so that the apiserver
	// reaches it.
	kubeletAPI bool
	// images are added to the agents' image table.
	images []images.Entry
}

func newClusterWith(t *testing.T, opts clusterOptions) *cluster {
	t.Helper()
	testenv.RequireRoot(t)
	cleanStaleNetns()
	root := repoRoot(t)
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 2, HostLink: opts.kubeletAPI})
	kc := kubetest.Start(t, kubetest.Options{ControllerManager: true, Scheduler: true})
	cniDir := buildCNIPlugins(t, root)
	binDir := t.TempDir()
	build := exec.Command("go", "build", "-o", binDir+"/testapp", "./nodeagent/internal/testapp")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build testapp: %v\n%s", err, out)
	}
	newClient := func() kubernetes.Interface {
		client, err := kubernetes.NewForConfig(&rest.Config{
			Host:            kc.Server,
			BearerToken:     kc.Token,
			TLSClientConfig: rest.TLSClientConfig{CAData: kc.CAData},
			QPS:             50,
			Burst:           100,
		})
		if err != nil {
			t.Fatal(err)
		}
		return client
	}
	client := newClient()
	// The agents' peer routes, not the topology's, carry pod traffic
	// between the nodes.
	for _, n := range topo.Nodes {
		for _, o := range topo.Nodes {
			if o != n {
				if out, err := n.Command(context.Background(), "ip", "route", "del", o.PodCIDR.String()).CombinedOutput(); err != nil {
					t.Fatalf("removing the topology's route to %s: %v: %s", o.PodCIDR, err, out)
				}
			}
		}
	}
	c := &cluster{t: t, kc: kc, client: client, topo: topo, prefix: fmt.Sprintf("na%d-", os.Getpid())}
	table := images.Table{Images: []images.Entry{{Image: "ambient/testapp:*", Binary: "testapp", Paths: []string{"/testapp"}}}, BaseDir: binDir}
	table.Images = append(table.Images, opts.images...)
	before := goleak.IgnoreCurrent()
	sink := &logSink{t: t}
	log := slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelInfo}))
	for _, n := range topo.Nodes {
		cfg := Config{
			Client:         newClient(),
			NodeName:       fmt.Sprintf("node-%d", n.Index),
			NodeNetns:      n.Path,
			NodeIP:         n.IP,
			PodCIDR:        n.PodCIDR,
			StateDir:       t.TempDir(),
			CNIBinDirs:     []string{cniDir},
			Images:         table,
			NetnsPrefix:    c.prefix,
			RestartBackoff: 200 * time.Millisecond,
			StatusPeriod:   2 * time.Second,
			ShutdownGrace:  2 * time.Second,
			PeerRoutes:     true,
			APIServer:      "https://172.30.0.254:6443",
			ClusterDNS:     []netip.Addr{netip.MustParseAddr(clusterDNS)},
			HostPathRoot:   t.TempDir(),
			Logger:         log,
		}
		if opts.kubeletAPI {
			cfg.KubeletPort, cfg.KubeletClientCA = 10250, kc.CAData
		}
		a, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		ar := &agentRun{cfg: a.cfg, cancel: cancel, done: make(chan error, 1)}
		go func() { ar.done <- a.Run(ctx) }()
		c.agents = append(c.agents, ar)
	}
	// Runs before the temporary directories, the control plane and the
	// topology go away: stop the agents, clean up whatever a failure left,
	// and check that nothing is left.
	t.Cleanup(func() {
		defer sink.close()
		for _, ar := range c.agents {
			ar.cancel()
		}
		for _, ar := range c.agents {
			select {
			case err := <-ar.done:
				if err != nil {
					t.Errorf("agent %s: %v", ar.cfg.NodeName, err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("agent %s did not stop", ar.cfg.NodeName)
			}
			if err := Cleanup(context.Background(), ar.cfg.StateDir, nil); err != nil {
				t.Errorf("cleanup %s: %v", ar.cfg.NodeName, err)
			}
		}
		c.assertNoLeftovers(t)
		// Only the API clients' connections may outlive the agents.
		if err := goleak.Find(before,
			goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
		); err != nil {
			t.Errorf("goroutines left after the agents stopped: %v", err)
		}
	})
	return c
}

// assertNoLeftovers checks that no pod namespace, pod directory or IPAM
// allocation of this run is left.
func (c *cluster) assertNoLeftovers(t *testing.T) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), c.prefix) {
			t.Errorf("network namespace %s left behind", e.Name())
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
	for _, ar := range c.agents {
		pods, _ := os.ReadDir(filepath.Join(ar.cfg.StateDir, podsDir))
		for _, p := range pods {
			t.Errorf("%s: pod directory %s left behind", ar.cfg.NodeName, p.Name())
		}
		ips, _ := os.ReadDir(filepath.Join(ar.cfg.StateDir, "cni", "ipam", "ambient-pods"))
		for _, ip := range ips {
			if _, err := netip.ParseAddr(ip.Name()); err == nil {
				t.Errorf("%s: host-local allocation %s not released", ar.cfg.NodeName, ip.Name())
			}
		}
	}
}

func (c *cluster) agent(t *testing.T, node string) *agentRun {
	for _, a := range c.agents {
		if a.cfg.NodeName == node {
			return a
		}
	}
	t.Fatalf("no agent for node %q", node)
	return nil
}

// waitFor polls cond every 100ms until it returns true or waitTimeout.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s; last: %s", waitTimeout, what, last)
}

// nodeHTTP returns a client that dials from inside the node's namespace.
func (c *cluster) nodeHTTP(node int) *http.Client {
	path := c.topo.Nodes[node-1].Path
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return netns.DialTCP(ctx, path, addr)
			},
		},
	}
}

func get(t *testing.T, hc *http.Client, url string) string {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

func podReady(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

func testContainer(args ...string) v1.Container {
	fieldEnv := func(name, path string) v1.EnvVar {
		return v1.EnvVar{Name: name, ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: path}}}
	}
	return v1.Container{
		Name:  "testapp",
		Image: "ambient/testapp:v1",
		Args:  args,
		Env: []v1.EnvVar{
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("NODE_NAME", "spec.nodeName"),
			fieldEnv("POD_IP", "status.podIP"),
		},
	}
}

func (c *cluster) apply(ctx context.Context) {
	t := c.t
	if _, err := c.client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.CoreV1().ConfigMaps(testNS).Create(ctx, &v1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "greeting"},
		Data:       map[string]string{"greeting": "hello from a configmap"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctr := testContainer("--listen=:8080", "--file=/etc/greeting/greeting")
	ctr.ReadinessProbe = &v1.Probe{
		ProbeHandler:  v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
		PeriodSeconds: 1,
	}
	ctr.Ports = []v1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	ctr.VolumeMounts = []v1.VolumeMount{
		{Name: "greeting", MountPath: "/etc/greeting"},
		{Name: "token", MountPath: "/var/run/secrets/tokens"},
	}
	labels := map[string]string{"app": "echo"}
	replicas, grace, exp := int32(2), int64(5), int64(3600)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: v1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: v1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers:                    []v1.Container{ctr},
					Affinity: &v1.Affinity{PodAntiAffinity: &v1.PodAntiAffinity{
						RequiredDuringSchedulingIgnoredDuringExecution: []v1.PodAffinityTerm{{
							LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
							TopologyKey:   "kubernetes.io/hostname",
						}},
					}},
					Volumes: []v1.Volume{
						{Name: "greeting", VolumeSource: v1.VolumeSource{ConfigMap: &v1.ConfigMapVolumeSource{
							LocalObjectReference: v1.LocalObjectReference{Name: "greeting"}}}},
						{Name: "token", VolumeSource: v1.VolumeSource{Projected: &v1.ProjectedVolumeSource{
							Sources: []v1.VolumeProjection{{ServiceAccountToken: &v1.ServiceAccountTokenProjection{
								Audience: "istio-ca", ExpirationSeconds: &exp, Path: "istio-token"}}}}}},
					},
				},
			},
		},
	}
	if _, err := c.client.AppsV1().Deployments(testNS).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// readyEchoPods waits for two ready echo pods, one per node.
func (c *cluster) readyEchoPods(t *testing.T, ctx context.Context, exclude ...string) map[string]v1.Pod {
	byNode := map[string]v1.Pod{}
	waitFor(t, "two ready echo pods, one per node", func() (bool, string) {
		list, err := c.client.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return false, err.Error()
		}
		clear(byNode)
		var states []string
	pods:
		for _, p := range list.Items {
			states = append(states, fmt.Sprintf("%s node=%s phase=%s ready=%v ip=%s %v", p.Name, p.Spec.NodeName, p.Status.Phase, podReady(&p), p.Status.PodIP, p.Status.ContainerStatuses))
			for _, x := range exclude {
				if p.Name == x {
					continue pods
				}
			}
			if p.DeletionTimestamp == nil && p.Status.Phase == v1.PodRunning && podReady(&p) {
				byNode[p.Spec.NodeName] = p
			}
		}
		return len(byNode) == 2, strings.Join(states, "; ")
	})
	return byNode
}

func TestNodeAgent_RunsPodsOnSimulatedNodes(t *testing.T) {
	start := time.Now()
	c := newCluster(t)
	ctx := context.Background()
	t.Logf("cluster and agents up in %v", time.Since(start).Round(time.Millisecond))

	t.Run("NodesRegisterReadyWithPodCIDR", func(t *testing.T) {
		waitFor(t, "both nodes Ready", func() (bool, string) {
			ok := 0
			var states []string
			for _, n := range c.topo.Nodes {
				node, err := c.client.CoreV1().Nodes().Get(ctx, fmt.Sprintf("node-%d", n.Index), metav1.GetOptions{})
				if err != nil {
					states = append(states, err.Error())
					continue
				}
				for _, cond := range node.Status.Conditions {
					if cond.Type == v1.NodeReady && cond.Status == v1.ConditionTrue &&
						node.Spec.PodCIDR == n.PodCIDR.String() && len(node.Status.Addresses) > 0 &&
						node.Status.Addresses[0].Address == n.IP.String() {
						ok++
					}
				}
				states = append(states, fmt.Sprintf("%s cidr=%s %v", node.Name, node.Spec.PodCIDR, node.Status.Conditions))
			}
			return ok == 2, strings.Join(states, "; ")
		})
		if _, err := c.client.CoordinationV1().Leases("kube-node-lease").Get(ctx, "node-1", metav1.GetOptions{}); err != nil {
			t.Errorf("node lease: %v", err)
		}
	})

	c.apply(ctx)
	t0 := time.Now()
	pods := c.readyEchoPods(t, ctx)
	t.Logf("deployment ready in %v", time.Since(t0).Round(time.Millisecond))
	p1, p2 := pods["node-1"], pods["node-2"]

	t.Run("PodIPsAreInTheNodesPodCIDR", func(t *testing.T) {
		for i, p := range []v1.Pod{p1, p2} {
			ip, err := netip.ParseAddr(p.Status.PodIP)
			if err != nil || !c.topo.Nodes[i].PodCIDR.Contains(ip) {
				t.Errorf("pod %s on %s has IP %q, want one in %s", p.Name, p.Spec.NodeName, p.Status.PodIP, c.topo.Nodes[i].PodCIDR)
			}
			if p.Status.HostIP != c.topo.Nodes[i].IP.String() {
				t.Errorf("pod %s hostIP %q, want %s", p.Name, p.Status.HostIP, c.topo.Nodes[i].IP)
			}
		}
	})

	t.Run("PodOnNode1ReachesPodOnNode2ByPodIP", func(t *testing.T) {
		hc := c.nodeHTTP(1)
		body := get(t, hc, fmt.Sprintf("http://%s/call?url=http://%s/", net.JoinHostPort(p1.Status.PodIP, "8080"), net.JoinHostPort(p2.Status.PodIP, "8080")))
		var who map[string]string
		if err := json.Unmarshal([]byte(body), &who); err != nil {
			t.Fatalf("reply %q: %v", body, err)
		}
		// Env from the downward API, and the caller's own pod IP as source
		// (no masquerading between nodes).
		want := map[string]string{"pod": p2.Name, "namespace": testNS, "node": "node-2", "podIP": p2.Status.PodIP}
		for k, v := range want {
			if who[k] != v {
				t.Errorf("%s = %q, want %q (reply %s)", k, who[k], v, body)
			}
		}
		if host, _, _ := net.SplitHostPort(who["remote"]); host != p1.Status.PodIP {
			t.Errorf("pod 2 saw the call from %q, want pod 1's IP %s", who["remote"], p1.Status.PodIP)
		}
	})

	t.Run("VolumesTokensAndLogsAreUnderThePodDirectory", func(t *testing.T) {
		hc := c.nodeHTTP(1)
		if got := get(t, hc, "http://"+net.JoinHostPort(p1.Status.PodIP, "8080")+"/file"); got != "hello from a configmap" {
			t.Errorf("/file (the mapped configMap volume) = %q", got)
		}
		p, err := c.client.CoreV1().Pods(testNS).Get(ctx, p1.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dir := p.Annotations[LogDirAnnotation]
		if want := filepath.Join(c.agent(t, "node-1").cfg.StateDir, podsDir, podDirName(testNS, p1.Name, string(p1.UID))); dir != want {
			t.Fatalf("log dir annotation %q, want %q", dir, want)
		}
		tok, err := os.ReadFile(filepath.Join(dir, volumesDir, "token", "istio-token"))
		if err != nil || strings.Count(string(tok), ".") != 2 {
			t.Errorf("projected token: %v %q", err, tok)
		}
		// The ServiceAccount admission's kube-api-access volume too.
		entries, _ := os.ReadDir(filepath.Join(dir, volumesDir))
		var api bool
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "kube-api-access-") {
				_, err1 := os.Stat(filepath.Join(dir, volumesDir, e.Name(), "ca.crt"))
				ns, err2 := os.ReadFile(filepath.Join(dir, volumesDir, e.Name(), "namespace"))
				api = err1 == nil && err2 == nil && string(ns) == testNS
			}
		}
		if !api {
			t.Errorf("kube-api-access volume missing or incomplete in %v", entries)
		}
		// A kubeconfig over the ServiceAccount mount, in the container's env.
		rc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dir, kubeconfigFile))
		if err != nil {
			t.Fatalf("pod kubeconfig: %v", err)
		}
		if rc.Host != "https://172.30.0.254:6443" || !strings.HasPrefix(rc.BearerTokenFile, filepath.Join(dir, volumesDir, "kube-api-access-")) {
			t.Errorf("pod kubeconfig: host %q token file %q", rc.Host, rc.BearerTokenFile)
		}
		if _, err := os.Stat(rc.BearerTokenFile); err != nil {
			t.Errorf("pod kubeconfig's token: %v", err)
		}
		rec, err := loadRecord(dir)
		if err != nil {
			t.Fatal(err)
		}
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", rec.Processes["testapp"].PID))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"KUBECONFIG=" + filepath.Join(dir, kubeconfigFile), "KUBERNETES_SERVICE_HOST=172.30.0.254", "POD_IP=" + p1.Status.PodIP} {
			if !slices.Contains(strings.Split(string(environ), "\x00"), want) {
				t.Errorf("container env lacks %s", want)
			}
		}
		logb, err := os.ReadFile(filepath.Join(dir, "testapp.log"))
		if err != nil || !strings.Contains(string(logb), "testapp listening on :8080 as "+testNS+"/"+p1.Name) {
			t.Errorf("container log: %v %q", err, logb)
		}
	})

	t.Run("KilledContainerIsRestartedAndCounted", func(t *testing.T) {
		hc := c.nodeHTTP(1)
		base := "http://" + net.JoinHostPort(p1.Status.PodIP, "8080")
		pid, err := strconv.Atoi(get(t, hc, base+"/pid"))
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "restartCount 1 and ready again", func() (bool, string) {
			p, err := c.client.CoreV1().Pods(testNS).Get(ctx, p1.Name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			if len(p.Status.ContainerStatuses) != 1 {
				return false, "no container status"
			}
			cs := p.Status.ContainerStatuses[0]
			lt := cs.LastTerminationState.Terminated
			return cs.RestartCount == 1 && cs.Ready && lt != nil && lt.ExitCode == 137, fmt.Sprintf("%+v", cs)
		})
		newPid, err := strconv.Atoi(get(t, hc, base+"/pid"))
		if err != nil || newPid == pid {
			t.Errorf("pid after restart %d (was %d): %v", newPid, pid, err)
		}
	})

	t.Run("DeletedPodIsStoppedAndItsNetworkRemoved", func(t *testing.T) {
		ar := c.agent(t, "node-1")
		dir := filepath.Join(ar.cfg.StateDir, podsDir, podDirName(testNS, p1.Name, string(p1.UID)))
		rec, err := loadRecord(dir)
		if err != nil {
			t.Fatal(err)
		}
		proc, ok := rec.Processes["testapp"]
		if !ok || rec.Netns == "" {
			t.Fatalf("state record %+v", rec)
		}
		ipamFile := filepath.Join(ar.cfg.StateDir, "cni", "ipam", "ambient-pods", p1.Status.PodIP)
		if _, err := os.Stat(ipamFile); err != nil {
			t.Fatalf("host-local allocation before deletion: %v", err)
		}
		if _, err := os.Stat(netnsPath(rec.Netns)); err != nil {
			t.Fatalf("pod netns before deletion: %v", err)
		}
		t0 := time.Now()
		if err := c.client.CoreV1().Pods(testNS).Delete(ctx, p1.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the pod object to be gone", func() (bool, string) {
			p, err := c.client.CoreV1().Pods(testNS).Get(ctx, p1.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, ""
			}
			if err != nil {
				return false, err.Error()
			}
			return false, fmt.Sprintf("deletionTimestamp=%v phase=%s", p.DeletionTimestamp, p.Status.Phase)
		})
		t.Logf("graceful deletion completed in %v", time.Since(t0).Round(time.Millisecond))
		if err := syscall.Kill(proc.PID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("container process %d still exists (kill 0: %v)", proc.PID, err)
		}
		if _, err := os.Stat(netnsPath(rec.Netns)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pod netns %s still exists: %v", rec.Netns, err)
		}
		if _, err := os.Stat(ipamFile); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("host-local still holds %s (CNI DEL not run?): %v", p1.Status.PodIP, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pod directory %s still exists", dir)
		}
		// The ReplicaSet's replacement comes up on node 1 again.
		pods := c.readyEchoPods(t, ctx, p1.Name)
		if pods["node-1"].Name == p1.Name {
			t.Errorf("replacement has the old name")
		}
	})

	t.Run("HostNetworkPodRunsInTheNodeNamespace", func(t *testing.T) {
		ctr := testContainer("--listen=:18080")
		ctr.ReadinessProbe = &v1.Probe{
			ProbeHandler:  v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(18080)}},
			PeriodSeconds: 1,
		}
		pod := &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "hostnet"},
			Spec:       v1.PodSpec{NodeName: "node-2", HostNetwork: true, Containers: []v1.Container{ctr}},
		}
		if _, err := c.client.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "hostnet pod ready", func() (bool, string) {
			p, err := c.client.CoreV1().Pods(testNS).Get(ctx, "hostnet", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return podReady(p) && p.Status.PodIP == c.topo.Nodes[1].IP.String(), fmt.Sprintf("ip=%s %+v", p.Status.PodIP, p.Status.ContainerStatuses)
		})
		body := get(t, c.nodeHTTP(1), "http://"+net.JoinHostPort(c.topo.Nodes[1].IP.String(), "18080")+"/")
		if !strings.Contains(body, `"pod":"hostnet"`) || !strings.Contains(body, `"podIP":"`+c.topo.Nodes[1].IP.String()+`"`) {
			t.Errorf("node 2's address answered %s", body)
		}
		c.deleteAndWait(t, ctx, "hostnet")
	})

	t.Run("HostPathIsPerNode", func(t *testing.T) {
		c.testHostPathPerNode(t, ctx)
	})

	t.Run("PodsGetTheClusterResolvConfInTheirOwnMountNamespace", func(t *testing.T) {
		c.testPodDNS(t, ctx)
	})

	t.Run("GracePeriodEndsWithSIGKILL", func(t *testing.T) {
		grace := int64(1)
		pod := &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "stubborn"},
			Spec: v1.PodSpec{NodeName: "node-2", TerminationGracePeriodSeconds: &grace,
				Containers: []v1.Container{testContainer("--listen=:8081", "--ignore-sigterm")}},
		}
		created, err := c.client.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "stubborn pod running", func() (bool, string) {
			p, err := c.client.CoreV1().Pods(testNS).Get(ctx, "stubborn", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return podReady(p), fmt.Sprintf("%+v", p.Status.ContainerStatuses)
		})
		dir := filepath.Join(c.agent(t, "node-2").cfg.StateDir, podsDir, podDirName(testNS, "stubborn", string(created.UID)))
		rec, err := loadRecord(dir)
		if err != nil {
			t.Fatal(err)
		}
		pid := rec.Processes["testapp"].PID
		logPath := filepath.Join(dir, "testapp.log")
		var logb []byte
		t0 := time.Now()
		if err := c.client.CoreV1().Pods(testNS).Delete(ctx, "stubborn", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "SIGTERM delivered", func() (bool, string) {
			logb, _ = os.ReadFile(logPath)
			return strings.Contains(string(logb), "SIGTERM ignored"), string(logb)
		})
		waitFor(t, "stubborn gone", func() (bool, string) {
			_, err := c.client.CoreV1().Pods(testNS).Get(ctx, "stubborn", metav1.GetOptions{})
			return apierrors.IsNotFound(err), fmt.Sprint(err)
		})
		if took := time.Since(t0); took < time.Second {
			t.Errorf("deletion took %v, less than the 1s grace period", took)
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d survived (kill 0: %v)", pid, err)
		}
	})

	t.Run("UnknownImageGetsAClearReason", func(t *testing.T) {
		ctr := testContainer()
		ctr.Image = "example.com/not-here:1.0"
		pod := &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "bad-image"},
			Spec:       v1.PodSpec{NodeName: "node-1", Containers: []v1.Container{ctr}},
		}
		if _, err := c.client.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "ErrImagePull", func() (bool, string) {
			p, err := c.client.CoreV1().Pods(testNS).Get(ctx, "bad-image", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Waiting == nil {
				return false, fmt.Sprintf("%+v", p.Status)
			}
			w := p.Status.ContainerStatuses[0].State.Waiting
			return p.Status.Phase == v1.PodPending && w.Reason == "ErrImagePull" &&
				strings.Contains(w.Message, `image "example.com/not-here:1.0" is not in the local image table (see `), fmt.Sprintf("%+v", w)
		})
		c.deleteAndWait(t, ctx, "bad-image")
	})

	t.Run("ScaledToZeroLeavesNothingOnTheNodes", func(t *testing.T) {
		if _, err := c.client.AppsV1().Deployments(testNS).Patch(ctx, "echo", "application/merge-patch+json",
			[]byte(`{"spec":{"replicas":0}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "no pods left", func() (bool, string) {
			list, err := c.client.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err.Error()
			}
			return len(list.Items) == 0, fmt.Sprintf("%d pods", len(list.Items))
		})
		c.assertNoLeftovers(t)
	})
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

// testHostPathPerNode runs a pod on each node writing its node's name to
// the same hostPath: each file lands under its node's HostPathRoot, and
// the real path is untouched.
func (c *cluster) testHostPathPerNode(t *testing.T, ctx context.Context) {
	hostDir := fmt.Sprintf("/var/lib/nodeagent-test-%d", os.Getpid())
	dirType := v1.HostPathDirectoryOrCreate
	for _, node := range []string{"node-1", "node-2"} {
		ctr := testContainer("--listen=:8082", "--write-node=/data/node")
		ctr.VolumeMounts = []v1.VolumeMount{{Name: "data", MountPath: "/data"}}
		pod := &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "hostpath-" + node},
			Spec: v1.PodSpec{NodeName: node, Containers: []v1.Container{ctr}, Volumes: []v1.Volume{{
				Name:         "data",
				VolumeSource: v1.VolumeSource{HostPath: &v1.HostPathVolumeSource{Path: hostDir, Type: &dirType}},
			}}},
		}
		if _, err := c.client.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, node := range []string{"node-1", "node-2"} {
		file := filepath.Join(c.agent(t, node).cfg.HostPathRoot, hostDir, "node")
		waitFor(t, "hostPath file of "+node, func() (bool, string) {
			b, err := os.ReadFile(file)
			return err == nil && string(b) == node, fmt.Sprintf("%q %v", b, err)
		})
	}
	if _, err := os.Stat(hostDir); !os.IsNotExist(err) {
		t.Errorf("the real %s exists (stat: %v)", hostDir, err)
		_ = os.RemoveAll(hostDir)
	}
	for _, node := range []string{"node-1", "node-2"} {
		c.deleteAndWait(t, ctx, "hostpath-"+node)
	}
}

// deleteAndWait deletes a pod and waits until the agent finished it.
func (c *cluster) deleteAndWait(t *testing.T, ctx context.Context, name string) {
	if err := c.client.CoreV1().Pods(testNS).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, name+" gone", func() (bool, string) {
		_, err := c.client.CoreV1().Pods(testNS).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

// mountLines are the lines of a mountinfo file that concern pods: any
// mount on a resolv.conf or from a pod directory.
func mountLines(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "resolv.conf") || strings.Contains(l, "/"+podsDir+"/") {
			out = append(out, l)
		}
	}
	return out
}

// podPID is the pid of a pod's testapp container, from the agent's record.
func (c *cluster) podPID(t *testing.T, ctx context.Context, name string) int {
	t.Helper()
	p, err := c.client.CoreV1().Pods(testNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := loadRecord(filepath.Join(c.agent(t, p.Spec.NodeName).cfg.StateDir, podsDir, podDirName(testNS, name, string(p.UID))))
	if err != nil {
		t.Fatal(err)
	}
	return rec.Processes["testapp"].PID
}

// testPodDNS runs pods with each DNS policy and reads /etc/resolv.conf
// as their containers see it, then checks that the node's file and
// mounts are untouched and no mount outlives the pods.
func (c *cluster) testPodDNS(t *testing.T, ctx context.Context) {
	hostBefore, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		t.Fatal(err)
	}
	selfBefore, initBefore := mountLines(t, "/proc/self/mountinfo"), mountLines(t, "/proc/1/mountinfo")
	var hostSearch string
	for _, l := range strings.Split(string(hostBefore), "\n") {
		if f := strings.Fields(l); len(f) > 1 && (f[0] == "search" || f[0] == "domain") {
			hostSearch = " " + strings.Join(f[1:], " ")
		}
	}
	clusterConf := "nameserver " + clusterDNS + "\nsearch " + testNS + ".svc.cluster.local svc.cluster.local cluster.local" + hostSearch + "\noptions ndots:5\n"

	type dnsPod struct {
		name    string
		hostNet bool
		policy  v1.DNSPolicy
		port    int32
		want    string
	}
	pods := []dnsPod{
		{name: "dns-pod", port: 8080, want: clusterConf},
		{name: "dns-hostnet", hostNet: true, policy: v1.DNSClusterFirst, port: 18081, want: string(hostBefore)},
		{name: "dns-hostnet-cluster", hostNet: true, policy: v1.DNSClusterFirstWithHostNet, port: 18082, want: clusterConf},
	}
	for _, dp := range pods {
		ctr := testContainer(fmt.Sprintf("--listen=:%d", dp.port), "--file=/etc/resolv.conf")
		ctr.ReadinessProbe = &v1.Probe{
			ProbeHandler:  v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(dp.port)}},
			PeriodSeconds: 1,
		}
		pod := &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: dp.name},
			Spec:       v1.PodSpec{NodeName: "node-1", HostNetwork: dp.hostNet, DNSPolicy: dp.policy, Containers: []v1.Container{ctr}},
		}
		if _, err := c.client.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var pids []int
	for _, dp := range pods {
		var ip string
		waitFor(t, dp.name+" ready", func() (bool, string) {
			p, err := c.client.CoreV1().Pods(testNS).Get(ctx, dp.name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			ip = p.Status.PodIP
			return podReady(p), fmt.Sprintf("%+v", p.Status.ContainerStatuses)
		})
		// The container's own view, through the app, and through /proc.
		got := get(t, c.nodeHTTP(1), "http://"+net.JoinHostPort(ip, strconv.Itoa(int(dp.port)))+"/file")
		if got != dp.want {
			t.Errorf("%s: /etc/resolv.conf in the container:\n%s\nwant:\n%s", dp.name, got, dp.want)
		}
		pid := c.podPID(t, ctx, dp.name)
		pids = append(pids, pid)
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/resolv.conf", pid)); err != nil || string(b) != dp.want {
			t.Errorf("%s: /proc/%d/root/etc/resolv.conf: %v %q", dp.name, pid, err, b)
		}
		// Its own mount namespace, with the bind mount when there is one.
		self, _ := os.Readlink("/proc/self/ns/mnt")
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		if ns == "" || ns == self {
			t.Errorf("%s: container mount namespace %q, the agent's %q", dp.name, ns, self)
		}
		mounted := slices.ContainsFunc(mountLines(t, fmt.Sprintf("/proc/%d/mountinfo", pid)), func(l string) bool {
			f := strings.Fields(l)
			return len(f) > 4 && f[4] == "/etc/resolv.conf" && strings.Contains(f[3], resolvConfFile)
		})
		if mounted != (dp.want == clusterConf) {
			t.Errorf("%s: resolv.conf bind mount in the container: %v, want %v", dp.name, mounted, dp.want == clusterConf)
		}
	}
	if b, _ := os.ReadFile("/etc/resolv.conf"); string(b) != string(hostBefore) {
		t.Errorf("the node's /etc/resolv.conf changed to %q", b)
	}
	if got := mountLines(t, "/proc/self/mountinfo"); !slices.Equal(got, selfBefore) {
		t.Errorf("the agent's mounts changed while pods run: %q, before %q", got, selfBefore)
	}
	for _, dp := range pods {
		c.deleteAndWait(t, ctx, dp.name)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("container %d survived its pod (kill 0: %v)", pid, err)
		}
	}
	if got := mountLines(t, "/proc/self/mountinfo"); !slices.Equal(got, selfBefore) {
		t.Errorf("mounts left in the agent's namespace: %q, before %q", got, selfBefore)
	}
	if got := mountLines(t, "/proc/1/mountinfo"); !slices.Equal(got, initBefore) {
		t.Errorf("mounts left in the host's namespace: %q, before %q", got, initBefore)
	}
}
