package manifests_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// installScript returns the node agent's script as deployed (from the
// rendered ConfigMap the DaemonSet mounts and runs) and the agent's
// container.
func installScript(t *testing.T) (string, corev1.Container) {
	t.Helper()
	r := render(t, installDir)
	ds := daemonSet(t, r, system, "ambient-cni-node")
	c := ds.Spec.Template.Spec.Containers[0]
	if len(c.Command) != 2 || c.Command[0] != "/bin/sh" {
		t.Fatalf("command %q, want /bin/sh <script>", c.Command)
	}
	v, m := mountFor(t, ds.Spec.Template.Spec, c, c.Command[1])
	if v.ConfigMap == nil {
		t.Fatalf("%s is not from a ConfigMap: %+v", c.Command[1], v)
	}
	cm := into[corev1.ConfigMap](t, r.find(t, "ConfigMap", system, v.ConfigMap.Name))
	script, ok := cm.Data[strings.TrimPrefix(c.Command[1], m.MountPath+"/")]
	if !ok {
		t.Fatalf("ConfigMap %s has no key for %s", cm.Name, c.Command[1])
	}
	return script, c
}

// runInstall runs the script once with the node's directories under root.
func runInstall(t *testing.T, script, root string, env []string, args ...string) (string, error) {
	t.Helper()
	path := filepath.Join(root, "install-cni.sh")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", append([]string{path}, args...)...)
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"CNI_BIN_DIR=" + filepath.Join(root, "bin"),
		"CNI_NET_DIR=" + filepath.Join(root, "net.d"),
		"PLUGIN_SRC=" + filepath.Join(root, "plugin"),
		"READY_FILE=" + filepath.Join(root, "ready"),
		"ONCE=1",
	}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

type conflist struct {
	CNIVersion string           `json:"cniVersion"`
	Name       string           `json:"name"`
	Plugins    []map[string]any `json:"plugins"`
}

func readConflist(t *testing.T, path string) conflist {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c conflist
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, b)
	}
	return c
}

func TestInstallCNI_ChainsPluginIntoPrimaryConfig(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("jq not installed (Debian package jq)")
		}
		t.Skip("jq not installed")
	}
	script, agent := installScript(t)
	var env []string
	for _, e := range agent.Env {
		if e.Name == "ZTUNNEL_SOCKET" || e.Name == "STATE_DIR" {
			env = append(env, e.Name+"="+e.Value)
		}
	}
	ztunnel := daemonSet(t, render(t, installDir), system, "ztunnel").Spec.Template.Spec.Containers[0]
	wantEntry := map[string]any{
		"type":           "ambient-cni",
		"ztunnelSocket":  flagValue(ztunnel.Args, "cni-socket"),
		"stateDir":       flagValue(ztunnel.Args, "cni-state-dir"),
		"ztunnelTimeout": "2s",
	}

	for _, tc := range []struct {
		name, file, content, wantFile string
		wantPlugins                   []string
	}{
		{"conflist", "10-ptp.conflist",
			`{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"ptp","ipam":{"type":"host-local"}},{"type":"portmap"}]}`,
			"10-ptp.conflist", []string{"ptp", "portmap", "ambient-cni"}},
		{"single plugin conf becomes a conflist", "10-bridge.conf",
			`{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"bridge","ipam":{"type":"host-local"}}`,
			"10-bridge.conflist", []string{"bridge", "ambient-cni"}},
		{"stale entry is replaced, not duplicated", "05-cilium.conflist",
			`{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"ambient-cni","ztunnelSocket":"/old.sock"},{"type":"cilium-cni"}]}`,
			"05-cilium.conflist", []string{"cilium-cni", "ambient-cni"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, d := range []string{"bin", "net.d"} {
				os.Mkdir(filepath.Join(root, d), 0o755)
			}
			os.WriteFile(filepath.Join(root, "plugin"), []byte("#!/bin/true\n"), 0o755)
			// A later file is not the primary configuration and stays untouched.
			later := filepath.Join(root, "net.d", "99-later.conflist")
			os.WriteFile(later, []byte(`{"name":"later","plugins":[{"type":"x"}]}`), 0o644)
			os.WriteFile(filepath.Join(root, "net.d", tc.file), []byte(tc.content), 0o644)

			if out, err := runInstall(t, script, root, env); err != nil {
				t.Fatalf("install: %v\n%s", err, out)
			}
			got := readConflist(t, filepath.Join(root, "net.d", tc.wantFile))
			var types []string
			for _, p := range got.Plugins {
				types = append(types, p["type"].(string))
			}
			if strings.Join(types, ",") != strings.Join(tc.wantPlugins, ",") || got.Name == "" || got.CNIVersion != "1.0.0" {
				t.Fatalf("conflist %+v, want plugins %v", got, tc.wantPlugins)
			}
			last, _ := json.Marshal(got.Plugins[len(got.Plugins)-1])
			want, _ := json.Marshal(wantEntry)
			if string(last) != string(want) {
				t.Errorf("entry %s, want %s (ztunnel's socket and state dir)", last, want)
			}
			if tc.wantFile != tc.file {
				if _, err := os.Stat(filepath.Join(root, "net.d", tc.file)); !os.IsNotExist(err) {
					t.Errorf("%s still exists next to %s (%v)", tc.file, tc.wantFile, err)
				}
			}
			if b, _ := os.ReadFile(later); string(b) != `{"name":"later","plugins":[{"type":"x"}]}` {
				t.Errorf("non-primary config changed: %s", b)
			}
			if b, err := os.ReadFile(filepath.Join(root, "bin", "ambient-cni")); err != nil || string(b) != "#!/bin/true\n" {
				t.Errorf("plugin binary: %q %v", b, err)
			}
			if _, err := os.Stat(filepath.Join(root, "ready")); err != nil {
				t.Errorf("ready file: %v", err)
			}

			// Idempotent: a second run rewrites nothing.
			before, _ := os.Stat(filepath.Join(root, "net.d", tc.wantFile))
			if out, err := runInstall(t, script, root, env); err != nil || strings.Contains(out, "chained") || strings.Contains(out, "installed") {
				t.Errorf("second install changed something: %v\n%s", err, out)
			}
			after, _ := os.Stat(filepath.Join(root, "net.d", tc.wantFile))
			if !after.ModTime().Equal(before.ModTime()) {
				t.Error("second install rewrote the config")
			}

			// Uninstall removes the entry and the binary, and nothing else.
			if out, err := runInstall(t, script, root, env, "uninstall"); err != nil {
				t.Fatalf("uninstall: %v\n%s", err, out)
			}
			got = readConflist(t, filepath.Join(root, "net.d", tc.wantFile))
			if n := len(got.Plugins); n != len(tc.wantPlugins)-1 || got.Plugins[n-1]["type"] == "ambient-cni" {
				t.Errorf("after uninstall: %+v", got)
			}
			if _, err := os.Stat(filepath.Join(root, "bin", "ambient-cni")); !os.IsNotExist(err) {
				t.Errorf("binary still installed: %v", err)
			}
		})
	}

	t.Run("waits for the network plugin's config", func(t *testing.T) {
		root := t.TempDir()
		os.Mkdir(filepath.Join(root, "bin"), 0o755)
		os.Mkdir(filepath.Join(root, "net.d"), 0o755)
		os.WriteFile(filepath.Join(root, "plugin"), []byte("x"), 0o755)
		out, err := runInstall(t, script, root, env)
		if err == nil || !strings.Contains(out, "waiting for the cluster's network plugin") {
			t.Errorf("with no config: %v %s, want a failure saying it waits", err, out)
		}
		if entries, _ := os.ReadDir(filepath.Join(root, "net.d")); len(entries) != 0 {
			t.Errorf("created %v; it must never create the primary config", entries)
		}
		if _, err := os.Stat(filepath.Join(root, "ready")); !os.IsNotExist(err) {
			t.Errorf("ready before installed: %v", err)
		}
	})
}
