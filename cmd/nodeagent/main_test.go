package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambientmesh/ambient/internal/controlplane"
	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/nodeagent"
)

func TestParseFlags_SaysWhatIsMissing(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--node-name=n"}, "--state-dir is required"},
		{[]string{"--state-dir=/s", "--node-ip=1.2.3.4", "--cni-bin-dir=/c"}, "--node-name is required"},
		{[]string{"--state-dir=/s", "--node-name=n", "--cni-bin-dir=/c"}, "--node-ip is required"},
		{[]string{"--state-dir=/s", "--node-name=n", "--node-ip=1.2.3.4"}, "--cni-bin-dir is required"},
		{[]string{"cleanup"}, "--state-dir is required"},
		{[]string{"--state-dir=/s", "extra"}, "unexpected arguments"},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q): %v, want %q", tc.args, err, tc.want)
		}
	}
	o, err := parseFlags([]string{"cleanup", "--state-dir=/s"}, io.Discard)
	if err != nil || !o.cleanup || o.stateDir != "/s" {
		t.Errorf("cleanup: %+v %v", o, err)
	}
}

func TestConfig_BadValuesAreRefused(t *testing.T) {
	base := options{nodeName: "n", nodeIP: "172.30.0.1", stateDir: "/s", cniBinDir: "/c", kubeconfig: "/nonexistent"}
	for _, tc := range []struct {
		mod  func(*options)
		want string
	}{
		{func(o *options) { o.nodeIP = "nope" }, "--node-ip"},
		{func(o *options) { o.podCIDR = "10.0.0.0" }, "--pod-cidr"},
		{func(o *options) { o.imageTable = "/nonexistent.yaml" }, "image table"},
		{func(o *options) { o.binDir = "/b" }, "kubeconfig"},
		{func(o *options) { o.clusterDNS = "10.96.0.10,nope" }, "--cluster-dns"},
		{func(o *options) { o.hostPass = "/proc,run/netns" }, "--host-path-passthrough"},
	} {
		o := base
		tc.mod(&o)
		if _, err := config(o, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config(%+v): %v, want %q", o, err, tc.want)
		}
	}
}

func TestParseFlags_ClusterDNS(t *testing.T) {
	o, err := parseFlags([]string{"--state-dir=/s", "--node-name=n", "--node-ip=172.30.0.1", "--cni-bin-dir=/c",
		"--cluster-dns=10.96.0.10", "--kubeconfig=/nonexistent"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.clusterDNS != "10.96.0.10" || o.domain != "cluster.local" || o.resolvConf != "/etc/resolv.conf" {
		t.Errorf("options %+v", o)
	}
	o.binDir = "/b"
	// config stops at the kubeconfig, after the DNS flags are parsed.
	if _, err := config(o, nil); err == nil || !strings.Contains(err.Error(), "kubeconfig") {
		t.Errorf("config: %v", err)
	}
}

func TestParseFlags_HostPathRoot(t *testing.T) {
	base := []string{"--state-dir=/s", "--node-name=n", "--node-ip=172.30.0.1", "--cni-bin-dir=/c", "--kubeconfig=/nonexistent", "--bin-dir=/b"}
	o, err := parseFlags(base, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// config stops at the kubeconfig, after the host path flags.
	cfg, _ := config(o, nil)
	if cfg.HostPathRoot != "" || strings.Join(cfg.HostPathPassthrough, ",") != "/run/netns,/var/run/netns,/proc,/sys,/dev,/lib/modules" {
		t.Errorf("defaults: root %q passthrough %q", cfg.HostPathRoot, cfg.HostPathPassthrough)
	}
	o, err = parseFlags(append(base, "--host-path-root=/r", "--host-path-passthrough="), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ = config(o, nil)
	if cfg.HostPathRoot != "/r" || cfg.HostPathPassthrough == nil || len(cfg.HostPathPassthrough) != 0 {
		t.Errorf("set: root %q passthrough %q", cfg.HostPathRoot, cfg.HostPathPassthrough)
	}
}

// TestCleanup_RemovesWhatACrashedAgentLeft runs the binary on a node whose
// pod CIDR the controller-manager allocates, SIGKILLs it while it runs a
// pod, and checks that `nodeagent cleanup` removes the pod's network
// namespace, host-local allocation, processes and files.
func TestCleanup_RemovesWhatACrashedAgentLeft(t *testing.T) {
	testenv.RequireRoot(t)
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 1})
	node := topo.Nodes[0]
	// The pod CIDR comes from the controller-manager's allocation.
	kc := kubetest.Start(t, kubetest.Options{ControllerManager: true, ClusterCIDR: "10.244.0.0/16"})
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	repo := strings.TrimSpace(string(root))
	cniOut, err := exec.Command(filepath.Join(repo, "hack", "build-cni-plugins.sh")).Output()
	if err != nil {
		t.Fatalf("hack/build-cni-plugins.sh: %v", err)
	}
	cniDir := strings.TrimSpace(string(cniOut))
	cniDir = cniDir[strings.LastIndexByte(cniDir, '\n')+1:]
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/nodeagent", "./nodeagent/internal/testapp")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	table := filepath.Join(bin, "images.yaml")
	if err := os.WriteFile(table, []byte("images:\n- image: ambient/testapp:*\n  binary: testapp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	logf, err := os.Create(filepath.Join(bin, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	agent := exec.Command(filepath.Join(bin, "nodeagent"),
		"--kubeconfig="+kc.Kubeconfig, "--node-name=node-1", "--node-netns="+node.Path,
		"--node-ip="+node.IP.String(), "--state-dir="+state,
		"--cni-bin-dir="+cniDir, "--image-table="+table)
	agent.Stdout, agent.Stderr = logf, logf
	agent.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = agent.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = agent.Process.Kill()
		<-exited
		if err := nodeagent.Cleanup(context.Background(), state, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("agent log:\n%s", b)
		}
	})

	rc, err := clientcmd.BuildConfigFromFlags("", kc.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(rc)
	ctx := context.Background()
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "victim"},
		Spec: v1.PodSpec{NodeName: "node-1", Containers: []v1.Container{{
			Name: "app", Image: "ambient/testapp:v1", Args: []string{"--listen=:8080"},
		}}},
	}
	// The ServiceAccount admission refuses pods until the controller-manager
	// has created the namespace's default ServiceAccount.
	var created *v1.Pod
	wait(t, "pod created", func() (bool, string) {
		created, err = client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
		return err == nil, fmt.Sprint(err)
	})
	wait(t, "pod running", func() (bool, string) {
		p, err := client.CoreV1().Pods("default").Get(ctx, "victim", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return p.Status.Phase == v1.PodRunning && p.Status.PodIP != "", fmt.Sprintf("%+v", p.Status)
	})
	p, _ := client.CoreV1().Pods("default").Get(ctx, "victim", metav1.GetOptions{})
	n, err := client.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cidr, err := netip.ParsePrefix(n.Spec.PodCIDR)
	if err != nil || !cidr.Contains(netip.MustParseAddr(p.Status.PodIP)) {
		t.Fatalf("pod IP %s not in the allocated pod CIDR %q (%v)", p.Status.PodIP, n.Spec.PodCIDR, err)
	}
	podDir := filepath.Join(state, "pods", "default_victim_"+string(created.UID))
	ipamFile := filepath.Join(state, "cni", "ipam", "ambient-pods", p.Status.PodIP)
	var netnsName string
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "na-node-1-") && strings.HasPrefix(string(created.UID), strings.TrimPrefix(e.Name(), "na-node-1-")) {
			netnsName = e.Name()
		}
	}
	if netnsName == "" {
		t.Fatal("the pod's network namespace na-node-1-<uid> was not found")
	}

	if err := agent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	for _, path := range []string{"/run/netns/" + netnsName, ipamFile, podDir} {
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("after the crash %s should still exist (else this test proves nothing): %v", path, err)
		}
	}

	out, err := exec.Command(filepath.Join(bin, "nodeagent"), "cleanup", "--state-dir="+state).CombinedOutput()
	if err != nil {
		t.Fatalf("nodeagent cleanup: %v\n%s", err, out)
	}
	for _, path := range []string{"/run/netns/" + netnsName, ipamFile, podDir} {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after cleanup %s still exists: %v", path, err)
		}
	}
	// Nothing runs the test app any more.
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, exe := range procs {
		if target, err := os.Readlink(exe); err == nil && target == filepath.Join(bin, "testapp") {
			t.Errorf("a test app process is still running: %s", exe)
		}
	}
}

func wait(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		ok, s := cond()
		if ok {
			return
		}
		last = s
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last: %s", what, last)
}

func TestConfig_KubeletClientCADefaultsToTheKubeconfigsCA(t *testing.T) {
	dir := t.TempDir()
	pki, err := controlplane.WritePKI(dir, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, controlplane.KubeconfigYAML("c", "https://127.0.0.1:6443", pki.CAPEM, "tok"), 0o600); err != nil {
		t.Fatal(err)
	}
	other, err := os.ReadFile(pki.KubeletClientCert) // any other PEM file
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"--state-dir=/s", "--node-name=n", "--node-ip=172.30.0.1", "--cni-bin-dir=/c", "--bin-dir=/b", "--kubeconfig=" + kubeconfig}
	for _, tc := range []struct {
		args     []string
		wantPort int
		wantCA   string
	}{
		{nil, 10250, string(pki.CAPEM)},
		{[]string{"--kubelet-client-ca=" + pki.KubeletClientCert, "--kubelet-port=10251"}, 10251, string(other)},
		{[]string{"--kubelet-port=0"}, 0, ""},
	} {
		o, err := parseFlags(append(base, tc.args...), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config(o, nil)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if cfg.KubeletPort != tc.wantPort || string(cfg.KubeletClientCA) != tc.wantCA {
			t.Errorf("%q: port %d CA %.40q, want %d %.40q", tc.args, cfg.KubeletPort, cfg.KubeletClientCA, tc.wantPort, tc.wantCA)
		}
	}
}
