package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/controlplane"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/nodeagent"
)

// Keep the test's cluster off the default node link (a user's cluster) and
// off the other tests' links.
const (
	clusterName = "ambe2e"
	linkCIDR    = "172.30.203.0/24"
)

// waitTimeout bounds every wait for a condition of the cluster.
const waitTimeout = 3 * time.Minute

// env is a running local cluster and the user's tools pointed at it.
type env struct {
	root       string // the repository
	bin        string // our binaries, as `make build` leaves them
	kubectlBin string
	stateDir   string
	stateFile  string // ambientctl's cluster-state file
	kubeconfig string
}

// upCluster builds the binaries and starts the cluster with
// `ambientctl cluster up`; the test's cleanup runs `cluster down` (after
// dumping the logs of a failed test).
func upCluster(t *testing.T) *env {
	t.Helper()
	ci := os.Getenv("CI") == "true"
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("etcd"); err != nil {
		if ci {
			t.Fatalf("etcd not found: %v; run hack/install-deps.sh test", err)
		}
		t.Skip("etcd not found; run hack/install-deps.sh test")
	}
	if missing := controlplane.MissingBinaries(); len(missing) > 0 && !ci {
		t.Skipf("Kubernetes binaries not built (%s); run make deps", strings.Join(missing, ", "))
	}
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	k8s, err := controlplane.FindBinaries(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e := &env{
		root:       root,
		bin:        filepath.Join(dir, "bin"),
		kubectlBin: filepath.Join(k8s, "kubectl"),
		stateDir:   filepath.Join(dir, "state"),
		stateFile:  filepath.Join(dir, "cluster.json"),
	}
	e.kubeconfig = filepath.Join(e.stateDir, "kubeconfig")
	build := exec.Command("go", "build", "-o", e.bin+"/", "./cmd/...")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/...: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			e.dumpLogs(t)
		}
		if out, err := e.ambientctl("cluster", "down"); err != nil {
			t.Errorf("ambientctl cluster down: %v\n%s", err, out)
		}
	})
	start := time.Now()
	out, err := e.ambientctl("cluster", "up", "--nodes=2", "--link-cidr="+linkCIDR, "--bin-dir="+e.bin)
	if err != nil {
		t.Fatalf("ambientctl cluster up: %v\n%s", err, out)
	}
	t.Logf("cluster up in %v", time.Since(start).Round(time.Millisecond))
	return e
}

// run runs a command with the cluster's environment and a timeout.
func (e *env) run(timeout time.Duration, name string, args ...string) (string, error) {
	return e.runWith(e.stateFile, timeout, name, args...)
}

// runWith is run with ambientctl's cluster-state file at stateFile.
func (e *env) runWith(stateFile string, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = e.root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.kubeconfig, "AMBIENT_CLUSTER_STATE="+stateFile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return strings.TrimSpace(string(out) + stderr.String()), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

func (e *env) kubectl(args ...string) (string, error) {
	return e.run(time.Minute, e.kubectlBin, append([]string{"--request-timeout=30s"}, args...)...)
}

// ambientctl runs bin/ambientctl; `cluster` commands get this cluster's
// state directory and name.
func (e *env) ambientctl(args ...string) (string, error) {
	if len(args) > 0 && args[0] == "cluster" {
		args = append(args, "--state-dir="+e.stateDir, "--name="+clusterName)
	}
	return e.run(3*time.Minute, filepath.Join(e.bin, "ambientctl"), args...)
}

func (e *env) mustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.kubectl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *env) mustAmbientctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.ambientctl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// curl runs curl in the shop's curl pod (kubectl exec) against url.
func (e *env) curl(url string) (string, error) {
	return e.kubectl("exec", "-n", "shop", "deploy/curl", "--", "curl", "-sS", "--fail", "--max-time", "5", url)
}

// eventually polls cond until it holds, failing the test after
// waitTimeout with cond's last explanation.
func eventually(t *testing.T, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(waitTimeout)
	for {
		ok, why := cond()
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, waitTimeout, why)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// flow is one record of `ambientctl flows -o json`.
type flow struct {
	Node      string `json:"node"`
	Reporter  string `json:"reporter"`
	SrcWork   string `json:"src.workload"`
	SrcID     string `json:"src.identity"`
	DstWork   string `json:"dst.workload"`
	DstID     string `json:"dst.identity"`
	DstAddr   string `json:"dst.addr"`
	Decision  string `json:"decision"`
	Transport string `json:"transport"`
	Security  string `json:"security"`
	Protocol  string `json:"protocol"`
}

// flows reads the shop namespace's flows from every node's ztunnel.
func (e *env) flows(t *testing.T) ([]flow, error) {
	t.Helper()
	out, err := e.ambientctl("flows", "-n", "shop", "-o", "json")
	if err != nil {
		return nil, err
	}
	var fs []flow
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var f flow
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			t.Fatalf("ambientctl flows -o json: %v: %s", err, sc.Text())
		}
		fs = append(fs, f)
	}
	return fs, nil
}

// mustFlows is flows, failing the test on an error.
func (e *env) mustFlows(t *testing.T) []flow {
	t.Helper()
	fs, err := e.flows(t)
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

// hasFlow reports whether the current flows hold one matching m, with an
// explanation for eventually.
func (e *env) hasFlow(t *testing.T, m func(flow) bool) (bool, string) {
	t.Helper()
	fs, err := e.flows(t)
	if err != nil {
		return false, err.Error()
	}
	_, ok := findFlow(fs, m)
	return ok, fmt.Sprintf("no such flow among %d", len(fs))
}

// findFlow reports whether a flow matching m is among fs.
func findFlow(fs []flow, m func(flow) bool) (flow, bool) {
	for _, f := range fs {
		if m(f) {
			return f, true
		}
	}
	return flow{}, false
}

// pod is what the tests need of a pod.
type pod struct {
	Name, UID, IP, Node string
	Restarts            int
	Netns               string // the node agent's network namespace path
}

// pods lists the pods of namespace ns matching selector.
func (e *env) pods(t *testing.T, ns, selector string) []pod {
	t.Helper()
	out := e.mustKubectl(t, "get", "pods", "-n", ns, "-l", selector, "-o", "json")
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string            `json:"name"`
				UID               string            `json:"uid"`
				Annotations       map[string]string `json:"annotations"`
				DeletionTimestamp *string           `json:"deletionTimestamp"`
			} `json:"metadata"`
			Spec struct {
				NodeName string `json:"nodeName"`
			} `json:"spec"`
			Status struct {
				PodIP             string `json:"podIP"`
				ContainerStatuses []struct {
					RestartCount int `json:"restartCount"`
				} `json:"containerStatuses"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	var ps []pod
	for _, it := range list.Items {
		if it.Metadata.DeletionTimestamp != nil {
			continue
		}
		p := pod{Name: it.Metadata.Name, UID: it.Metadata.UID, IP: it.Status.PodIP, Node: it.Spec.NodeName}
		for _, cs := range it.Status.ContainerStatuses {
			p.Restarts += cs.RestartCount
		}
		if dir := it.Metadata.Annotations[nodeagent.LogDirAnnotation]; dir != "" {
			if b, err := os.ReadFile(filepath.Join(dir, "state.json")); err == nil {
				var st struct {
					Netns string `json:"netns"`
				}
				if json.Unmarshal(b, &st) == nil && st.Netns != "" {
					p.Netns = "/run/netns/" + st.Netns
				}
			}
		}
		ps = append(ps, p)
	}
	return ps
}

// onePod returns the only pod of ns matching selector.
func (e *env) onePod(t *testing.T, ns, selector string) pod {
	t.Helper()
	ps := e.pods(t, ns, selector)
	if len(ps) != 1 {
		t.Fatalf("pods -n %s -l %s: %d, want 1: %+v", ns, selector, len(ps), ps)
	}
	return ps[0]
}

// capture records the packets on a pod's eth0 while fn runs.
func capture(t *testing.T, p pod, fn func()) []testenv.Packet {
	t.Helper()
	if p.Netns == "" {
		t.Fatalf("pod %s: no network namespace known", p.Name)
	}
	c := testenv.CaptureOn(t, testenv.NS{Name: filepath.Base(p.Netns), Path: p.Netns}, "eth0")
	fn()
	c.Stop()
	return c.Packets()
}

// carries reports whether a TCP payload towards port holds marker.
func carries(pkts []testenv.Packet, port uint16, marker string) bool {
	for _, p := range pkts {
		if p.Dst.Port() == port && bytes.Contains(p.Payload, []byte(marker)) {
			return true
		}
	}
	return false
}

// sentTo reports whether any packet went to port.
func sentTo(pkts []testenv.Packet, port uint16) bool {
	for _, p := range pkts {
		if p.Dst.Port() == port {
			return true
		}
	}
	return false
}

// dumpLogs prints the tail of every component's and pod's log.
func (e *env) dumpLogs(t *testing.T) {
	for _, pattern := range []string{
		filepath.Join(e.stateDir, "logs", "*.log"),
		filepath.Join(e.stateDir, "nodes", "*", "agent", "pods", "*", "*.log"),
	} {
		files, _ := filepath.Glob(pattern)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			if len(b) > 4096 {
				b = b[len(b)-4096:]
			}
			t.Logf("==> %s <==\n%s", f, b)
		}
	}
}
