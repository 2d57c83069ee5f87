package waypointctl_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/istiod-lite/waypointctl"
)

const (
	waitTimeout = 30 * time.Second
	callTimeout = 10 * time.Second
	ns          = "shop"
)

// TestMain checks that a stopped controller leaves no goroutine behind
// (informers, workqueue, workers).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is a real apiserver (with the garbage collector but without the
// Deployment controller, so tests set Deployment status themselves), the
// Gateway API CRDs, and a running controller.
type env struct {
	kube kubernetes.Interface
	gw   gwclient.Interface
	log  *logCounter
}

func start(t *testing.T) *env {
	t.Helper()
	c := kubetest.Start(t, kubetest.Options{
		ControllerManager:     true,
		ControllerManagerArgs: []string{"--controllers=-deployment-controller"},
	})
	if out, err := c.Kubectl("apply", "--server-side", "-f", "../../manifests/crds"); err != nil {
		t.Fatalf("apply CRDs: %v\n%s", err, out)
	}
	if err := c.WaitEstablished("crd/gateways.gateway.networking.k8s.io", "crd/gatewayclasses.gateway.networking.k8s.io"); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl("create", "namespace", ns); err != nil {
		t.Fatalf("create namespace: %v\n%s", err, out)
	}
	rc := &rest.Config{Host: c.Server, BearerToken: c.Token, TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData}}
	e := &env{kube: kubernetes.NewForConfigOrDie(rc), gw: gwclient.NewForConfigOrDie(rc), log: &logCounter{t: t}}

	ctrl, err := waypointctl.New(waypointctl.Config{
		RESTConfig: rc,
		Template: waypointctl.Template{
			XDSAddress: "istiod.istio-system.svc:15012", XDSServerName: "istiod.istio-system.svc",
			TrustDomain: "cluster.local", ClusterID: "Kubernetes",
		},
		Logger:    slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		RetryBase: 50 * time.Millisecond,
		RetryMax:  2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Error("Run did not return after cancel")
		}
	})
	return e
}

// logCounter sends log lines to t.Log and counts applies.
type logCounter struct {
	t       *testing.T
	mu      sync.Mutex
	applies int
}

func (l *logCounter) Write(p []byte) (int, error) {
	l.mu.Lock()
	if strings.Contains(string(p), "waypointctl: applied") {
		l.applies++
	}
	l.mu.Unlock()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (l *logCounter) appliesSoFar() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.applies
}

// waitFor polls cond (each call bounded by callTimeout) until it returns
// nil, failing t with its last error after waitTimeout.
func waitFor(t *testing.T, what string, cond func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		err := cond(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", waitTimeout, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

func waypointGateway(name string, l gatewayv1.Listener) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: waypointctl.GatewayClass, Listeners: []gatewayv1.Listener{l}},
	}
}

// waitCondition waits until the Gateway's condition typ has status and
// reason at its current generation, and returns the Gateway.
func (e *env) waitCondition(t *testing.T, name, typ string, status metav1.ConditionStatus, reason string) *gatewayv1.Gateway {
	t.Helper()
	var gw *gatewayv1.Gateway
	waitFor(t, fmt.Sprintf("Gateway %s %s=%s (%s)", name, typ, status, reason), func(ctx context.Context) error {
		var err error
		gw, err = e.gw.GatewayV1().Gateways(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := apimeta.FindStatusCondition(gw.Status.Conditions, typ)
		if c == nil || c.Status != status || c.Reason != reason || c.ObservedGeneration != gw.Generation {
			return fmt.Errorf("conditions %+v", gw.Status.Conditions)
		}
		return nil
	})
	return gw
}

func TestController_DeploysWaypointGatewayAndReportsStatus(t *testing.T) {
	e := start(t)

	// The class is created (Istio's controllerName) and accepted.
	waitFor(t, "GatewayClass istio-waypoint accepted", func(ctx context.Context) error {
		gc, err := e.gw.GatewayV1().GatewayClasses().Get(ctx, waypointctl.GatewayClass, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if gc.Spec.ControllerName != "istio.io/mesh-controller" {
			return fmt.Errorf("controllerName %q", gc.Spec.ControllerName)
		}
		if !apimeta.IsStatusConditionTrue(gc.Status.Conditions, "Accepted") {
			return fmt.Errorf("conditions %+v", gc.Status.Conditions)
		}
		return nil
	})

	gw, err := e.gw.GatewayV1().Gateways(ns).Create(callCtx(t), waypointGateway("waypoint",
		gatewayv1.Listener{Name: "mesh", Port: 15008, Protocol: "HBONE"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("ObjectsOwnedByTheGateway", func(t *testing.T) {
		var objs []metav1.Object
		waitFor(t, "ServiceAccount, Deployment and Service", func(ctx context.Context) error {
			sa, err1 := e.kube.CoreV1().ServiceAccounts(ns).Get(ctx, "waypoint", metav1.GetOptions{})
			d, err2 := e.kube.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
			svc, err3 := e.kube.CoreV1().Services(ns).Get(ctx, "waypoint", metav1.GetOptions{})
			if err := errors.Join(err1, err2, err3); err != nil {
				return err
			}
			objs = []metav1.Object{sa, d, svc}
			return nil
		})
		for _, o := range objs {
			ref := metav1.GetControllerOf(o)
			if ref == nil || ref.UID != gw.UID || ref.Kind != "Gateway" || ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
				t.Errorf("%T %s: controller %+v, want Gateway %s with blockOwnerDeletion", o, o.GetName(), ref, gw.UID)
			}
			if o.GetLabels()[waypointctl.LabelManaged] != waypointctl.ManagedValue {
				t.Errorf("%T %s labels %v", o, o.GetName(), o.GetLabels())
			}
		}
		if d := objs[1].(*appsv1.Deployment); d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
			t.Errorf("replicas %v, want 1", d.Spec.Replicas)
		}
	})

	t.Run("StatusAddressesAndAccepted", func(t *testing.T) {
		got := e.waitCondition(t, "waypoint", "Accepted", "True", "Accepted")
		got = e.waitCondition(t, "waypoint", "Programmed", "False", "Pending")
		svc, err := e.kube.CoreV1().Services(ns).Get(callCtx(t), "waypoint", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := []gatewayv1.GatewayStatusAddress{
			{Type: new(gatewayv1.IPAddressType), Value: svc.Spec.ClusterIP},
			{Type: new(gatewayv1.HostnameAddressType), Value: "waypoint.shop.svc.cluster.local"},
		}
		if fmt.Sprint(derefAddrs(got.Status.Addresses)) != fmt.Sprint(derefAddrs(want)) {
			t.Errorf("addresses %v, want %v", derefAddrs(got.Status.Addresses), derefAddrs(want))
		}
		if len(got.Status.Listeners) != 1 || !apimeta.IsStatusConditionTrue(got.Status.Listeners[0].Conditions, "Accepted") {
			t.Errorf("listener status %+v", got.Status.Listeners)
		}
	})

	t.Run("DriftRepairedUserFieldsKept", func(t *testing.T) {
		ctx := callCtx(t)
		// A user's annotation (a field nobody manages) and another image (a
		// field the controller owns), each by its own field manager.
		if _, err := e.kube.AppsV1().Deployments(ns).Patch(ctx, "waypoint", types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"team":"shop"}}}`), metav1.PatchOptions{FieldManager: "user"}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.kube.AppsV1().Deployments(ns).Patch(ctx, "waypoint", types.JSONPatchType,
			[]byte(`[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"evil/waypoint:1"}]`),
			metav1.PatchOptions{FieldManager: "intruder"}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "image restored", func(ctx context.Context) error {
			d, err := e.kube.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if img := d.Spec.Template.Spec.Containers[0].Image; img != waypointctl.DefaultImage {
				return fmt.Errorf("image %s", img)
			}
			if d.Annotations["team"] != "shop" {
				t.Errorf("the user's annotation is gone: %v", d.Annotations)
			}
			return nil
		})
	})

	t.Run("ReapplyIsNoOp", func(t *testing.T) {
		ctx := callCtx(t)
		before, err := e.kube.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		applies := e.log.appliesSoFar()
		// A new generation of the Gateway: reconciled (its conditions
		// follow the generation), with nothing to apply.
		cur, err := e.gw.GatewayV1().Gateways(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: new(gatewayv1.NamespacesFromAll)}}
		if _, err := e.gw.GatewayV1().Gateways(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		e.waitCondition(t, "waypoint", "Accepted", "True", "Accepted")
		after, err := e.kube.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if after.ResourceVersion != before.ResourceVersion {
			t.Errorf("Deployment changed by a reconcile with nothing to change: resourceVersion %s → %s", before.ResourceVersion, after.ResourceVersion)
		}
		if n := e.log.appliesSoFar() - applies; n != 0 {
			t.Errorf("%d apply calls for an unchanged waypoint", n)
		}
	})

	t.Run("DeletedDeploymentRecreated", func(t *testing.T) {
		old, err := e.kube.AppsV1().Deployments(ns).Get(callCtx(t), "waypoint", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.kube.AppsV1().Deployments(ns).Delete(callCtx(t), "waypoint", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "Deployment recreated", func(ctx context.Context) error {
			d, err := e.kube.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if d.UID == old.UID {
				return errors.New("still the old Deployment")
			}
			return nil
		})
	})

	t.Run("ProgrammedWhenAvailable", func(t *testing.T) {
		// No kubelet: report an available replica as the Deployment
		// controller would.
		waitFor(t, "Deployment status patched", func(ctx context.Context) error {
			_, err := e.kube.AppsV1().Deployments(ns).Patch(ctx, "waypoint", types.MergePatchType,
				[]byte(`{"status":{"replicas":1,"updatedReplicas":1,"readyReplicas":1,"availableReplicas":1}}`),
				metav1.PatchOptions{}, "status")
			return err
		})
		got := e.waitCondition(t, "waypoint", "Programmed", "True", "Programmed")
		if l := got.Status.Listeners; len(l) != 1 || !apimeta.IsStatusConditionTrue(l[0].Conditions, "Programmed") {
			t.Errorf("listener status %+v, want Programmed", l)
		}
	})

	t.Run("NonHBONEGatewayNotAccepted", func(t *testing.T) {
		if _, err := e.gw.GatewayV1().Gateways(ns).Create(callCtx(t), waypointGateway("plain",
			gatewayv1.Listener{Name: "http", Port: 80, Protocol: "HTTP"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		got := e.waitCondition(t, "plain", "Accepted", "False", "ListenersNotValid")
		c := apimeta.FindStatusCondition(got.Status.Conditions, "Accepted")
		if !strings.Contains(c.Message, `port 15008 with protocol "HBONE"`) {
			t.Errorf("message %q does not say what is missing", c.Message)
		}
		if len(got.Status.Addresses) != 0 {
			t.Errorf("addresses %v for an undeployed Gateway", got.Status.Addresses)
		}
		// Status is written after the (skipped) deployment.
		if _, err := e.kube.AppsV1().Deployments(ns).Get(callCtx(t), "plain", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("Deployment of a non-HBONE Gateway: err = %v, want NotFound", err)
		}
	})

	t.Run("DeletedGatewayGarbageCollected", func(t *testing.T) {
		if err := e.gw.GatewayV1().Gateways(ns).Delete(callCtx(t), "waypoint", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "ServiceAccount, Deployment and Service deleted", func(ctx context.Context) error {
			_, err1 := e.kube.CoreV1().ServiceAccounts(ns).Get(ctx, "waypoint", metav1.GetOptions{})
			_, err2 := e.kube.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
			_, err3 := e.kube.CoreV1().Services(ns).Get(ctx, "waypoint", metav1.GetOptions{})
			for _, err := range []error{err1, err2, err3} {
				if !apierrors.IsNotFound(err) {
					return fmt.Errorf("still there (%v, %v, %v)", err1, err2, err3)
				}
			}
			return nil
		})
	})
}

func derefAddrs(as []gatewayv1.GatewayStatusAddress) []string {
	var out []string
	for _, a := range as {
		typ := "<nil>"
		if a.Type != nil {
			typ = string(*a.Type)
		}
		out = append(out, typ+"="+a.Value)
	}
	return out
}
