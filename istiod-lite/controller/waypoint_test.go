package controller_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

const meshYAML = `
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels:
    topology.kubernetes.io/region: eu-west1
    topology.kubernetes.io/zone: eu-west1-b
    topology.istio.io/subzone: rack7
---
apiVersion: v1
kind: Namespace
metadata:
  name: mesh
  labels:
    istio.io/dataplane-mode: ambient
    istio.io/use-waypoint: waypoint
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: app
  namespace: mesh
---
apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: mesh
  labels:
    app: app
spec:
  serviceAccountName: app
  nodeName: node-1
  containers:
  - name: app
    image: example.invalid/app:1
    ports:
    - name: http
      containerPort: 8080
---
# The Service Istio's waypoint deployment controller would create.
apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: mesh
  labels:
    gateway.istio.io/managed: istio.io-mesh-controller
spec:
  selector:
    gateway.networking.k8s.io/gateway-name: waypoint
  ports:
  - name: mesh
    port: 15008
---
# A service without a selector: its endpoints are the EndpointSlice below.
apiVersion: v1
kind: Service
metadata:
  name: legacy
  namespace: mesh
spec:
  ports:
  - name: http
    port: 80
    targetPort: http
`

// What istioctl waypoint apply --for all creates.
const waypointYAML = `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: mesh
  labels:
    istio.io/waypoint-for: all
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
`

const (
	appUID     = "Kubernetes//Pod/mesh/app"
	legacyHost = "legacy.mesh.svc.cluster.local"
)

func TestController_WaypointEndpointSliceLocality_ReachZtunnel(t *testing.T) {
	m := startMesh(t)

	m.apply(t, meshYAML)
	m.kubectl(t, "patch", "pod", "app", "-n", "mesh", "--subresource=status", "--type=merge", "-p",
		`{"status":{"phase":"Running","podIP":"10.244.1.7","podIPs":[{"ip":"10.244.1.7"}],`+
			`"conditions":[{"type":"Ready","status":"True"}]}}`)
	podUID := m.kubectl(t, "get", "pod", "app", "-n", "mesh", "-o", "jsonpath={.metadata.uid}")
	m.apply(t, `
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-1
  namespace: mesh
  labels:
    kubernetes.io/service-name: legacy
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: ["10.244.1.7"]
  targetRef: {kind: Pod, namespace: mesh, name: app, uid: `+podUID+`}
`)

	// Locality from the node, the selectorless service from its slice; the
	// namespace names a waypoint that does not exist yet: no waypoint.
	m.waitFor(t, "workload with locality and the selectorless service", func(v *state.View) bool {
		w := v.Workload(appUID)
		return w != nil && w.GetLocality() != nil && w.GetServices()["mesh/"+legacyHost] != nil &&
			v.Service("mesh", legacyHost) != nil
	})
	v := m.store.Current()
	w := v.Workload(appUID)
	if diff := cmp.Diff(&workloadapi.Locality{Region: "eu-west1", Zone: "eu-west1-b", Subzone: "rack7"}, w.GetLocality(), protocmp.Transform()); diff != "" {
		t.Errorf("locality (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(&workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}},
		w.GetServices()["mesh/"+legacyHost], protocmp.Transform()); diff != "" {
		t.Errorf("workload's legacy service ports (-want +got):\n%s", diff)
	}
	if eps := v.Endpoints(v.Service("mesh", legacyHost)); len(eps) != 1 || eps[0].GetUid() != appUID {
		t.Errorf("legacy endpoints = %v, want [%s]", eps, appUID)
	}
	if w.GetWaypoint() != nil || v.Service("mesh", legacyHost).GetWaypoint() != nil {
		t.Errorf("waypoint bound before its Gateway exists: workload %v, service %v", w.GetWaypoint(), v.Service("mesh", legacyHost).GetWaypoint())
	}

	// The Gateway appears: without status addresses, its Service's ClusterIP.
	m.apply(t, waypointYAML)
	vip, err := netip.ParseAddr(m.kubectl(t, "get", "service", "waypoint", "-n", "mesh", "-o", "jsonpath={.spec.clusterIP}"))
	if err != nil {
		t.Fatal(err)
	}
	wantWP := func(ip netip.Addr) *workloadapi.GatewayAddress {
		return &workloadapi.GatewayAddress{
			Destination:   &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Address: ip.AsSlice()}},
			HboneMtlsPort: 15008,
		}
	}
	waitWaypoint := func(what string, want *workloadapi.GatewayAddress) {
		t.Helper()
		m.waitFor(t, what, func(v *state.View) bool {
			eq := func(got *workloadapi.GatewayAddress) bool { return cmp.Equal(want, got, protocmp.Transform()) }
			return eq(v.Workload(appUID).GetWaypoint()) && eq(v.Service("mesh", legacyHost).GetWaypoint())
		})
	}
	waitWaypoint("waypoint at the Service's ClusterIP on workload and service", wantWP(vip))
	// Its ServiceAccount (named after the Gateway) may subscribe to xDS;
	// others may not.
	if !m.ctrl.IsWaypoint("mesh", "waypoint") || m.ctrl.IsWaypoint("mesh", "app") || m.ctrl.IsWaypoint("other", "waypoint") {
		t.Errorf("IsWaypoint: mesh/waypoint %v, mesh/app %v, other/waypoint %v; want true, false, false",
			m.ctrl.IsWaypoint("mesh", "waypoint"), m.ctrl.IsWaypoint("mesh", "app"), m.ctrl.IsWaypoint("other", "waypoint"))
	}
	if wp := m.store.Current().Service("mesh", "waypoint.mesh.svc.cluster.local").GetWaypoint(); wp != nil {
		t.Errorf("the waypoint's own service has waypoint %v, want none", wp)
	}

	// The status address a gateway controller reports wins.
	m.kubectl(t, "patch", "gateway", "waypoint", "-n", "mesh", "--subresource=status", "--type=merge", "-p",
		`{"status":{"addresses":[{"type":"IPAddress","value":"10.96.200.1"}]}}`)
	waitWaypoint("waypoint at the Gateway's status address", wantWP(netip.MustParseAddr("10.96.200.1")))

	// Gone again: as Istio, no waypoint rather than an unreachable one.
	m.kubectl(t, "delete", "gateway", "waypoint", "-n", "mesh")
	waitWaypoint("waypoint removed", nil)
	if m.ctrl.IsWaypoint("mesh", "waypoint") {
		t.Error("a deleted waypoint's account may still subscribe to xDS")
	}
}

// TestGatewayAPICRDs_MatchModule: the Gateway API CRDs in manifests/crds
// are the ones of the gateway-api module go.mod pins.
func TestGatewayAPICRDs_MatchModule(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-json", "sigs.k8s.io/gateway-api").Output()
	if err != nil {
		t.Fatalf("go list -m sigs.k8s.io/gateway-api: %v", err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go list -m: module directory unknown (%v): %s", err, out)
	}
	for _, c := range []struct{ dir, channel, name string }{
		{"crds", "standard", "gatewayclasses"},
		{"crds", "standard", "gateways"},
		{"crds", "standard", "httproutes"},
		{"crds", "standard", "grpcroutes"},
		{"crds", "standard", "referencegrants"},
		{"gateway-api-experimental", "experimental", "httproutes"},
	} {
		file := "gateway.networking.k8s.io_" + c.name + ".yaml"
		want, err := os.ReadFile(filepath.Join(mod.Dir, "config", "crd", c.channel, file))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("..", "..", "manifests", c.dir, file))
		if err != nil {
			t.Fatal(err)
		}
		// Our header comment, then the module's file unchanged.
		var body []byte
		for line := range bytes.Lines(got) {
			if body != nil || !strings.HasPrefix(string(line), "#") {
				body = append(body, line...)
			}
		}
		if !bytes.Equal(body, want) {
			t.Errorf("manifests/%s/%s differs from %s; copy it again (with its header)", c.dir, file, filepath.Join(mod.Dir, "config", "crd", c.channel, file))
		}
	}
}
