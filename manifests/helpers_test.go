package manifests_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/ambientmesh/ambient/internal/kubetest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// kubectlBin returns the kubectl hack/build-k8s.sh caches; it skips the
// test when it is missing, or fails it under CI.
func kubectlBin(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache")
	}
	bin := filepath.Join(cache, "ambient", "k8s", kubetest.Version, "kubectl")
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("kubectl %s not built (%v); run hack/build-k8s.sh", kubetest.Version, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// rendered is the output of kubectl kustomize for one directory.
type rendered struct {
	yaml []byte
	objs []*unstructured.Unstructured
}

var (
	renderMu    sync.Mutex
	renderCache = map[string]*rendered{}
)

// render runs kubectl kustomize dir (once per test binary) and decodes the
// objects.
func render(t *testing.T, dir string) *rendered {
	t.Helper()
	renderMu.Lock()
	defer renderMu.Unlock()
	if r, ok := renderCache[dir]; ok {
		return r
	}
	cmd := exec.Command(kubectlBin(t), "kustomize", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v: %s", dir, err, stderr.Bytes())
	}
	r := &rendered{yaml: out}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 1<<20)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode kubectl kustomize %s: %v", dir, err)
		}
		if len(u.Object) > 0 {
			r.objs = append(r.objs, u)
		}
	}
	renderCache[dir] = r
	return r
}

// find returns the object of kind in namespace ns named name, or fails t.
func (r *rendered) find(t *testing.T, kind, ns, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range r.objs {
		if o.GetKind() == kind && o.GetNamespace() == ns && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s/%s in the rendered manifests", kind, ns, name)
	return nil
}

func (r *rendered) ofKind(kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range r.objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// into converts u to a typed object.
func into[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	b, err := yaml.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	v := new(T)
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		t.Fatalf("%s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return v
}

func deployment(t *testing.T, r *rendered, ns, name string) *appsv1.Deployment {
	t.Helper()
	return into[appsv1.Deployment](t, r.find(t, "Deployment", ns, name))
}

func daemonSet(t *testing.T, r *rendered, ns, name string) *appsv1.DaemonSet {
	t.Helper()
	return into[appsv1.DaemonSet](t, r.find(t, "DaemonSet", ns, name))
}

func service(t *testing.T, r *rendered, ns, name string) *corev1.Service {
	t.Helper()
	return into[corev1.Service](t, r.find(t, "Service", ns, name))
}

// podSpecs returns every pod template of the rendered Deployments and
// DaemonSets, keyed "Kind ns/name".
func podSpecs(t *testing.T, r *rendered) map[string]corev1.PodTemplateSpec {
	t.Helper()
	out := map[string]corev1.PodTemplateSpec{}
	for _, o := range r.ofKind("Deployment") {
		out["Deployment "+o.GetNamespace()+"/"+o.GetName()] = into[appsv1.Deployment](t, o).Spec.Template
	}
	for _, o := range r.ofKind("DaemonSet") {
		out["DaemonSet "+o.GetNamespace()+"/"+o.GetName()] = into[appsv1.DaemonSet](t, o).Spec.Template
	}
	return out
}

// flagValue returns the value of --name=value in args ("" if absent); the
// manifests always use the --name=value form, which TestManifests_FlagForm
// checks.
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

func flagValues(args []string, name string) []string {
	var out []string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

// port returns the port of a listen address such as ":15012".
func port(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return int32(n)
}

func urlPort(t *testing.T, raw string) (host string, p int32) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Hostname(), port(t, u.Host)
}

func envValue(c corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

// mountFor returns the volume, and its mount, under which file lies in c
// (the longest mount path that is a prefix of the file's directory).
func mountFor(t *testing.T, spec corev1.PodSpec, c corev1.Container, file string) (corev1.Volume, corev1.VolumeMount) {
	t.Helper()
	dir := filepath.Dir(file)
	var best *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if (dir == m.MountPath || strings.HasPrefix(dir, m.MountPath+"/")) && (best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		t.Fatalf("container %s mounts nothing at %s (for %s)", c.Name, dir, file)
	}
	for _, v := range spec.Volumes {
		if v.Name == best.Name {
			return v, *best
		}
	}
	t.Fatalf("mount %s names no volume", best.Name)
	return corev1.Volume{}, corev1.VolumeMount{}
}

// goldenCompare compares got with testdata/name, or rewrites it with -update.
func goldenCompare(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./manifests/ -run %s -update)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("rendered manifests differ from %s; review the change, then run go test ./manifests/ -run %s -update\n%s",
			path, t.Name(), firstDiff(string(want), string(got)))
	}
}

// firstDiff shows the first differing line.
func firstDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(wl) || i < len(gl); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\n  golden:   %q\n  rendered: %q", i+1, w, g)
		}
	}
	return ""
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// buildBinaries builds the binaries the manifests run into one directory
// (once per test binary).
func buildBinaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "manifests-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/ztunnel", "./cmd/istiod-lite", "./cmd/sampleapp", "./cmd/ambient-cni")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}
