package localcluster_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/ambientmesh/ambient/internal/controlplane"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/localcluster"
)

// testLink keeps the test's cluster off the default node link, so a user's
// cluster and internal/testenv's host-linked topologies are untouched.
var testLink = netip.MustParsePrefix("172.30.201.0/24")

// testConfig builds the binaries the cluster needs and returns its Config,
// skipping (or under CI failing) when root or prerequisites are missing.
func testConfig(t *testing.T) localcluster.Config {
	t.Helper()
	ci := os.Getenv("CI") == "true"
	if os.Geteuid() != 0 {
		if ci {
			t.Fatal("the local cluster test needs root; CI must run it as root")
		}
		t.Skip("needs root (network namespaces, routes)")
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		if ci {
			t.Fatalf("etcd not found: %v; run hack/install-deps.sh test", err)
		}
		t.Skip("etcd not found; run hack/install-deps.sh test")
	}
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if missing := controlplane.MissingBinaries(); len(missing) > 0 && !ci {
		t.Skipf("Kubernetes binaries not built (%s); run hack/build-k8s.sh", strings.Join(missing, ", "))
	}
	k8s, err := controlplane.FindBinaries(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	cni, err := exec.Command(filepath.Join(root, "hack", "build-cni-plugins.sh")).Output()
	if err != nil {
		t.Fatalf("hack/build-cni-plugins.sh: %v", err)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/nodeagent", "./cmd/ambient-cni", "./cmd/clusterdns", "./cmd/sampleapp")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(cni)), "\n")
	return localcluster.Config{
		Name:             "amblct",
		Nodes:            2,
		StateDir:         filepath.Join(t.TempDir(), "state"),
		ClusterStateFile: filepath.Join(t.TempDir(), "cluster.json"),
		LinkCIDR:         testLink,
		RepoRoot:         root,
		K8sBinDir:        k8s,
		CNIBinDir:        lines[len(lines)-1],
		BinDir:           bin,
		Progress:         tWriter{t},
	}
}

// tWriter sends progress lines to the test log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestUpDown_PodsReachServiceAndPeerAcrossNodes_DownLeavesNothing is the
// cluster's end-to-end check: two Ready nodes with pod CIDRs, a Deployment
// spread over them, a ClusterIP Service through kube-proxy, pod-to-pod
// across nodes; then Down removes everything, a second Down is a no-op,
// and Up after a crash (every process SIGKILLed) recovers by cleaning up.
func TestUpDown_PodsReachServiceAndPeerAcrossNodes_DownLeavesNothing(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, cfg.StateDir)
		}
		if err := localcluster.Down(context.Background(), cfg); err != nil {
			t.Errorf("cleanup Down: %v", err)
		}
	})

	start := time.Now()
	c, err := localcluster.Up(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("up in %v", time.Since(start).Round(time.Millisecond))
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	podCIDRs := map[string]netip.Prefix{}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes.Items {
		p, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil || !localcluster.DefaultPodCIDR.Contains(p.Addr()) {
			t.Errorf("node %s pod CIDR %q, want a prefix of %s", n.Name, n.Spec.PodCIDR, localcluster.DefaultPodCIDR)
		}
		podCIDRs[n.Name] = p
	}
	if len(podCIDRs) != 2 {
		t.Fatalf("nodes = %v, want 2", podCIDRs)
	}
	checkStateFile(t, cfg, c)

	pods, svcIP := deployApp(ctx, t, cs)
	for _, p := range pods {
		if ip := netip.MustParseAddr(p.Status.PodIP); !podCIDRs[p.Spec.NodeName].Contains(ip) {
			t.Errorf("pod %s on %s has IP %s outside the node's %s", p.Name, p.Spec.NodeName, ip, podCIDRs[p.Spec.NodeName])
		}
	}
	a, b := pods[0], pods[1]
	aNetns := podNetns(t, a)
	// Through kube-proxy's DNAT; retried while kube-proxy catches up.
	if got := httpGet(ctx, t, aNetns, net.JoinHostPort(svcIP, "80")); !strings.Contains(got, "web") {
		t.Errorf("GET service %s from %s: %q", svcIP, a.Name, got)
	}
	if got := httpGet(ctx, t, aNetns, net.JoinHostPort(b.Status.PodIP, "8080")); !strings.Contains(got, "web") {
		t.Errorf("GET pod %s (%s) from %s: %q", b.Name, b.Status.PodIP, a.Name, got)
	}

	// Cluster DNS: pod A resolves the Service's name through its own
	// resolv.conf (nameserver the plan's ClusterDNS, the kube-dns Service
	// through kube-proxy, answered by clusterdns) and calls it.
	dnsName := "web.default.svc.cluster.local"
	got := httpGetPath(ctx, t, aNetns, net.JoinHostPort(a.Status.PodIP, "8080"), "/call?url=http://"+dnsName+":80/")
	var rep struct {
		Upstreams []struct {
			Status int             `json:"status"`
			Body   json.RawMessage `json:"body"`
			Error  string          `json:"error"`
		} `json:"upstreams"`
	}
	var upstream struct {
		Service string `json:"service"`
		Host    string `json:"host"`
	}
	err = json.Unmarshal([]byte(got), &rep)
	if err == nil && len(rep.Upstreams) == 1 {
		err = json.Unmarshal(rep.Upstreams[0].Body, &upstream)
	}
	if err != nil || len(rep.Upstreams) != 1 || rep.Upstreams[0].Status != http.StatusOK || upstream.Service != "web" {
		t.Errorf("pod %s calling http://%s/: %q (%v)", a.Name, dnsName, got, err)
	}

	// Pods reach the apiserver on the host link, directly and through the
	// kubernetes Service (kube-proxy to the advertised address).
	for _, addr := range []string{net.JoinHostPort(c.Plan.HostIP.String(), "6443"), "10.96.0.1:443"} {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := netns.DialTCP(dctx, aNetns, addr)
		dcancel()
		if err != nil {
			t.Errorf("pod %s dialing the apiserver at %s: %v", a.Name, addr, err)
			continue
		}
		conn.Close()
	}

	// A second cluster on the same names and link is refused, and
	// cleaning up after the refusal leaves the first one alone.
	other := cfg
	other.StateDir = filepath.Join(t.TempDir(), "other")
	other.ClusterStateFile = filepath.Join(t.TempDir(), "other.json")
	if _, err := localcluster.Up(ctx, other); err == nil || !strings.Contains(err.Error(), "already exist") {
		t.Errorf("second Up on the same link: err = %v, want a refusal", err)
	}
	if st, err := localcluster.GetStatus(ctx, cfg); err != nil || !st.Healthy() {
		t.Errorf("after the refused second Up: status %+v, %v", st, err)
	}

	// Crash: every process SIGKILLed, the state directory left behind.
	before := snapshot(t, cfg)
	if len(before.podNetns) != 3 {
		t.Errorf("pod namespaces while the app runs: %v, want 3 (2 web, clusterdns)", before.podNetns)
	}
	for _, p := range before.procs {
		_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	}
	start = time.Now()
	c, err = localcluster.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("Up after a crash: %v", err)
	}
	t.Logf("up after a crash in %v", time.Since(start).Round(time.Millisecond))
	for _, p := range before.procs {
		if !controlplane.GroupGone(p.Pid) {
			t.Errorf("process group %d (%s) of the crashed cluster still has processes", p.Pid, p.Name)
		}
	}
	for _, ns := range before.podNetns {
		if _, err := os.Stat(ns); err == nil {
			t.Errorf("pod namespace %s of the crashed cluster still exists", ns)
		}
	}
	if cs, err = c.Client(); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("the recovered cluster's apiserver: %v", err)
	}

	after := snapshot(t, cfg)
	start = time.Now()
	if err := localcluster.Down(ctx, cfg); err != nil {
		t.Fatalf("Down: %v", err)
	}
	t.Logf("down in %v", time.Since(start).Round(time.Millisecond))
	checkNothingLeft(t, cfg, after)
	if err := localcluster.Down(ctx, cfg); err != nil {
		t.Errorf("second Down: %v", err)
	}
}

// deployApp creates a 2-replica sampleapp Deployment spread over the nodes
// and a ClusterIP Service, and waits for both pods to run.
func deployApp(ctx context.Context, t *testing.T, cs kubernetes.Interface) ([]v1.Pod, string) {
	t.Helper()
	labels := map[string]string{"app": "web"}
	replicas := int32(2)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: v1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: v1.PodSpec{
					Affinity: &v1.Affinity{PodAntiAffinity: &v1.PodAntiAffinity{
						RequiredDuringSchedulingIgnoredDuringExecution: []v1.PodAffinityTerm{{
							LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
							TopologyKey:   "kubernetes.io/hostname",
						}},
					}},
					Containers: []v1.Container{{
						Name:  "web",
						Image: "ambient/sampleapp:dev",
						Args:  []string{"--name=web", "--listen=:8080"},
						Ports: []v1.ContainerPort{{ContainerPort: 8080}},
					}},
				},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: v1.ServiceSpec{
			Selector: labels,
			Ports:    []v1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	created, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		list, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			t.Fatal(err)
		}
		var running []v1.Pod
		for _, p := range list.Items {
			if p.Status.Phase == v1.PodRunning && p.Status.PodIP != "" {
				running = append(running, p)
			}
		}
		if len(running) == 2 && running[0].Spec.NodeName != running[1].Spec.NodeName {
			return running, created.Spec.ClusterIP
		}
		if time.Now().After(deadline) {
			var st []string
			for _, p := range list.Items {
				st = append(st, fmt.Sprintf("%s node=%s phase=%s ip=%s", p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.PodIP))
			}
			t.Fatalf("pods not running on two nodes: %v", st)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// podNetns finds a pod's network namespace from its node agent's records.
func podNetns(t *testing.T, p v1.Pod) string {
	t.Helper()
	short, _, _ := strings.Cut(string(p.UID), "-")
	path := localcluster.NetnsPath("na-" + p.Spec.NodeName + "-" + short)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("pod %s's network namespace: %v", p.Name, err)
	}
	return path
}

// httpGet GETs http://addr/ from inside nsPath, retrying for 30 s.
func httpGet(ctx context.Context, t *testing.T, nsPath, addr string) string {
	t.Helper()
	return httpGetPath(ctx, t, nsPath, addr, "/")
}

// httpGetPath GETs http://addr<path> from inside nsPath until it answers
// 200, for 30 s.
func httpGetPath(ctx context.Context, t *testing.T, nsPath, addr, path string) string {
	t.Helper()
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, a string) (net.Conn, error) {
			return netns.DialTCP(ctx, nsPath, a)
		},
	}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 8192))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return string(body)
			}
			err = fmt.Errorf("%s: %s", resp.Status, body)
		}
		if time.Now().After(deadline) {
			t.Errorf("GET http://%s%s from %s: %v", addr, path, nsPath, err)
			return ""
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func checkStateFile(t *testing.T, cfg localcluster.Config, c *localcluster.Cluster) {
	t.Helper()
	b, err := os.ReadFile(cfg.ClusterStateFile)
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Server string `json:"server"`
		Nodes  []struct {
			Name, Netns, IP string
		} `json:"nodes"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if s.Server != c.Server || len(s.Nodes) != 2 || s.Nodes[0].Netns != "/run/netns/amblct-node-1" || s.Nodes[1].IP != "172.30.201.2" {
		t.Errorf("cluster state file: %s", b)
	}
}

// resources is what a running cluster has, as the machine shows it.
type resources struct {
	procs    []localcluster.ProcEntry
	podNetns []string
}

func snapshot(t *testing.T, cfg localcluster.Config) resources {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cfg.StateDir, localcluster.RecordFile))
	if err != nil {
		t.Fatal(err)
	}
	var rec localcluster.Record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.Procs) != 8 {
		t.Errorf("recorded processes = %d, want 8 (etcd, apiserver, cm, scheduler, 2×(nodeagent, kube-proxy))", len(rec.Procs))
	}
	r := resources{procs: rec.Procs}
	m, _ := filepath.Glob("/run/netns/na-amblct-node-*")
	r.podNetns = m
	return r
}

// checkNothingLeft lists processes, namespaces, links, routes and files.
func checkNothingLeft(t *testing.T, cfg localcluster.Config, before resources) {
	t.Helper()
	for _, p := range before.procs {
		if !controlplane.GroupGone(p.Pid) {
			t.Errorf("process group %d (%s) still has processes", p.Pid, p.Name)
		}
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "amblct") {
			t.Errorf("namespace left: %s", l)
		}
	}
	out, _ = exec.Command("ip", "-o", "link", "show").Output()
	if strings.Contains(string(out), "amblct") {
		t.Errorf("root link left:\n%s", out)
	}
	out, _ = exec.Command("ip", "route", "show", "proto", localcluster.GuardProto).Output()
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "metric 1201") {
			t.Errorf("guard route left: %s", sc.Text())
		}
	}
	out, _ = exec.Command("ip", "route", "show", testLink.String()).Output()
	if strings.TrimSpace(string(out)) != "" {
		t.Errorf("host link route left: %s", out)
	}
	for _, f := range []string{cfg.StateDir, cfg.ClusterStateFile} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s left (stat: %v)", f, err)
		}
	}
}

func dumpLogs(t *testing.T, stateDir string) {
	logs, _ := filepath.Glob(filepath.Join(stateDir, "logs", "*.log"))
	for _, l := range logs {
		t.Logf("---- %s (tail) ----\n%s", filepath.Base(l), controlplane.TailFile(l, 3000))
	}
}
