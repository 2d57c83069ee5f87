package localcluster

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestWriteStatus_Golden(t *testing.T) {
	s := &Status{
		Name: "ambient", Server: "https://172.30.0.254:6443", Kubeconfig: "/s/kubeconfig",
		Components: []ComponentStatus{{Name: "etcd", Pid: 10, Alive: true}, {Name: "kube-proxy-ambient-node-2", Pid: 12}},
		Nodes: []NodeStatus{
			{Name: "ambient-node-1", IP: "172.30.0.1", Netns: "/run/netns/ambient-node-1", Ready: true, PodCIDR: "10.244.0.0/24"},
			{Name: "ambient-node-2", Netns: "/run/netns/ambient-node-2"},
		},
		APIError: "connection refused",
	}
	if s.Healthy() {
		t.Error("Healthy with an exited component and a node not Ready")
	}
	var b bytes.Buffer
	if err := WriteStatus(&b, s); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "status.golden.txt")
	if *update {
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if d := cmp.Diff(string(want), b.String()); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}
