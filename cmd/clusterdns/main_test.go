package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambientmesh/ambient/nodeagent/images"
)

func TestParseFlags_DefaultsAndErrors(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := options{listen: ":53", domain: "cluster.local", readyAddr: ":8181", metricsAddr: ":9153"}
	if o != want {
		t.Errorf("defaults %+v, want %+v", o, want)
	}
	if _, err := parseFlags([]string{"extra"}, io.Discard); err == nil || !strings.Contains(err.Error(), "unexpected arguments") {
		t.Errorf("extra argument: %v", err)
	}
	o, err = parseFlags([]string{"--listen=127.0.0.1:5353", "--domain=example.local", "--kubeconfig=/k"}, io.Discard)
	if err != nil || o.listen != "127.0.0.1:5353" || o.domain != "example.local" || o.kubeconfig != "/k" {
		t.Errorf("flags: %+v %v", o, err)
	}
}

func TestRun_BadKubeconfigSaysWhatToDo(t *testing.T) {
	err := run(context.Background(), []string{"--kubeconfig=/nonexistent"}, io.Discard, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "pass --kubeconfig") {
		t.Errorf("run: %v", err)
	}
}

func TestRun_BadDomainIsRefused(t *testing.T) {
	// The domain is checked once the client is built: a minimal kubeconfig.
	dir := t.TempDir()
	kc := dir + "/kubeconfig"
	if err := writeFile(kc, "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {token: t}\n"); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"--kubeconfig=" + kc, "--domain=bad..domain"}, io.Discard, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "bad domain") {
		t.Errorf("run: %v", err)
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

// TestManifest_RunsThisBinaryAsKubeDNS checks manifests/cluster/clusterdns.yaml
// against the binary: its args parse, its image is in the node agent's
// table, its probe hits /ready on --ready-addr, and the kube-dns Service
// sits at 10.96.0.10 with 53/UDP and 53/TCP.
func TestManifest_RunsThisBinaryAsKubeDNS(t *testing.T) {
	b, err := os.ReadFile("../../manifests/cluster/clusterdns.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var dep appsv1.Deployment
	var svc corev1.Service
	var role rbacv1.ClusterRole
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		var into any
		switch meta.Kind {
		case "Deployment":
			into = &dep
		case "Service":
			into = &svc
		case "ClusterRole":
			into = &role
		default:
			continue
		}
		if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
			t.Fatalf("%s: %v", meta.Kind, err)
		}
	}
	if len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("deployment containers: %+v", dep.Spec.Template.Spec.Containers)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	o, err := parseFlags(c.Args, io.Discard)
	if err != nil {
		t.Fatalf("manifest args %q: %v", c.Args, err)
	}
	if _, err := (images.Table{Images: images.Default, BaseDir: "/bin"}).Resolve(c.Image, c.Command, c.Args); err != nil {
		t.Errorf("image %s: %v", c.Image, err)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/ready" || ":"+p.HTTPGet.Port.String() != o.readyAddr {
		t.Errorf("readiness probe %+v, want /ready on %s", p, o.readyAddr)
	}
	if svc.Namespace != "kube-system" || svc.Name != "kube-dns" || svc.Spec.ClusterIP != "10.96.0.10" {
		t.Errorf("service %s/%s clusterIP %s", svc.Namespace, svc.Name, svc.Spec.ClusterIP)
	}
	ports := map[string]bool{}
	for _, p := range svc.Spec.Ports {
		ports[fmt.Sprintf("%d/%s", p.Port, p.Protocol)] = true
	}
	if !ports["53/UDP"] || !ports["53/TCP"] || o.listen != ":53" {
		t.Errorf("service ports %v, listen %s", ports, o.listen)
	}
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("service selector %v does not select the pods %v", svc.Spec.Selector, dep.Spec.Template.Labels)
		}
	}
	want := map[string]bool{"/services": false, "discovery.k8s.io/endpointslices": false}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				if _, ok := want[g+"/"+res]; ok && strings.Contains(strings.Join(r.Verbs, ","), "list") && strings.Contains(strings.Join(r.Verbs, ","), "watch") {
					want[g+"/"+res] = true
				}
			}
		}
	}
	for k, ok := range want {
		if !ok {
			t.Errorf("ClusterRole lacks list/watch on %s", k)
		}
	}
}
