package cli_test

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestErrors_SayWhatToDo(t *testing.T) {
	kc := writeKubeconfig(t, "https://127.0.0.1:1", "gone")
	empty := filepath.Join(t.TempDir(), "none")
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"unreachable cluster names kubeconfig and context", []string{"ambient", "status", "--kubeconfig", kc},
			[]string{"cannot reach the Kubernetes API server https://127.0.0.1:1", "kubeconfig " + kc, `context "gone"`, "--kubeconfig / --context"}},
		{"unreachable cluster for zc", []string{"zc", "workloads", "--kubeconfig", kc},
			[]string{"cannot reach the Kubernetes API server", `context "gone"`}},
		{"unknown context", []string{"ambient", "status", "--kubeconfig", kc, "--context", "nope"},
			[]string{`context "nope"`, "--context"}},
		{"missing kubeconfig", []string{"ambient", "status", "--kubeconfig", empty},
			[]string{"reading kubeconfig " + empty}},
		{"enable needs -n", []string{"ambient", "enable", "--kubeconfig", kc},
			[]string{"-n NAMESPACE"}},
		{"-n and -A", []string{"zc", "workloads", "-n", "shop", "-A", "--kubeconfig", kc},
			[]string{"-n and -A"}},
		{"bad output format", []string{"zc", "workloads", "-o", "xml", "--kubeconfig", kc},
			[]string{"-o table, -o json or -o yaml"}},
		{"missing state file", []string{"zc", "workloads", "--cluster-state", empty},
			[]string{"cluster state " + empty, "cluster up"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := run(t, tc.args...)
			if code == 0 {
				t.Fatalf("exit 0, want failure")
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q lacks %q", errOut, w)
				}
			}
		})
	}
}
