// Package podenv prepares what a container process gets in place of a
// container's filesystem and environment on a simulated node: its
// environment (Kubernetes' env and envFrom, $(VAR) expansion, downward API
// fieldRef and resourceFieldRef, ConfigMap and Secret keys), its volumes
// as files under the pod's directory (VolumeWriter), and the mapping of
// its mount paths to those files (PathMap).
//
// Volumes are not mounted in the container's mount namespace (which
// holds only its resolv.conf, see package nodeagent): a volume mounted at
// /var/run/secrets/tokens
// lives in <pod-dir>/volumes/<volume>, and every argument and environment
// value naming a path under a mount path (as the whole value, or after a
// flag's '=') is rewritten to the host path before the process starts. A
// program that derives paths itself finds the volume directory in
// $AMBIENT_POD_VOLUMES.
package podenv

import (
	"fmt"
	"math"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// PodRootEnv names the environment variable that holds a container's
// volume directory, <state-dir>/pods/<ns>_<name>_<uid>/volumes: a process
// that derives paths itself can map a mount path through it.
const PodRootEnv = "AMBIENT_POD_VOLUMES"

// PathMap maps a container's mount paths to host directories (see the
// package comment).
type PathMap []Mapping

// Mapping is one mount: a path in the container and its host directory.
type Mapping struct {
	MountPath string // in the container, cleaned, e.g. /var/run/secrets/tokens
	HostPath  string
}

// NewPathMap builds a map; it orders the mappings longest mount path first.
func NewPathMap(m []Mapping) PathMap {
	pm := append(PathMap(nil), m...)
	sort.SliceStable(pm, func(i, j int) bool { return len(pm[i].MountPath) > len(pm[j].MountPath) })
	return pm
}

// Rewrite maps s as described on PathMap.
func (pm PathMap) Rewrite(s string) string {
	if r, ok := pm.rewritePath(s); ok {
		return r
	}
	if i := strings.IndexByte(s, '='); i >= 0 {
		if r, ok := pm.rewritePath(s[i+1:]); ok {
			return s[:i+1] + r
		}
	}
	return s
}

func (pm PathMap) rewritePath(p string) (string, bool) {
	for _, m := range pm {
		if p == m.MountPath {
			return m.HostPath, true
		}
		if rest, ok := strings.CutPrefix(p, m.MountPath+"/"); ok {
			return m.HostPath + "/" + rest, true
		}
	}
	return "", false
}

// Lookups fetch ConfigMap and Secret keys for env; ok is false for a
// missing object or key.
type Lookups interface {
	ConfigMapKey(ns, name, key string) (string, bool, error)
	SecretKey(ns, name, key string) (string, bool, error)
	ConfigMapData(ns, name string) (map[string]string, bool, error)
	SecretData(ns, name string) (map[string]string, bool, error)
}

// Input is what a container's environment is computed from.
type Input struct {
	Pod      *v1.Pod
	PodIPs   []string
	HostIP   string
	NodeCPU  resource.Quantity // node allocatable, for limits left unset
	NodeMem  resource.Quantity
	Lookups  Lookups
	BaseEnv  []string // set first, overridable
	PodRoot  string
	PathsMap PathMap
}

// BuildEnv computes a container's environment like a kubelet: envFrom,
// then env in order with $(VAR) expansion over the variables defined so
// far, downward-API fieldRef and resourceFieldRef, ConfigMap and Secret
// keys; values naming mounted paths are rewritten by the path map.
func BuildEnv(in Input, c *v1.Container) ([]string, error) {
	pod := in.Pod
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	for _, kv := range in.BaseEnv {
		k, v, _ := strings.Cut(kv, "=")
		set(k, v)
	}
	set("HOSTNAME", pod.Name)
	set(PodRootEnv, in.PodRoot)
	for _, ef := range c.EnvFrom {
		var data map[string]string
		var ok bool
		var err error
		optional := false
		switch {
		case ef.ConfigMapRef != nil:
			optional = ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional
			data, ok, err = in.Lookups.ConfigMapData(pod.Namespace, ef.ConfigMapRef.Name)
			if err == nil && !ok && !optional {
				err = fmt.Errorf("configmap %q not found", ef.ConfigMapRef.Name)
			}
		case ef.SecretRef != nil:
			optional = ef.SecretRef.Optional != nil && *ef.SecretRef.Optional
			data, ok, err = in.Lookups.SecretData(pod.Namespace, ef.SecretRef.Name)
			if err == nil && !ok && !optional {
				err = fmt.Errorf("secret %q not found", ef.SecretRef.Name)
			}
		}
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			set(ef.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		var v string
		switch {
		case e.ValueFrom == nil:
			v = expand(e.Value, vars)
		case e.ValueFrom.FieldRef != nil:
			var err error
			if v, err = fieldRef(in, e.ValueFrom.FieldRef.FieldPath); err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
		case e.ValueFrom.ResourceFieldRef != nil:
			var err error
			if v, err = resourceFieldRef(in, c, e.ValueFrom.ResourceFieldRef); err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			r := e.ValueFrom.ConfigMapKeyRef
			val, ok, err := in.Lookups.ConfigMapKey(pod.Namespace, r.Name, r.Key)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			if !ok {
				if r.Optional != nil && *r.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: configmap %s key %q not found", e.Name, r.Name, r.Key)
			}
			v = val
		case e.ValueFrom.SecretKeyRef != nil:
			r := e.ValueFrom.SecretKeyRef
			val, ok, err := in.Lookups.SecretKey(pod.Namespace, r.Name, r.Key)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			if !ok {
				if r.Optional != nil && *r.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: secret %s key %q not found", e.Name, r.Name, r.Key)
			}
			v = val
		default:
			return nil, fmt.Errorf("env %s: unsupported valueFrom", e.Name)
		}
		set(e.Name, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+in.PathsMap.Rewrite(vars[k]))
	}
	return out, nil
}

// ExpandArgs applies $(VAR) expansion over env and the path map to args.
func ExpandArgs(args []string, env []string, pm PathMap) []string {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = pm.Rewrite(expand(a, vars))
	}
	return out
}

// expand implements Kubernetes' $(VAR) syntax: $(VAR) is replaced when VAR
// is defined and kept as is otherwise; $$ escapes a '$'.
func expand(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// fieldRef resolves the downward API's pod fields.
func fieldRef(in Input, path string) (string, error) {
	pod := in.Pod
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return in.HostIP, nil
	case "status.podIP":
		if len(in.PodIPs) > 0 {
			return in.PodIPs[0], nil
		}
		return "", nil
	case "status.podIPs":
		return strings.Join(in.PodIPs, ","), nil
	}
	for _, m := range []struct {
		prefix string
		src    map[string]string
	}{{"metadata.labels['", pod.Labels}, {"metadata.annotations['", pod.Annotations}} {
		if key, ok := strings.CutPrefix(path, m.prefix); ok && strings.HasSuffix(key, "']") {
			return m.src[strings.TrimSuffix(key, "']")], nil
		}
	}
	switch path {
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, m[k])
	}
	return b.String()
}

// resourceFieldRef resolves limits/requests of cpu, memory and
// ephemeral-storage like a kubelet: an unset limit is the node's
// allocatable; values are divided by the divisor and rounded up.
func resourceFieldRef(in Input, c *v1.Container, r *v1.ResourceFieldSelector) (string, error) {
	if r.ContainerName != "" && r.ContainerName != c.Name {
		for i := range in.Pod.Spec.Containers {
			if in.Pod.Spec.Containers[i].Name == r.ContainerName {
				c = &in.Pod.Spec.Containers[i]
			}
		}
	}
	kind, res, ok := strings.Cut(r.Resource, ".")
	if !ok {
		return "", fmt.Errorf("unsupported resourceFieldRef %q", r.Resource)
	}
	var list v1.ResourceList
	switch kind {
	case "limits":
		list = c.Resources.Limits
	case "requests":
		list = c.Resources.Requests
	default:
		return "", fmt.Errorf("unsupported resourceFieldRef %q", r.Resource)
	}
	q, ok := list[v1.ResourceName(res)]
	if !ok {
		switch {
		case kind == "limits" && res == "cpu":
			q = in.NodeCPU
		case kind == "limits" && res == "memory":
			q = in.NodeMem
		default:
			q = resource.Quantity{}
		}
	}
	div := r.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	v := math.Ceil(float64(q.MilliValue()) / float64(div.MilliValue()))
	return fmt.Sprintf("%d", int64(v)), nil
}
