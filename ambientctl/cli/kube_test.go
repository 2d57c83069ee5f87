package cli_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambientmesh/ambient/ambientctl/ambient"
	"github.com/ambientmesh/ambient/ambientctl/kube"
	"github.com/ambientmesh/ambient/internal/kubetest"
)

func TestAmbient_AgainstARealAPIServer(t *testing.T) {
	cluster := kubetest.Start(t, kubetest.Options{})
	kc := "--kubeconfig=" + cluster.Kubeconfig
	c, err := kube.Load(kube.Options{Kubeconfig: cluster.Kubeconfig})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	create(t, c.Client, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "shop", ambient.UseWaypointLabel: "waypoint"}}})

	t.Run("enable and disable flip the label", func(t *testing.T) {
		label := func() (string, bool) {
			ns, err := c.Client.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if ns.Labels["team"] != "shop" {
				t.Errorf("other labels touched: %v", ns.Labels)
			}
			v, ok := ns.Labels[ambient.DataplaneModeLabel]
			return v, ok
		}
		if out := mustRun(t, "ambient", "enable", "-n", "shop", kc); !strings.Contains(out, "namespace/shop: ambient mode enabled") {
			t.Errorf("enable said %q", out)
		}
		if v, ok := label(); !ok || v != "ambient" {
			t.Fatalf("after enable: label %q (set %v), want ambient", v, ok)
		}
		if out := mustRun(t, "ambient", "enable", "-n", "shop", kc); !strings.Contains(out, "already enabled") {
			t.Errorf("second enable said %q", out)
		}
		if out := mustRun(t, "ambient", "status", "-n", "shop", kc); !strings.Contains(out, "shop        ambient") {
			t.Errorf("status -n shop after enable:\n%s", out)
		}
		mustRun(t, "ambient", "disable", "-n", "shop", kc)
		if v, ok := label(); ok {
			t.Fatalf("after disable: label %q still set", v)
		}
		if out := mustRun(t, "ambient", "disable", "-n", "shop", kc); !strings.Contains(out, "was not enabled") {
			t.Errorf("second disable said %q", out)
		}
	})

	t.Run("a missing namespace says how to create it", func(t *testing.T) {
		for _, args := range [][]string{{"ambient", "enable", "-n", "nope"}, {"ambient", "status", "-n", "nope"}} {
			_, errOut, code := run(t, append(args, kc)...)
			if code == 0 || !strings.Contains(errOut, `namespace "nope" not found; create it with: kubectl create namespace nope`) {
				t.Errorf("%v: exit %d, stderr %q", args, code, errOut)
			}
		}
	})

	t.Run("status before the mesh is installed", func(t *testing.T) {
		out := mustRun(t, "ambient", "status", kc)
		if !strings.Contains(out, "not installed") || !strings.Contains(out, "kubectl apply -k manifests/") {
			t.Errorf("status without the mesh:\n%s", out)
		}
	})

	t.Run("status reflects istiod-lite and ztunnel per node", func(t *testing.T) {
		installMesh(t, c.Client)
		mustRun(t, "ambient", "enable", "-n", "shop", kc)
		golden(t, "status.golden.txt", mustRun(t, "ambient", "status", kc))
		var st ambient.Status
		if err := json.Unmarshal([]byte(mustRun(t, "ambient", "status", "-o", "json", kc)), &st); err != nil {
			t.Fatal(err)
		}
		if st.Istiod.Ready != 1 || st.Ztunnel.Desired != 2 || st.Ztunnel.Ready != 1 || len(st.Nodes) != 2 || !st.Nodes[0].Ready || st.Nodes[1].Ready {
			t.Errorf("status -o json = %+v", st)
		}
		if y := mustRun(t, "ambient", "status", "-n", "shop", "-o", "yaml", kc); !strings.Contains(y, "dataplaneMode: ambient") || !strings.Contains(y, "useWaypoint: waypoint") {
			t.Errorf("status -o yaml:\n%s", y)
		}
	})
}

func create[T interface{ GetName() string }](t *testing.T, cs kubernetes.Interface, obj T) {
	t.Helper()
	ctx := context.Background()
	var err error
	switch o := any(obj).(type) {
	case *corev1.Namespace:
		_, err = cs.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Node:
		_, err = cs.CoreV1().Nodes().Create(ctx, o, metav1.CreateOptions{})
	default:
		t.Fatalf("create %T", obj)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// installMesh creates what `kubectl apply -k manifests/` and the nodes
// would: the istiod-lite Deployment (1/1 ready), the ztunnel DaemonSet on
// two nodes with one ready pod, statuses written through the status
// subresource as the controllers and kubelets would.
func installMesh(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	check := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	create(t, cs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}})
	// No controller manager here: the pods' ServiceAccount is made by hand.
	_, err := cs.CoreV1().ServiceAccounts("istio-system").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	check(err)
	for _, n := range []string{"node-1", "node-2"} {
		create(t, cs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	labels := func(app string) map[string]string { return map[string]string{"app": app} }
	podSpec := corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "ambient/any"}}}
	one := int32(1)
	d, err := cs.AppsV1().Deployments("istio-system").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod-lite"},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels("istiod-lite")},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels("istiod-lite")}, Spec: podSpec}},
	}, metav1.CreateOptions{})
	check(err)
	d.Status = appsv1.DeploymentStatus{Replicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, UpdatedReplicas: 1}
	_, err = cs.AppsV1().Deployments("istio-system").UpdateStatus(ctx, d, metav1.UpdateOptions{})
	check(err)
	ds, err := cs.AppsV1().DaemonSets("istio-system").Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "ztunnel"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels("ztunnel")},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels("ztunnel")}, Spec: podSpec}},
	}, metav1.CreateOptions{})
	check(err)
	ds.Status = appsv1.DaemonSetStatus{DesiredNumberScheduled: 2, CurrentNumberScheduled: 2, NumberReady: 1, NumberAvailable: 1}
	_, err = cs.AppsV1().DaemonSets("istio-system").UpdateStatus(ctx, ds, metav1.UpdateOptions{})
	check(err)
	for i, n := range []string{"node-1", "node-2"} {
		spec := podSpec
		spec.NodeName = n
		spec.HostNetwork = true
		p, err := cs.CoreV1().Pods("istio-system").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-" + n, Labels: labels("ztunnel")}, Spec: spec,
		}, metav1.CreateOptions{})
		check(err)
		ready := corev1.ConditionTrue
		if i == 1 {
			ready = corev1.ConditionFalse
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning,
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "main", Image: "ambient/any", RestartCount: int32(i * 3)}}}
		_, err = cs.CoreV1().Pods("istio-system").UpdateStatus(ctx, p, metav1.UpdateOptions{})
		check(err)
	}
}
