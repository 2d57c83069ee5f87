package podenv

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPathMap_RewritesMountedPathsOnly(t *testing.T) {
	pm := NewPathMap([]Mapping{
		{MountPath: "/var/run/secrets", HostPath: "/s/a"},
		{MountPath: "/var/run/secrets/tokens", HostPath: "/s/tok"},
	})
	for in, want := range map[string]string{
		"/var/run/secrets/tokens/istio-token": "/s/tok/istio-token",
		"/var/run/secrets/kubernetes.io/ca":   "/s/a/kubernetes.io/ca",
		"/var/run/secrets":                    "/s/a",
		"--token=/var/run/secrets/tokens/t":   "--token=/s/tok/t",
		"/var/run/secretsx/y":                 "/var/run/secretsx/y",
		"relative/var/run/secrets":            "relative/var/run/secrets",
		"--listen=:8080":                      "--listen=:8080",
		"/etc/other":                          "/etc/other",
	} {
		if got := pm.Rewrite(in); got != want {
			t.Errorf("Rewrite(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestExpand_KubernetesVariableSyntax(t *testing.T) {
	vars := map[string]string{"A": "x", "B": "y"}
	for in, want := range map[string]string{
		"$(A)-$(B)":  "x-y",
		"$(C)":       "$(C)",
		"$$(A)":      "$(A)",
		"a$b":        "a$b",
		"$(A":        "$(A",
		"plain":      "plain",
		"--p=$(A)/z": "--p=x/z",
	} {
		if got := expand(in, vars); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

type fakeLookups map[string]map[string]string

func (f fakeLookups) ConfigMapData(ns, name string) (map[string]string, bool, error) {
	d, ok := f["cm/"+name]
	return d, ok, nil
}
func (f fakeLookups) SecretData(ns, name string) (map[string]string, bool, error) {
	d, ok := f["secret/"+name]
	return d, ok, nil
}
func (f fakeLookups) ConfigMapKey(ns, name, key string) (string, bool, error) {
	v, ok := f["cm/"+name][key]
	return v, ok, nil
}
func (f fakeLookups) SecretKey(ns, name, key string) (string, bool, error) {
	v, ok := f["secret/"+name][key]
	return v, ok, nil
}

func TestBuildEnv_DownwardAPIAndReferences(t *testing.T) {
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u1", Labels: map[string]string{"app": "a"}},
		Spec:       v1.PodSpec{NodeName: "node-1", ServiceAccountName: "sa"},
	}
	field := func(p string) *v1.EnvVarSource {
		return &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: p}}
	}
	c := &v1.Container{
		Name:    "c",
		EnvFrom: []v1.EnvFromSource{{Prefix: "CM_", ConfigMapRef: &v1.ConfigMapEnvSource{LocalObjectReference: v1.LocalObjectReference{Name: "cfg"}}}},
		Env: []v1.EnvVar{
			{Name: "POD", ValueFrom: field("metadata.name")},
			{Name: "NS", ValueFrom: field("metadata.namespace")},
			{Name: "NODE", ValueFrom: field("spec.nodeName")},
			{Name: "IP", ValueFrom: field("status.podIP")},
			{Name: "APP", ValueFrom: field("metadata.labels['app']")},
			{Name: "SA", ValueFrom: field("spec.serviceAccountName")},
			{Name: "ADDR", Value: "$(IP):8080"},
			{Name: "PASS", ValueFrom: &v1.EnvVarSource{SecretKeyRef: &v1.SecretKeySelector{
				LocalObjectReference: v1.LocalObjectReference{Name: "s"}, Key: "pw"}}},
			{Name: "MEM", ValueFrom: &v1.EnvVarSource{ResourceFieldRef: &v1.ResourceFieldSelector{
				Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
			{Name: "TOKEN", Value: "/var/run/secrets/tokens/t"},
		},
	}
	in := Input{
		Pod: pod, PodIPs: []string{"10.244.1.5"}, HostIP: "172.30.0.1",
		NodeMem:  resource.MustParse("8Gi"),
		Lookups:  fakeLookups{"cm/cfg": {"K": "v"}, "secret/s": {"pw": "hunter2"}},
		PodRoot:  "/state/pod/volumes",
		PathsMap: NewPathMap([]Mapping{{MountPath: "/var/run/secrets/tokens", HostPath: "/state/pod/volumes/tok"}}),
	}
	env, err := BuildEnv(in, c)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = v
	}
	want := map[string]string{
		"POD": "p", "NS": "ns", "NODE": "node-1", "IP": "10.244.1.5", "APP": "a", "SA": "sa",
		"ADDR": "10.244.1.5:8080", "PASS": "hunter2", "MEM": "8192", "CM_K": "v",
		"TOKEN": "/state/pod/volumes/tok/t", "HOSTNAME": "p", PodRootEnv: "/state/pod/volumes",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	c.Env = append(c.Env, v1.EnvVar{Name: "X", ValueFrom: &v1.EnvVarSource{ConfigMapKeyRef: &v1.ConfigMapKeySelector{
		LocalObjectReference: v1.LocalObjectReference{Name: "missing"}, Key: "k"}}})
	if _, err := BuildEnv(in, c); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing configmap: err %v", err)
	}
}
