// Package ambient enrolls namespaces in the mesh and reports on it:
// Enable and Disable set and remove Istio's namespace label
// istio.io/dataplane-mode=ambient (ztunnel captures the namespace's pods
// live, without restarts), and Status lists namespaces with their dataplane
// mode and use-waypoint label, plus the mesh's health: the istiod-lite
// Deployment and the ztunnel DaemonSet in istio-system, per node.
package ambient

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambientmesh/ambient/ambientctl/kube"
	"github.com/ambientmesh/ambient/ambientctl/output"
)

// Istio's labels and the mesh's objects.
const (
	DataplaneModeLabel = "istio.io/dataplane-mode"
	DataplaneAmbient   = "ambient"
	UseWaypointLabel   = "istio.io/use-waypoint"

	SystemNamespace = "istio-system"
	IstiodName      = "istiod-lite" // Deployment
	ZtunnelName     = "ztunnel"     // DaemonSet, pods labelled app=ztunnel
	ZtunnelSelector = "app=ztunnel"
)

// Enable labels ns istio.io/dataplane-mode=ambient. It reports whether the
// label changed.
func Enable(ctx context.Context, c *kube.Cluster, ns string) (bool, error) {
	return setLabel(ctx, c, ns, ptr(DataplaneAmbient))
}

// Disable removes ns's istio.io/dataplane-mode label. It reports whether
// the label changed.
func Disable(ctx context.Context, c *kube.Cluster, ns string) (bool, error) {
	return setLabel(ctx, c, ns, nil)
}

func ptr(s string) *string { return &s }

func setLabel(ctx context.Context, c *kube.Cluster, ns string, value *string) (bool, error) {
	cur, err := c.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, kube.NamespaceNotFound(ns)
	}
	if err != nil {
		return false, c.Explain(err, "reading namespace "+ns)
	}
	old, had := cur.Labels[DataplaneModeLabel]
	if (value == nil && !had) || (value != nil && had && old == *value) {
		return false, nil
	}
	// A merge patch: null deletes the label; nothing else is touched.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]*string{DataplaneModeLabel: value}}})
	_, err = c.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return false, kube.NamespaceNotFound(ns)
	}
	if err != nil {
		return false, c.Explain(err, "labelling namespace "+ns)
	}
	return true, nil
}

// Namespace is one namespace's mesh settings.
type Namespace struct {
	Name          string `json:"name"`
	DataplaneMode string `json:"dataplaneMode"` // "ambient", another label value, or "none"
	UseWaypoint   string `json:"useWaypoint,omitempty"`
}

// Component is a Deployment's or DaemonSet's readiness.
type Component struct {
	Name      string `json:"name"`
	Kind      string `json:"kind"`
	Found     bool   `json:"found"`
	Desired   int32  `json:"desired"`
	Ready     int32  `json:"ready"`
	Available int32  `json:"available"`
}

// NodeStatus is a node's ztunnel.
type NodeStatus struct {
	Node    string `json:"node"`
	Pod     string `json:"ztunnelPod,omitempty"`
	Ready   bool   `json:"ready"`
	Phase   string `json:"phase,omitempty"`
	Restart int32  `json:"restarts"`
}

// Status is `ambientctl ambient status`.
type Status struct {
	Namespaces []Namespace  `json:"namespaces"`
	Istiod     Component    `json:"istiod"`
	Ztunnel    Component    `json:"ztunnel"`
	Nodes      []NodeStatus `json:"nodes"`
}

// GetStatus reads the namespaces (only ns when set) and the mesh's health.
func GetStatus(ctx context.Context, c *kube.Cluster, ns string) (*Status, error) {
	st := &Status{Namespaces: []Namespace{}, Nodes: []NodeStatus{}}
	var nss []corev1.Namespace
	if ns != "" {
		n, err := c.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, kube.NamespaceNotFound(ns)
		}
		if err != nil {
			return nil, c.Explain(err, "reading namespace "+ns)
		}
		nss = []corev1.Namespace{*n}
	} else {
		l, err := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, c.Explain(err, "listing namespaces")
		}
		nss = l.Items
	}
	for _, n := range nss {
		mode := n.Labels[DataplaneModeLabel]
		if mode == "" {
			mode = "none"
		}
		st.Namespaces = append(st.Namespaces, Namespace{Name: n.Name, DataplaneMode: mode, UseWaypoint: n.Labels[UseWaypointLabel]})
	}
	slices.SortFunc(st.Namespaces, func(a, b Namespace) int { return cmp.Compare(a.Name, b.Name) })

	st.Istiod = Component{Name: IstiodName, Kind: "Deployment"}
	d, err := c.Client.AppsV1().Deployments(SystemNamespace).Get(ctx, IstiodName, metav1.GetOptions{})
	switch {
	case err == nil:
		st.Istiod.Found = true
		if d.Spec.Replicas != nil {
			st.Istiod.Desired = *d.Spec.Replicas
		} else {
			st.Istiod.Desired = 1
		}
		st.Istiod.Ready, st.Istiod.Available = d.Status.ReadyReplicas, d.Status.AvailableReplicas
	case !apierrors.IsNotFound(err):
		return nil, c.Explain(err, "reading Deployment "+SystemNamespace+"/"+IstiodName)
	}
	st.Ztunnel = Component{Name: ZtunnelName, Kind: "DaemonSet"}
	ds, err := c.Client.AppsV1().DaemonSets(SystemNamespace).Get(ctx, ZtunnelName, metav1.GetOptions{})
	switch {
	case err == nil:
		st.Ztunnel.Found = true
		st.Ztunnel.Desired, st.Ztunnel.Ready, st.Ztunnel.Available = ds.Status.DesiredNumberScheduled, ds.Status.NumberReady, ds.Status.NumberAvailable
	case !apierrors.IsNotFound(err):
		return nil, c.Explain(err, "reading DaemonSet "+SystemNamespace+"/"+ZtunnelName)
	}

	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, c.Explain(err, "listing nodes")
	}
	pods, err := c.Client.CoreV1().Pods(SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: ZtunnelSelector})
	if err != nil {
		return nil, c.Explain(err, "listing ztunnel pods")
	}
	byNode := map[string]NodeStatus{}
	for _, n := range nodes.Items {
		byNode[n.Name] = NodeStatus{Node: n.Name}
	}
	for _, p := range pods.Items {
		if p.Spec.NodeName == "" {
			continue
		}
		s := NodeStatus{Node: p.Spec.NodeName, Pod: p.Name, Ready: podReady(&p), Phase: string(p.Status.Phase)}
		for _, cs := range p.Status.ContainerStatuses {
			s.Restart += cs.RestartCount
		}
		if old, ok := byNode[s.Node]; ok && old.Pod != "" && old.Ready && !s.Ready {
			continue // keep the ready one of two (during a rollout)
		}
		byNode[s.Node] = s
	}
	for _, s := range byNode {
		st.Nodes = append(st.Nodes, s)
	}
	slices.SortFunc(st.Nodes, func(a, b NodeStatus) int { return cmp.Compare(a.Node, b.Node) })
	return st, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Tables renders st as kubectl-style tables: namespaces, components, nodes.
func (st *Status) Tables() []output.Rows {
	ns := output.Rows{Headers: []string{"NAMESPACE", "DATAPLANE MODE", "WAYPOINT"}}
	for _, n := range st.Namespaces {
		ns.Rows = append(ns.Rows, []string{n.Name, n.DataplaneMode, n.UseWaypoint})
	}
	comp := output.Rows{Headers: []string{"COMPONENT", "KIND", "DESIRED", "READY", "STATUS"}}
	for _, c := range []Component{st.Istiod, st.Ztunnel} {
		row := []string{c.Name, c.Kind, "", "", "not installed"}
		if c.Found {
			row[2], row[3], row[4] = strconv.Itoa(int(c.Desired)), strconv.Itoa(int(c.Ready)), health(c)
		}
		comp.Rows = append(comp.Rows, row)
	}
	nodes := output.Rows{Headers: []string{"NODE", "ZTUNNEL POD", "READY", "RESTARTS"}}
	for _, n := range st.Nodes {
		ready := "false"
		if n.Pod == "" {
			ready = "no ztunnel"
		} else if n.Ready {
			ready = "true"
		}
		nodes.Rows = append(nodes.Rows, []string{n.Node, n.Pod, ready, strconv.Itoa(int(n.Restart))})
	}
	return []output.Rows{ns, comp, nodes}
}

func health(c Component) string {
	switch {
	case c.Desired == 0:
		return "no replicas"
	case c.Ready >= c.Desired:
		return "healthy"
	case c.Ready == 0:
		return "unavailable"
	}
	return fmt.Sprintf("degraded (%d/%d ready)", c.Ready, c.Desired)
}

// Hint says what to do about an unhealthy mesh, or "" when healthy.
func (st *Status) Hint() string {
	if !st.Istiod.Found || !st.Ztunnel.Found {
		return "the mesh is not installed: install it with kubectl apply -k manifests/"
	}
	return ""
}
