package cli_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambientmesh/ambient/ambientctl/kube"
	"github.com/ambientmesh/ambient/ambientctl/waypoint"
	"github.com/ambientmesh/ambient/internal/kubetest"
)

// TestWaypoint_AgainstARealAPIServer: apply (with --enroll-namespace and
// --wait), generate, list, status and delete, as istioctl waypoint does.
// No waypoint controller runs here: the test plays it, marking the
// Gateway Programmed while apply waits.
func TestWaypoint_AgainstARealAPIServer(t *testing.T) {
	cluster := kubetest.Start(t, kubetest.Options{})
	kc := "--kubeconfig=" + cluster.Kubeconfig
	c, err := kube.Load(kube.Options{Kubeconfig: cluster.Kubeconfig})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Before the Gateway API CRDs: a clear error.
	create(t, c.Client, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}})
	if _, errOut, code := run(t, "waypoint", "apply", "-n", "shop", kc); code == 0 || !strings.Contains(errOut, "Gateway API CRDs are not installed") {
		t.Fatalf("apply without CRDs: exit %d, %q", code, errOut)
	}
	if out, err := cluster.Kubectl("apply", "--server-side", "-f", "../../manifests/crds"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := cluster.Kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/gateways.gateway.networking.k8s.io"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	gw, err := gwclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	// Play the controller: mark the Gateway Programmed once it exists.
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			g, err := gw.GatewayV1().Gateways("shop").Get(ctx, "waypoint", metav1.GetOptions{})
			if err == nil {
				g.Status.Conditions = []metav1.Condition{{Type: "Programmed", Status: metav1.ConditionTrue, Reason: "Programmed",
					Message: "Resource programmed", ObservedGeneration: g.Generation, LastTransitionTime: metav1.Now()}}
				g.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Value: "10.96.0.50"}}
				if _, err := gw.GatewayV1().Gateways("shop").UpdateStatus(ctx, g, metav1.UpdateOptions{}); err == nil {
					return
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	out := mustRun(t, "waypoint", "apply", "-n", "shop", "--enroll-namespace", "--wait", "--timeout=60s", kc)
	wg.Wait()
	for _, want := range []string{"waypoint shop/waypoint applied (for service traffic)", "namespace/shop now uses waypoint waypoint", "waypoint shop/waypoint programmed"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply said %q, want %q", out, want)
		}
	}
	g, err := gw.GatewayV1().Gateways("shop").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g.Spec.GatewayClassName != waypoint.ClassName || len(g.Spec.Listeners) != 1 || g.Spec.Listeners[0].Port != 15008 || g.Spec.Listeners[0].Protocol != "HBONE" {
		t.Errorf("gateway spec %+v", g.Spec)
	}
	ns, err := c.Client.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	if err != nil || ns.Labels[waypoint.UseWaypointLabel] != "waypoint" {
		t.Errorf("namespace labels %v (%v), want istio.io/use-waypoint=waypoint", ns.Labels, err)
	}
	// Apply again with another --for: updated in place, the label already there.
	if out := mustRun(t, "waypoint", "apply", "-n", "shop", "--for", "all", "--enroll-namespace", kc); !strings.Contains(out, "already used") {
		t.Errorf("second apply said %q", out)
	}
	if out := mustRun(t, "waypoint", "list", "-A", kc); !strings.Contains(out, "shop        waypoint   all   True         10.96.0.50") {
		t.Errorf("list:\n%s", out)
	}
	if out := mustRun(t, "waypoint", "status", "-n", "shop", kc); !strings.Contains(out, "Programmed") {
		t.Errorf("status:\n%s", out)
	}
	if _, errOut, code := run(t, "waypoint", "apply", "-n", "shop", "--for", "everything", kc); code == 0 || !strings.Contains(errOut, "want one of service, workload, all, none") {
		t.Errorf("bad --for: exit %d, %q", code, errOut)
	}
	if _, errOut, code := run(t, "waypoint", "delete", "-n", "shop", "nope", kc); code == 0 || !strings.Contains(errOut, "waypoint shop/nope not found") {
		t.Errorf("delete of a missing waypoint: exit %d, %q", code, errOut)
	}
	mustRun(t, "waypoint", "delete", "-n", "shop", "--all", kc)
	if out := mustRun(t, "waypoint", "list", "-n", "shop", kc); !strings.Contains(out, "No waypoints found.") {
		t.Errorf("list after delete:\n%s", out)
	}
}

func TestWaypoint_GenerateIsTheGateway(t *testing.T) {
	out := mustRun(t, "waypoint", "generate", "-n", "shop", "--name", "reviews-wp", "--for", "workload")
	golden(t, "waypoint-generate.yaml", out)
}
