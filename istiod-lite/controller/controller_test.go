package controller_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/rest"

	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/xdsclient"
	"github.com/ambientmesh/ambient/istiod-lite/controller"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

const waitTimeout = 30 * time.Second

// mesh is a controller and an xDS server fed from a real apiserver, and an
// xDS client feeding a store (what ztunnel gets) and a routes sink (the
// waypoints' routing tables).
type mesh struct {
	kube   *kubetest.Cluster
	logs   *logBuffer
	store  *state.Store
	routes *routesSink
	ctrl   *controller.Controller
	cache  *xds.Cache
}

// meshCRDs are the CRDs of manifests/crds, by name.
var meshCRDs = []string{
	"authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io",
	"gateways.gateway.networking.k8s.io", "gatewayclasses.gateway.networking.k8s.io",
	"httproutes.gateway.networking.k8s.io", "grpcroutes.gateway.networking.k8s.io", "referencegrants.gateway.networking.k8s.io",
	"destinationrules.networking.istio.io", "localtrafficpolicies.policy.ambientmesh.io",
}

// startMesh starts a mesh on a cluster with every CRD of manifests/crds.
func startMesh(t *testing.T) *mesh {
	t.Helper()
	return startMeshWithout(t)
}

// startMeshWithout starts a mesh on a cluster with the CRDs of
// manifests/crds but those named in without.
func startMeshWithout(t *testing.T, without ...string) *mesh {
	t.Helper()
	return startMeshWith(t, nil, without...)
}

// startMeshWith is startMeshWithout with the controller's Config changed by
// change (if not nil).
func startMeshWith(t *testing.T, change func(*controller.Config), without ...string) *mesh {
	t.Helper()
	c := kubetest.Start(t, kubetest.Options{})
	// Server-side: the HTTPRoute CRD is larger than the annotation a
	// client-side apply records.
	apply := []string{"apply", "--server-side", "-f", "../../manifests/crds"}
	var established []string
	for _, crd := range meshCRDs {
		if !slices.Contains(without, crd) {
			established = append(established, "crd/"+crd)
		}
	}
	if len(without) > 0 { // the files of the others only
		apply = []string{"apply", "--server-side"}
		for _, crd := range established {
			plural, group, _ := strings.Cut(strings.TrimPrefix(crd, "crd/"), ".")
			apply = append(apply, "-f", "../../manifests/crds/"+group+"_"+plural+".yaml")
		}
	}
	if out, err := c.Kubectl(apply...); err != nil {
		t.Fatalf("apply CRDs: %v: %s", err, out)
	}
	if err := c.WaitEstablished(established...); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(testWriter{t, logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cache := xds.NewCache()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := xds.New(xds.Config{Cache: cache, Listener: ln, Logger: log, DebounceAfter: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cfg := controller.Config{
		RESTConfig: &rest.Config{Host: c.Server, BearerToken: c.Token, TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData}},
		Cache:      cache,
		Logger:     log,
		Debounce:   20 * time.Millisecond,
	}
	if change != nil {
		change(&cfg)
	}
	ctrl, err := controller.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	store := state.NewStore()
	routes := newRoutesSink()
	client, err := xdsclient.New(xdsclient.Config{
		Target:      ln.Addr().String(),
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Store:       store,
		NodeID:      "node-1",
		Logger:      log,
		Extra:       []xdsclient.Extra{{TypeURL: xds.TypeServiceRoutes, Sink: routes}},
	})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 3)
	go func() { errc <- srv.Run(ctx) }()
	go func() { errc <- ctrl.Run(ctx) }()
	go func() { errc <- client.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 3 {
			if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("component: %v", err)
			}
		}
	})
	select {
	case <-ctrl.Synced():
	case <-time.After(waitTimeout):
		t.Fatal("controller did not sync")
	}
	return &mesh{kube: c, logs: logs, store: store, routes: routes, ctrl: ctrl, cache: cache}
}

// testWriter sends log lines to t.Log and, when buf is set, to buf.
type testWriter struct {
	t   *testing.T
	buf *logBuffer
}

func (w testWriter) Write(p []byte) (int, error) {
	if w.buf != nil {
		w.buf.write(p)
	}
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// logBuffer keeps what the mesh's components logged.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder // guarded by mu
}

func (b *logBuffer) write(p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
}

// contains reports whether s was logged.
func (b *logBuffer) contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Contains(b.buf.String(), s)
}

// eventually polls cond every 20 ms until it holds, failing t after
// waitTimeout with what and cond's last word on what it saw.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; %s", waitTimeout, what, saw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitFor polls the store until cond holds, failing t after waitTimeout.
func (m *mesh) waitFor(t *testing.T, what string, cond func(*state.View) bool) {
	t.Helper()
	eventually(t, what, func() (bool, string) {
		v := m.store.Current()
		return cond(v), fmt.Sprintf("store has %+v", v.Snapshot())
	})
}

func (m *mesh) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := m.kube.Kubectl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func (m *mesh) apply(t *testing.T, yaml string) {
	t.Helper()
	if err := m.kube.ApplyYAML(yaml); err != nil {
		t.Fatal(err)
	}
}

const shopYAML = `
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: shop
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels:
    app: web
spec:
  serviceAccountName: web
  nodeName: node-1
  containers:
  - name: web
    image: example.invalid/web:1
    ports:
    - name: http
      containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
`

// From Istio's docs (security/authorization/authz-tcp), retargeted at shop.
const allowSleepYAML = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-sleep
  namespace: shop
spec:
  selector:
    matchLabels:
      app: web
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
`

const (
	webUID  = "Kubernetes//Pod/shop/web"
	webHost = "web.shop.svc.cluster.local"
)

func TestController_PodServiceLabelPolicyDelete_ReachZtunnel(t *testing.T) {
	m := startMesh(t)

	m.apply(t, shopYAML)
	// No kubelet runs: report the pod running and ready ourselves.
	m.kubectl(t, "patch", "pod", "web", "-n", "shop", "--subresource=status", "--type=merge", "-p",
		`{"status":{"phase":"Running","podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"}],`+
			`"conditions":[{"type":"Ready","status":"True"}]}}`)

	m.waitFor(t, "workload (NONE) and service", func(v *state.View) bool {
		w := v.Workload(webUID)
		return w != nil && w.GetTunnelProtocol() == workloadapi.TunnelProtocol_NONE &&
			w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY &&
			v.Service("shop", webHost) != nil
	})
	v := m.store.Current()
	w := v.Workload(webUID)
	if got := w.GetServiceAccount(); got != "web" {
		t.Errorf("workload service account = %q, want web", got)
	}
	if ports := w.GetServices()["shop/"+webHost].GetPorts(); len(ports) != 1 ||
		ports[0].GetServicePort() != 80 || ports[0].GetTargetPort() != 8080 {
		t.Errorf("workload services = %v, want shop/%s 80→8080", w.GetServices(), webHost)
	}
	if eps := v.Endpoints(v.Service("shop", webHost)); len(eps) != 1 || eps[0].GetUid() != webUID {
		t.Errorf("service endpoints = %v, want [%s]", eps, webUID)
	}

	m.kubectl(t, "label", "namespace", "shop", "istio.io/dataplane-mode=ambient")
	m.waitFor(t, "workload HBONE", func(v *state.View) bool {
		return v.Workload(webUID).GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE
	})

	m.apply(t, allowSleepYAML)
	m.waitFor(t, "authorization bound to the workload", func(v *state.View) bool {
		return v.Policy("shop", "allow-sleep") != nil &&
			slices.Contains(v.Workload(webUID).GetAuthorizationPolicies(), "shop/allow-sleep")
	})
	// The ZtunnelAccepted condition reaches the policy's status.
	eventually(t, "the policy's ZtunnelAccepted=True", func() (bool, string) {
		out := m.kubectl(t, "get", "authorizationpolicy", "allow-sleep", "-n", "shop",
			"-o", `jsonpath={.status.conditions[?(@.type=="ZtunnelAccepted")].status}`)
		return out == "True", "ZtunnelAccepted = " + strconv.Quote(out)
	})

	m.kubectl(t, "delete", "authorizationpolicy", "allow-sleep", "-n", "shop")
	m.waitFor(t, "authorization removed and unbound", func(v *state.View) bool {
		return v.Policy("shop", "allow-sleep") == nil && v.Workload(webUID) != nil &&
			len(v.Workload(webUID).GetAuthorizationPolicies()) == 0
	})

	// The pod is bound to a node, so a graceful delete waits for a kubelet
	// that does not exist; --force is the kubelet's final delete.
	m.kubectl(t, "delete", "pod", "web", "-n", "shop", "--grace-period=0", "--force")
	m.waitFor(t, "workload removed", func(v *state.View) bool {
		return v.Workload(webUID) == nil && v.Service("shop", webHost) != nil
	})
	m.kubectl(t, "delete", "service", "web", "-n", "shop")
	m.waitFor(t, "service removed", func(v *state.View) bool { return v.Service("shop", webHost) == nil })
}

// TestController_StatusOnlyWhileLeading: a replica that is not the elected
// writer translates (the policy reaches xDS) but writes no status; once
// elected, Resync writes what it held back.
func TestController_StatusOnlyWhileLeading(t *testing.T) {
	var leading atomic.Bool
	m := startMeshWith(t, func(c *controller.Config) { c.Leading = leading.Load })
	m.apply(t, shopYAML)
	m.apply(t, allowSleepYAML)
	m.waitFor(t, "the policy in xDS", func(v *state.View) bool { return v.Policy("shop", "allow-sleep") != nil })
	status := func() string {
		return m.kubectl(t, "get", "authorizationpolicy", "allow-sleep", "-n", "shop",
			"-o", `jsonpath={.status.conditions[?(@.type=="ZtunnelAccepted")].status}`)
	}
	// A later event's recomputation is done, with the policy's too.
	m.kubectl(t, "patch", "pod", "web", "-n", "shop", "--subresource=status", "--type=merge", "-p",
		`{"status":{"phase":"Running","podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"}],"conditions":[{"type":"Ready","status":"True"}]}}`)
	m.waitFor(t, "a later recomputation", func(v *state.View) bool { return v.Workload(webUID) != nil })
	if got := status(); got != "" {
		t.Fatalf("a replica not leading wrote ZtunnelAccepted = %q", got)
	}
	leading.Store(true)
	m.ctrl.Resync()
	eventually(t, "the policy's ZtunnelAccepted=True once leading", func() (bool, string) {
		out := status()
		return out == "True", "ZtunnelAccepted = " + strconv.Quote(out)
	})
}
