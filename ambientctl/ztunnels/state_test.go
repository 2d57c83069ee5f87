package ztunnels_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/ambientmesh/ambient/ambientctl/ztunnels"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestState_WriteThenLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ambient", "cluster.json")
	want := &ztunnels.ClusterState{Name: "ambient-local", Server: "https://127.0.0.1:6443",
		Nodes: []ztunnels.StateNode{{Name: "node-1", Netns: "/run/netns/n1", IP: "172.30.0.1"}}}
	if err := ztunnels.WriteState(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := ztunnels.LoadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != want.Name || len(got.Nodes) != 1 || got.Nodes[0] != want.Nodes[0] {
		t.Errorf("loaded %+v, want %+v", got, want)
	}
	if !got.Describes("https://127.0.0.1:6443/") || got.Describes("https://127.0.0.1:6444") || got.Describes("") {
		t.Error("Describes matches the wrong servers")
	}
}

func TestState_RefusesBrokenFiles(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"no server":      `{"nodes":[]}`,
		"node no netns":  `{"server":"https://x","nodes":[{"name":"n1"}]}`,
		"duplicate node": `{"server":"https://x","nodes":[{"name":"n1","netns":"/a"},{"name":"n1","netns":"/b"}]}`,
		"unknown field":  `{"server":"https://x","nodes":[],"extra":1}`,
		"not json":       `nodes: []`,
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		os.WriteFile(path, []byte(body), 0o600)
		if _, err := ztunnels.LoadState(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: LoadState = %v, want an error naming the file", name, err)
		}
	}
	if _, err := ztunnels.LoadState(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
}

func TestDefaultStatePath(t *testing.T) {
	t.Setenv("AMBIENT_CLUSTER_STATE", "")
	t.Setenv("XDG_STATE_HOME", "/x/state")
	if p := ztunnels.DefaultStatePath(); p != "/x/state/ambient/cluster.json" {
		t.Errorf("with XDG_STATE_HOME: %s", p)
	}
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if p := ztunnels.DefaultStatePath(); p != "/home/u/.local/state/ambient/cluster.json" {
		t.Errorf("default: %s", p)
	}
	t.Setenv("AMBIENT_CLUSTER_STATE", "/etc/c.json")
	if p := ztunnels.DefaultStatePath(); p != "/etc/c.json" {
		t.Errorf("with AMBIENT_CLUSTER_STATE: %s", p)
	}
}
