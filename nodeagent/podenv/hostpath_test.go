package podenv

import (
	"os"
	"path/filepath"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestHostPathMap_MapsUnderTheRootExceptPassthrough(t *testing.T) {
	m := HostPathMap{Root: "/state/nodes/n1/root", Passthrough: DefaultHostPathPassthrough}
	for in, want := range map[string]string{
		"/var/run/ambient":           "/state/nodes/n1/root/var/run/ambient",
		"/var/run/ambient/":          "/state/nodes/n1/root/var/run/ambient",
		"/var/run/ambient/../x":      "/state/nodes/n1/root/var/run/x",
		"/etc/cni/net.d":             "/state/nodes/n1/root/etc/cni/net.d",
		"/":                          "/state/nodes/n1/root",
		"/var/run/netns":             "/var/run/netns",
		"/var/run/netns/x":           "/var/run/netns/x",
		"/run/netns":                 "/run/netns",
		"/proc":                      "/proc",
		"/proc/1/ns":                 "/proc/1/ns",
		"/sys/fs/bpf":                "/sys/fs/bpf",
		"/dev/net/tun":               "/dev/net/tun",
		"/lib/modules":               "/lib/modules",
		"/procfoo":                   "/state/nodes/n1/root/procfoo", // whole components only
		"/var/run/netnsx":            "/state/nodes/n1/root/var/run/netnsx",
		"/var/run/netns/../ambient2": "/state/nodes/n1/root/var/run/ambient2", // cleaned first
	} {
		if got := m.Map(in); got != want {
			t.Errorf("Map(%q) = %q, want %q", in, got, want)
		}
	}
	// No root: the real paths, passthrough or not.
	for _, p := range []string{"/var/run/ambient", "/proc"} {
		if got := (HostPathMap{Passthrough: DefaultHostPathPassthrough}).Map(p); got != p {
			t.Errorf("no root: Map(%q) = %q", p, got)
		}
	}
	// An empty passthrough maps everything.
	if got := (HostPathMap{Root: "/r"}).Map("/proc"); got != "/r/proc" {
		t.Errorf("no passthrough: Map(/proc) = %q", got)
	}
}

func TestHostPathMap_PrepareCreatesWhatTheTypeAsks(t *testing.T) {
	root := t.TempDir()
	m := HostPathMap{Root: root}
	dirType, fileType, plain := v1.HostPathDirectoryOrCreate, v1.HostPathFileOrCreate, v1.HostPathDirectory
	for _, hp := range []v1.HostPathVolumeSource{
		{Path: "/var/run/ambient", Type: &dirType},
		{Path: "/etc/app/config.txt", Type: &fileType},
		{Path: "/not/created", Type: &plain},
		{Path: "/not/created/either"},
	} {
		if err := m.prepare(&hp); err != nil {
			t.Fatalf("prepare %s: %v", hp.Path, err)
		}
	}
	if st, err := os.Stat(filepath.Join(root, "var/run/ambient")); err != nil || !st.IsDir() {
		t.Errorf("DirectoryOrCreate: %v", err)
	}
	if st, err := os.Stat(filepath.Join(root, "etc/app/config.txt")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("FileOrCreate: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "not")); !os.IsNotExist(err) {
		t.Errorf("Directory / unset types created something: %v", err)
	}
}

func TestMountPaths_HostPathFollowsTheMap(t *testing.T) {
	pod := &v1.Pod{Spec: v1.PodSpec{Volumes: []v1.Volume{
		{Name: "run", VolumeSource: v1.VolumeSource{HostPath: &v1.HostPathVolumeSource{Path: "/var/run/ambient"}}},
		{Name: "netns", VolumeSource: v1.VolumeSource{HostPath: &v1.HostPathVolumeSource{Path: "/var/run/netns"}}},
	}}}
	c := &v1.Container{VolumeMounts: []v1.VolumeMount{{Name: "run", MountPath: "/var/run/ambient"}, {Name: "netns", MountPath: "/var/run/netns"}}}
	pm, err := MountPaths(pod, c, "/pod/volumes", HostPathMap{Root: "/root1", Passthrough: DefaultHostPathPassthrough})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := pm.rewritePath("/var/run/ambient/ztunnel.sock"); got != "/root1/var/run/ambient/ztunnel.sock" {
		t.Errorf("socket maps to %q", got)
	}
	if got, _ := pm.rewritePath("/var/run/netns/x"); got != "/var/run/netns/x" {
		t.Errorf("netns maps to %q", got)
	}
}
