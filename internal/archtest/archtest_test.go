// Package archtest holds tests of the repository's shape: every package is
// documented, and the dependency rules of docs/architecture.md hold.
package archtest

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Doc        string
	Name       string
	Deps       []string
	GoFiles    []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "-deps=false", "github.com/ambientmesh/ambient/...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no packages")
	}
	return pkgs
}

func TestEveryPackageHasDocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if len(p.GoFiles) > 0 && strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment", p.ImportPath)
		}
	}
}

// TestDependencyRules: the data plane gets all config over xDS, never from
// Kubernetes; the control plane never links the data plane.
func TestDependencyRules(t *testing.T) {
	const mod = "github.com/ambientmesh/ambient/"
	rules := []struct {
		prefix    string
		forbidden []string
	}{
		{mod + "ztunnel", []string{"k8s.io/client-go", "k8s.io/apimachinery"}},
		{mod + "waypoint", []string{"k8s.io/client-go", "k8s.io/apimachinery"}},
		{mod + "internal/hbone", []string{"k8s.io/"}},
		{mod + "istiod-lite", []string{mod + "ztunnel", mod + "waypoint"}},
	}
	for _, p := range listPackages(t) {
		for _, r := range rules {
			if !strings.HasPrefix(p.ImportPath, r.prefix) {
				continue
			}
			for _, d := range p.Deps {
				for _, f := range r.forbidden {
					if strings.HasPrefix(d, f) {
						t.Errorf("%s depends on %s", p.ImportPath, d)
					}
				}
			}
		}
	}
}
