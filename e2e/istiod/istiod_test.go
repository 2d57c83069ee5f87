package istiod

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

var services = []string{"default/kubernetes.default.svc.cluster.local", "shop/server.shop.svc.cluster.local"}

// serverEndpoints: shop/server selects only the server pod.
var serverEndpoints = []string{"shop/server.shop.svc.cluster.local " + server.uid()}

// withoutPolicy is the mesh before any policy; withPolicy with allow-alice,
// which binds to the server pod.
var (
	withoutPolicy = meshState{Workloads: uids(alice, bob, server), Services: services, Endpoints: serverEndpoints}
	withPolicy    = meshState{Workloads: uids(alice, bob, server), Services: services, Endpoints: serverEndpoints,
		Policies: []string{"shop/allow-alice"}, Bindings: []string{server.uid() + " shop/allow-alice"}}
)

// serverVIP is the ClusterIP of shop/server at port 80.
func (m *mesh) serverVIP() string {
	m.t.Helper()
	return net.JoinHostPort(m.kubectl("get", "svc", "server", "-n", "shop", "-o", "jsonpath={.spec.clusterIP}"), "80")
}

// applyAllowAlice applies the policy with kubectl and waits until both
// ztunnels hold it.
func (m *mesh) applyAllowAlice(t *testing.T) {
	t.Helper()
	if err := m.kube.ApplyYAML(allowAliceYAML); err != nil {
		t.Fatal(err)
	}
	m.waitState(t, withPolicy)
}

// TestMesh_ConfigAndCertificatesFromIstiod: with istiod-lite on the real
// apiserver as the only source of config and certificates, pods talk across
// nodes through the mesh without knowing it, the receiving ztunnel records
// the caller's SPIFFE identity, every pod certificate chains to istiod-lite's
// root, and an AuthorizationPolicy applied with kubectl admits alice and
// refuses bob.
func TestMesh_ConfigAndCertificatesFromIstiod(t *testing.T) {
	m := newMesh(t)
	m.startZtunnels()
	m.waitState(t, withoutPolicy)
	n1, n2 := m.zt[0], m.zt[1]

	// The root istiod-lite wrote is the one it publishes in the cluster.
	if got, want := m.kubectl("get", "configmap", "istio-ca-root-cert", "-n", "istio-system", "-o", `jsonpath={.data.root-cert\.pem}`),
		strings.TrimSpace(string(readFile(t, m.rootPEM))); got != want {
		t.Errorf("ConfigMap istio-ca-root-cert = %q, want --root-cert-out %q", got, want)
	}
	for _, c := range []struct {
		z  *ztunnel
		id string
	}{{n1, alice.id()}, {n1, bob.id()}, {n2, server.id()}} {
		m.checkCertFromIstiod(t, c.z, c.id)
	}

	t.Run("PodToPodAcrossNodesCarriesCallerIdentity", func(t *testing.T) {
		if err := m.roundTrip(alice, m.pod(server).Addr(8080)); err != nil {
			t.Fatalf("alice -> server: %v", err)
		}
		f := n2.findFlow(t, map[string]any{"reporter": "destination", "src.identity": alice.id(), "dst.identity": server.id(),
			"transport": "hbone", "decision": "allow"})
		if f["bytes_sent"].(float64) == 0 {
			t.Errorf("flow counted no bytes: %v", f)
		}
		n1.findFlow(t, map[string]any{"reporter": "source", "src.identity": alice.id(), "dst.identity": server.id(), "transport": "hbone"})
	})
	t.Run("ServiceVIPFromIstiod", func(t *testing.T) {
		if err := m.roundTrip(bob, m.serverVIP()); err != nil {
			t.Fatalf("bob -> service shop/server: %v", err)
		}
		// The source ztunnel resolved the VIP from istiod-lite's Service.
		n1.findFlow(t, map[string]any{"reporter": "source", "src.identity": bob.id(), "dst.identity": server.id(),
			"dst.service": "server.shop.svc.cluster.local", "transport": "hbone"})
		n2.findFlow(t, map[string]any{"reporter": "destination", "src.identity": bob.id(), "dst.identity": server.id(),
			"transport": "hbone", "decision": "allow"})
	})
	t.Run("AuthorizationPolicyAllowsByPrincipal", func(t *testing.T) {
		m.applyAllowAlice(t)
		if err := m.roundTrip(alice, m.pod(server).Addr(8080)); err != nil {
			t.Fatalf("alice refused: %v", err)
		}
		if err := m.roundTrip(bob, m.pod(server).Addr(8080)); err == nil {
			t.Fatal("bob let through by an ALLOW policy naming only alice")
		}
		f := n2.findFlow(t, map[string]any{"reporter": "destination", "src.identity": bob.id(), "decision": "deny"})
		if f["policy"] != "shop/allow-alice" && !strings.Contains(fmt.Sprint(f["error"]), "denied") {
			t.Errorf("deny flow does not name the policy: %v", f)
		}
		waitFor(t, "ZtunnelAccepted condition on the policy", func() (bool, string) {
			out, _ := m.kube.Kubectl("get", "authorizationpolicy", "allow-alice", "-n", "shop", "-o",
				`jsonpath={.status.conditions[?(@.type=="ZtunnelAccepted")].status}`)
			return strings.TrimSpace(string(out)) == "True", string(out)
		})
	})
	for _, z := range m.zt {
		if v := z.metric(`istio_xds_message_rejected_total{url="type.googleapis.com/istio.workload.Address"}`); v > 0 {
			t.Errorf("%s NACKed %v Address responses", z.proc.name, v)
		}
	}
}

// TestMesh_IstiodKilledZtunnelsKeepServingThenResync: istiod-lite is
// SIGKILLed while the ztunnels hold config and certificates. Open
// connections and new ones keep working and the policy stays enforced.
// While it is down, the policy is deleted and a pod is added; restarted (it
// reloads the same root from its Secret), istiod-lite is reconnected to by
// both ztunnels, which converge to exactly the new state, without lost or
// duplicated entries, and serve the new pod with a certificate issued after
// the restart.
func TestMesh_IstiodKilledZtunnelsKeepServingThenResync(t *testing.T) {
	m := newMesh(t)
	m.startZtunnels()
	m.applyAllowAlice(t)
	n2 := m.zt[1]
	rootBefore := readFile(t, m.rootPEM)

	held, err := m.dial(alice, m.pod(server).Addr(8080))
	if err != nil {
		t.Fatalf("alice -> server: %v", err)
	}
	defer held.Close()
	if err := echo(held, "before the kill"); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	m.istiod.kill()
	for _, z := range m.zt {
		waitFor(t, z.proc.name+" sees istiod-lite gone", func() (bool, string) {
			v := z.metric("istio_xds_connected")
			return v == 0, fmt.Sprint("istio_xds_connected ", v)
		})
	}

	t.Run("WhileDownOpenAndNewConnectionsWork", func(t *testing.T) {
		if err := echo(held, "while istiod-lite is down"); err != nil {
			t.Errorf("open connection broke: %v", err)
		}
		if err := m.roundTrip(alice, m.pod(server).Addr(8080)); err != nil {
			t.Errorf("new connection alice -> server: %v", err)
		}
		if err := m.roundTrip(alice, m.serverVIP()); err != nil {
			t.Errorf("new connection alice -> service: %v", err)
		}
		if err := m.roundTrip(bob, m.pod(server).Addr(8080)); err == nil {
			t.Error("bob let through while istiod-lite is down: the held policy was lost")
		}
		m.waitState(t, withPolicy)
	})

	// Changes the ztunnels can only learn after the restart.
	m.kubectl("delete", "authorizationpolicy", "allow-alice", "-n", "shop")
	m.createPod(late)
	m.startIstiod()
	if got := readFile(t, m.rootPEM); string(got) != string(rootBefore) {
		t.Fatalf("root changed across the restart:\nbefore %s\nafter %s", rootBefore, got)
	}

	t.Run("AfterRestartConvergeExactly", func(t *testing.T) {
		m.waitState(t, meshState{Workloads: uids(alice, bob, server, late), Services: services, Endpoints: serverEndpoints})
		for _, z := range m.zt {
			waitFor(t, z.proc.name+" reconnected", func() (bool, string) {
				v := z.metric("istio_xds_connected")
				return v == 1, fmt.Sprint("istio_xds_connected ", v)
			})
			if v := z.metric(`istio_xds_message_rejected_total{url="type.googleapis.com/istio.workload.Address"}`); v > 0 {
				t.Errorf("%s NACKed %v Address responses", z.proc.name, v)
			}
		}
		// The certificates held across the outage are kept, not fetched again.
		if v := m.zt[0].metric(`istio_agent_num_outgoing_requests{request_type="csr"}`); v != 2 {
			t.Errorf("node-1 sent %v CSRs, want 2 (alice and bob, once each)", v)
		}
		t.Logf("down, changed, restarted and converged in %v", time.Since(start).Round(time.Millisecond))
	})
	t.Run("AfterRestartTrafficFollowsNewState", func(t *testing.T) {
		if err := echo(held, "after the restart"); err != nil {
			t.Errorf("connection opened before the kill broke: %v", err)
		}
		if err := m.roundTrip(bob, m.pod(server).Addr(8080)); err != nil {
			t.Errorf("bob -> server after the policy was deleted: %v", err)
		}
		m.checkCertFromIstiod(t, n2, late.id())
		if err := m.roundTrip(alice, m.pod(late).Addr(8080)); err != nil {
			t.Fatalf("alice -> the pod added while istiod-lite was down: %v", err)
		}
		n2.findFlow(t, map[string]any{"reporter": "destination", "src.identity": alice.id(), "dst.identity": late.id(),
			"transport": "hbone", "decision": "allow"})
	})
}
