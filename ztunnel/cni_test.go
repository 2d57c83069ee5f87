package ztunnel

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/certs"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/ztunnel/cniserver"
)

// TestZtunnel_PodArrivesThroughTheCNIPlugin runs the ambient-cni binary as
// a container runtime would: its ADD hands the pod's namespace to ztunnel,
// which captures and serves the pod; its DEL takes the pod away again.
func TestZtunnel_PodArrivesThroughTheCNIPlugin(t *testing.T) {
	testenv.RequireRoot(t)
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 1, PodsPerNode: 1})
	pod := topo.Pod(1, 1)
	dir := t.TempDir()
	plugin := filepath.Join(dir, "ambient-cni")
	if out, err := exec.Command("go", "build", "-o", plugin, "../cmd/ambient-cni").CombinedOutput(); err != nil {
		t.Fatalf("build ambient-cni: %v\n%s", err, out)
	}

	store := state.NewStore()
	if err := store.Replace(state.Snapshot{Workloads: []*workloadapi.Workload{{
		Uid: "Kubernetes//Pod/shop/web-0", Name: "web-0", Namespace: "shop", ServiceAccount: "web", Node: "node-1",
		Addresses: [][]byte{pod.IP.AsSlice()}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
		Status: workloadapi.WorkloadStatus_HEALTHY,
	}}}); err != nil {
		t.Fatal(err)
	}
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cm, err := certs.New(certs.Config{Sign: certs.LocalSigner(authority, time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()
	z, err := New(Config{Node: "node-1", Store: store, Certs: cm, DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	socket, stateDir := filepath.Join(dir, "ztunnel.sock"), filepath.Join(dir, "pods")
	cni, err := cniserver.New(cniserver.Config{SocketPath: socket, StateDir: stateDir, Pods: z})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { z.Run(ctx); done <- struct{}{} }()
	go func() { cni.Run(ctx); done <- struct{}{} }()
	defer func() { cancel(); <-done; <-done }()
	waitFor(t, "CNI socket", func() bool { _, err := os.Stat(socket); return err == nil })

	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambient-cni",
	 "ztunnelSocket": %q, "stateDir": %q,
	 "prevResult": {"cniVersion": "1.0.0",
	   "interfaces": [{"name": "p1"}, {"name": "eth0", "sandbox": %q}],
	   "ips": [{"address": "%s/32", "interface": 1}]}}`, socket, stateDir, pod.Path, pod.IP)
	cniCall := func(command string) {
		cmd := exec.Command(plugin)
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=sandbox-1", "CNI_NETNS=" + pod.Path,
			"CNI_IFNAME=eth0", "CNI_PATH=" + dir,
			"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=7b9d1c3e-0000-4000-8000-000000000001"}
		cmd.Stdin = bytes.NewReader([]byte(conf))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("CNI %s: %v\n%s", command, err, out)
		}
	}

	cniCall("ADD")
	waitFor(t, "pod served and captured", func() bool {
		return slices.Contains(z.Pods(), "Kubernetes//Pod/shop/web-0") && captured(t, pod) && z.Ready()
	})
	cniCall("DEL")
	// The CNI server closes its descriptor of the namespace at once; ztunnel
	// holds its own, so it still removes every rule.
	waitFor(t, "pod released and its rules removed", func() bool { return len(z.Pods()) == 0 && !captured(t, pod) })
}
