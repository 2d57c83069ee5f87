package cli_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCluster_StatusWithoutClusterSaysHowToStartOne(t *testing.T) {
	dir := t.TempDir()
	_, errOut, code := run(t, "cluster", "status", "--state-dir", dir)
	if code == 0 || !strings.Contains(errOut, "ambientctl cluster up") {
		t.Errorf("exit %d, stderr %q: want a failure naming ambientctl cluster up", code, errOut)
	}
}

func TestCluster_DownWithoutClusterIsANoOp(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "none")
	out := mustRun(t, "cluster", "down", "--state-dir", dir)
	if !strings.Contains(out, "removed") {
		t.Errorf("stdout %q", out)
	}
}

func TestCluster_UpRefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--nodes", "0"},
		{"--nodes", "51"},
		{"--link-cidr", "nonsense"},
	} {
		_, errOut, code := run(t, append([]string{"cluster", "up", "--state-dir", t.TempDir()}, args...)...)
		if code == 0 || errOut == "" {
			t.Errorf("cluster up %v: exit %d, stderr %q", args, code, errOut)
		}
	}
}

// TestCluster_UpStatusDown drives a one-node cluster through the CLI as a
// user would (root; under CI it must run).
func TestCluster_UpStatusDown(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root; CI must run it as root")
		}
		t.Skip("needs root")
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("etcd: %v", err)
		}
		t.Skip("etcd not installed")
	}
	bin := t.TempDir()
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/nodeagent", "./cmd/ambient-cni", "./cmd/sampleapp")
	build.Dir = strings.TrimSpace(string(root))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	state := filepath.Join(t.TempDir(), "state")
	cs := filepath.Join(t.TempDir(), "cluster.json")
	common := []string{"--state-dir", state, "--cluster-state", cs}
	t.Cleanup(func() { run(t, append([]string{"cluster", "down"}, common...)...) })

	out := mustRun(t, append([]string{"cluster", "up", "--nodes", "1", "--name", "amblcc", "--link-cidr", "172.30.202.0/24", "--bin-dir", bin}, common...)...)
	if !strings.Contains(out, "export KUBECONFIG="+filepath.Join(state, "kubeconfig")) {
		t.Errorf("up: %q lacks the export line", out)
	}
	out = mustRun(t, append([]string{"cluster", "status", "-o", "json"}, common...)...)
	var st struct {
		Server     string `json:"server"`
		Components []struct {
			Name  string `json:"name"`
			Alive bool   `json:"alive"`
		} `json:"components"`
		Nodes []struct {
			Name, IP, PodCIDR string
			Ready             bool
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if st.Server != "https://172.30.202.254:6443" || len(st.Components) != 6 ||
		len(st.Nodes) != 1 || !st.Nodes[0].Ready || st.Nodes[0].IP != "172.30.202.1" || st.Nodes[0].PodCIDR == "" {
		t.Errorf("status: %s", out)
	}
	for _, c := range st.Components {
		if !c.Alive {
			t.Errorf("component %s not running", c.Name)
		}
	}
	table := mustRun(t, append([]string{"cluster", "status"}, common...)...)
	if !strings.Contains(table, "amblcc-node-1  true") {
		t.Errorf("status table:\n%s", table)
	}
	mustRun(t, append([]string{"cluster", "down"}, common...)...)
	for _, p := range []string{state, cs, "/run/netns/amblcc-node-1", "/run/netns/amblcc-link", "/sys/class/net/amblcc-host"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after down (stat: %v)", p, err)
		}
	}
}
