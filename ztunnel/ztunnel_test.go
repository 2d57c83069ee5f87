package ztunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"

	"github.com/ambientmesh/ambient/internal/authz"
	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/certs"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/logtest"
	"github.com/ambientmesh/ambient/internal/metricstest"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/redirect"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// mesh is a 2-node × 2-pod topology with one ztunnel per node; every pod
// runs an echo app on 8080.
type mesh struct {
	ca    *ca.Authority
	topo  *testenv.Topology
	store *state.Store
	zt    []*Ztunnel
	logs  []*logtest.Buffer
	regs  []*prometheus.Registry
	stops []func()
	sa    map[*testenv.Pod]string
}

// serviceAccounts of pod (node, index).
var serviceAccounts = map[[2]int]string{{1, 1}: "alice", {1, 2}: "bob", {2, 1}: "server", {2, 2}: "other"}

func podUID(p *testenv.Pod) string { return fmt.Sprintf("pod-%d-%d", p.Node.Index, p.Index) }

// opts adjust both ztunnels' Config.
func newMesh(t testing.TB, opts ...func(*Config)) *mesh {
	return newMeshOn(t, testenv.Spec{Nodes: 2, PodsPerNode: 2}, opts...)
}

// newMeshOn is newMesh on a topology of spec's shape (2 × 2 or larger);
// with spec.DualStack each workload has its IPv6 address too.
func newMeshOn(t testing.TB, spec testenv.Spec, opts ...func(*Config)) *mesh {
	testenv.RequireRoot(t)
	m := &mesh{topo: testenv.NewTopology(t, spec), store: state.NewStore(),
		sa: map[*testenv.Pod]string{}}
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.ca = authority
	var workloads []*workloadapi.Workload
	for _, n := range m.topo.Nodes {
		for _, p := range n.Pods {
			sa := serviceAccounts[[2]int{n.Index, p.Index}]
			m.sa[p] = sa
			addrs := [][]byte{p.IP.AsSlice()}
			if p.IP6.IsValid() {
				addrs = append(addrs, p.IP6.AsSlice())
			}
			workloads = append(workloads, &workloadapi.Workload{
				Uid: podUID(p), Name: fmt.Sprintf("%s-%d", sa, p.Index), Namespace: "shop", ServiceAccount: sa,
				Node: fmt.Sprintf("node-%d", n.Index), Addresses: addrs,
				TunnelProtocol: workloadapi.TunnelProtocol_HBONE, Status: workloadapi.WorkloadStatus_HEALTHY,
			})
			startEcho(t, p)
		}
	}
	if err := m.store.Replace(state.Snapshot{Workloads: workloads}); err != nil {
		t.Fatal(err)
	}
	for _, n := range m.topo.Nodes {
		m.logs = append(m.logs, &logtest.Buffer{})
		m.regs = append(m.regs, prometheus.NewRegistry())
		m.zt = append(m.zt, nil)
		m.stops = append(m.stops, nil)
		m.startZtunnel(t, n.Index, opts...)
	}
	waitFor(t, "ztunnels ready", func() bool { return m.zt[0].Ready() && m.zt[1].Ready() && len(m.zt[0].Pods()) == 2 })
	return m
}

// startZtunnel runs node n's ztunnel (1-based) until the test ends or
// stopZtunnel.
func (m *mesh) startZtunnel(t testing.TB, n int, opts ...func(*Config)) {
	cm, err := certs.New(certs.Config{Sign: certs.LocalSigner(m.ca, time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m.regs[n-1] = reg
	metrics, err := telemetry.NewMetrics(reg, "Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Node: fmt.Sprintf("node-%d", n), Store: m.store, Certs: cm, Metrics: metrics,
		FlowLog: telemetry.NewFlowLog(m.logs[n-1]), DrainTimeout: time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	z, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range m.topo.Nodes[n-1].Pods {
		z.AddPod(podUID(p), p.Path)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); z.Run(ctx) }()
	stop := func() { cancel(); <-done; cm.Close() }
	t.Cleanup(stop)
	m.zt[n-1], m.stops[n-1] = z, stop
}

// stopZtunnel stops node n's ztunnel and waits until it has cleaned up.
func (m *mesh) stopZtunnel(n int) { m.stops[n-1]() }

// startEcho runs a plain TCP echo app on port 8080 inside pod p.
func startEcho(t testing.TB, p *testenv.Pod) { p.ServeTCP(t, "0.0.0.0:8080", testenv.Echo) }

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// roundTrip dials from pod `from` to `to`:8080 as an app would (no mark:
// captured) and checks the echo.
func roundTrip(t *testing.T, from, to *testenv.Pod) error {
	t.Helper()
	return roundTripAddr(t, from, to.Addr(8080))
}

// roundTripAddr is roundTrip to an address of the app (an IPv6 one, say).
func roundTripAddr(t *testing.T, from *testenv.Pod, addr string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("hello from " + podUID(from))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

func id(sa string) string { return "spiffe://cluster.local/ns/shop/sa/" + sa }

// findFlow waits for a flow record in log matching every key in want.
func findFlow(t testing.TB, log *logtest.Buffer, want map[string]any) map[string]any {
	t.Helper()
	var found map[string]any
	waitFor(t, fmt.Sprintf("flow %v", want), func() bool {
		for _, f := range log.JSONLines(t) {
			ok := true
			for k, v := range want {
				if f[k] != v {
					ok = false
					break
				}
			}
			if ok {
				found = f
				return true
			}
		}
		return false
	})
	return found
}

func TestZtunnel_PodToPodCarriesCallerIdentity(t *testing.T) {
	m := newMesh(t)
	alice, bob, server := m.topo.Pod(1, 1), m.topo.Pod(1, 2), m.topo.Pod(2, 1)
	t.Run("across nodes", func(t *testing.T) {
		capture := m.topo.Nodes[1].Capture(t)
		if err := roundTrip(t, alice, server); err != nil {
			t.Fatal(err)
		}
		capture.Stop()
		// On the wire between the nodes: only TCP to or from 15008, and
		// never the app's bytes.
		var tunnelBytes int
		for _, p := range capture.Packets() {
			if p.Src.Port() != 15008 && p.Dst.Port() != 15008 {
				t.Fatalf("packet outside the tunnel on the node link: %v -> %v", p.Src, p.Dst)
			}
			if bytes.Contains(p.Payload, []byte("hello from")) {
				t.Fatalf("app bytes in clear on the node link: %q", p.Payload)
			}
			tunnelBytes += len(p.Payload)
		}
		if tunnelBytes == 0 {
			t.Fatal("captured no tunnel traffic")
		}
		f := findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"),
			"dst.identity": id("server"), "decision": "allow", "transport": "hbone"})
		if f["bytes_sent"].(float64) == 0 {
			t.Errorf("flow counted no bytes: %v", f)
		}
		findFlow(t, m.logs[0], map[string]any{"reporter": "source", "src.identity": id("alice"),
			"dst.identity": id("server"), "transport": "hbone"})
		waitFor(t, "metrics with alice's principal", func() bool {
			return metricstest.Sum(t, m.regs[1], "istio_tcp_connections_closed_total", map[string]string{
				"reporter": "destination", "source_principal": "cluster.local/ns/shop/sa/alice",
				"destination_principal": "cluster.local/ns/shop/sa/server", "connection_security_policy": "mutual_tls",
			}) >= 1
		})
	})
	t.Run("same node", func(t *testing.T) {
		if err := roundTrip(t, bob, alice); err != nil {
			t.Fatal(err)
		}
		findFlow(t, m.logs[0], map[string]any{"reporter": "destination", "src.identity": id("bob"),
			"dst.identity": id("alice"), "transport": "hbone"})
	})
}

func allowOnly(sa string) *security.Authorization {
	return &security.Authorization{
		Name: "allow-" + sa, Namespace: "shop", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
			Principals: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/shop/sa/" + sa}}},
		}}}}}},
	}
}

func TestZtunnel_L4PolicyAllowsByPrincipal(t *testing.T) {
	m := newMesh(t)
	alice, bob, server := m.topo.Pod(1, 1), m.topo.Pod(1, 2), m.topo.Pod(2, 1)
	if err := m.store.Apply(state.Update{Policies: []*security.Authorization{allowOnly("alice")}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "policy", func() bool {
		return len(m.store.Current().PoliciesFor(m.store.Current().Workload(podUID(server)))) == 1
	})
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatalf("alice refused: %v", err)
	}
	if err := roundTrip(t, bob, server); err == nil {
		t.Fatal("bob was let through")
	}
	f := findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("bob"), "decision": "deny"})
	if f["policy"] != "shop/allow-alice" && !strings.Contains(fmt.Sprint(f["error"]), "denied") {
		t.Errorf("deny flow does not name the policy: %v", f)
	}
}

func TestZtunnel_NewDenyClosesOpenConnection(t *testing.T) {
	m := newMesh(t)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := alice.Dial(ctx, server.Addr(8080))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// Let it go idle until both ztunnels have parked its sockets (no
	// goroutine waits on them): the deny must reach it all the same.
	waitFor(t, "idle connection parked", func() bool { return hbone.ParkedConnections() >= 2 })
	// What policy is re-evaluated on (shown by /debug/connections): the
	// caller's identity and address and the port, from the tunnel stream.
	var in []ConnDebug
	for _, pd := range m.zt[1].Debug().Pods {
		for _, c := range pd.Connections {
			if c.Direction == "inbound" {
				in = append(in, c)
			}
		}
	}
	if len(in) != 1 || in[0].Peer != id("alice") || in[0].SrcIP != alice.IP.String() || in[0].Port != 8080 {
		t.Fatalf("inbound connections on the server's node = %+v, want one from %s (%s) to port 8080", in, id("alice"), alice.IP)
	}
	deny := allowOnly("alice")
	deny.Name, deny.Action = "deny-alice", security.Action_DENY
	if err := m.store.Apply(state.Update{Policies: []*security.Authorization{deny}}); err != nil {
		t.Fatal(err)
	}
	// The open connection is closed: reads end.
	if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
		t.Fatalf("read after deny: %v", err)
	}
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"),
		"decision": "deny", "policy": "shop/deny-alice"})
}

// isReset reports a connection the other side closed abruptly (not a
// timeout: a connection left open must fail the test).
func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout() || strings.Contains(err.Error(), "reset")
}

// setWorkload changes pod p's workload in the store.
func (m *mesh) setWorkload(t testing.TB, p *testenv.Pod, change func(w *workloadapi.Workload)) {
	t.Helper()
	w := proto.Clone(m.store.Current().Workload(podUID(p))).(*workloadapi.Workload)
	change(w)
	if err := m.store.Apply(state.Update{Workloads: []*workloadapi.Workload{w}}); err != nil {
		t.Fatal(err)
	}
}

// outsider takes pod (1,2) out of the mesh and returns it: a plaintext
// client outside the mesh. (The node itself is no outsider: its own
// connections, kubelet probes, are never captured.)
func outsider(t testing.TB, m *mesh) *testenv.Pod {
	t.Helper()
	p := m.topo.Pod(1, 2)
	m.setWorkload(t, p, func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_NONE })
	waitFor(t, "the outsider released", func() bool { return !captured(t, p) })
	return p
}

func captured(t testing.TB, p *testenv.Pod) bool {
	ok, err := redirect.Installed(p.Path)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestZtunnel_EnrollAndUnenrollRunningPod: flipping a running pod's tunnel
// protocol turns its traffic plaintext and back to mTLS, without touching
// the pod; unenrolling removes every rule.
func TestZtunnel_EnrollAndUnenrollRunningPod(t *testing.T) {
	m := newMesh(t)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	m.setWorkload(t, alice, func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_NONE })
	waitFor(t, "alice's rules removed", func() bool { return !captured(t, alice) })
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatal(err)
	}
	// The server is still enrolled: it sees a plaintext caller with no identity.
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "transport": "plaintext", "decision": "allow"})

	m.setWorkload(t, alice, func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE })
	waitFor(t, "alice captured again", func() bool { return captured(t, alice) && m.zt[0].Ready() })
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatal(err)
	}
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"), "transport": "hbone"})
}

// TestZtunnel_StrictRefusesPlaintext: with STRICT PeerAuthentication (as
// the control plane sends it) a caller outside the mesh is refused.
func TestZtunnel_StrictRefusesPlaintext(t *testing.T) {
	m := newMesh(t)
	outsider, server := m.topo.Pod(2, 2), m.topo.Pod(2, 1)
	m.setWorkload(t, outsider, func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_NONE })
	waitFor(t, "outsider not captured", func() bool { return !captured(t, outsider) })
	if err := roundTrip(t, outsider, server); err != nil {
		t.Fatalf("plaintext before STRICT: %v", err)
	}
	strict := authz.StrictPolicy("shop")
	if err := m.store.Apply(state.Update{Policies: []*security.Authorization{strict}}); err != nil {
		t.Fatal(err)
	}
	m.setWorkload(t, server, func(w *workloadapi.Workload) { w.AuthorizationPolicies = []string{authz.Key(strict)} })
	waitFor(t, "STRICT to apply", func() bool {
		return len(m.store.Current().PoliciesFor(m.store.Current().Workload(podUID(server)))) == 1
	})
	if err := roundTrip(t, outsider, server); err == nil {
		t.Fatal("plaintext caller let through under STRICT")
	}
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "transport": "plaintext", "decision": "deny"})
	if err := roundTrip(t, m.topo.Pod(1, 1), server); err != nil {
		t.Fatalf("mesh caller refused under STRICT: %v", err)
	}
}

// rawClient is a hand-made HBONE client in pod p's namespace presenting svid.
func rawClient(t *testing.T, p *testenv.Pod, svid *x509svid.SVID, trust *x509bundle.Bundle) *hbone.Client {
	src := identity.NewStaticSource(svid, trust)
	cl, err := hbone.NewClient(hbone.ClientConfig{
		TLSConfig: func(_, dst spiffeid.ID) (*tls.Config, error) { return identity.ClientConfig(src, trust, dst), nil },
		Dial: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return netns.DialTCP(ctx, p.Path, addr, netns.WithMark(redirect.ZtunnelMark))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func TestZtunnel_InboundRefusesBadTunnels(t *testing.T) {
	m := newMesh(t)
	alice, server, other := m.topo.Pod(1, 1), m.topo.Pod(2, 1), m.topo.Pod(2, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	target := hbone.Target{Source: spiffeid.RequireFromString(id("alice")), Destination: spiffeid.RequireFromString(id("server")),
		Address: netip.AddrPortFrom(server.IP, 15008), Authority: netip.AddrPortFrom(other.IP, 8080)}

	t.Run("authority of another pod is 400", func(t *testing.T) {
		svid, err := m.ca.NewSVID(target.Source, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		_, err = rawClient(t, alice, svid, m.ca.Bundle()).Dial(ctx, target)
		var se *hbone.StatusError
		if !errors.As(err, &se) || se.Code != 400 {
			t.Fatalf("Dial = %v, want 400", err)
		}
	})
	t.Run("foreign CA fails the handshake", func(t *testing.T) {
		foreign, err := ca.NewSelfSigned(td, ca.Options{})
		if err != nil {
			t.Fatal(err)
		}
		svid, err := foreign.NewSVID(target.Source, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		target := target
		target.Authority = netip.AddrPortFrom(server.IP, 8080)
		c, err := rawClient(t, alice, svid, m.ca.Bundle()).Dial(ctx, target)
		if err == nil {
			c.Write([]byte("x"))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil {
			t.Fatal("tunnel opened with a foreign certificate")
		}
		f := findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "decision": "deny", "transport": "hbone"})
		if !strings.Contains(fmt.Sprint(f["error"]), "not signed by a trusted authority") {
			t.Fatalf("refusal flow: %v", f)
		}
	})
}

// TestZtunnel_RestartRecapturesPods: a stopped ztunnel leaves its pods'
// rules in place, so while no ztunnel runs a client outside the mesh is
// refused instead of reaching a pod in plaintext past its policies (fail
// closed); a new ztunnel takes the pods over and a client retrying through
// the restart gets through. With RemoveCaptureOnExit the rules go.
func TestZtunnel_RestartRecapturesPods(t *testing.T) {
	m := newMesh(t)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	out := outsider(t, m)
	m.stopZtunnel(2)
	if !captured(t, server) || !captured(t, m.topo.Pod(2, 2)) {
		t.Fatal("a stopped ztunnel removed its pods' rules")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := out.Dial(ctx, server.Addr(8080)); err == nil {
		c.Close()
		t.Fatal("with no ztunnel, a plaintext client outside the mesh reached the server")
	}
	m.startZtunnel(t, 2, func(c *Config) { c.RemoveCaptureOnExit = true })
	waitFor(t, "retrying client gets through", func() bool { return roundTrip(t, alice, server) == nil })
	waitFor(t, "pods served again", func() bool { return captured(t, server) && m.zt[1].Ready() })
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatal(err)
	}
	findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"), "transport": "hbone"})

	m.stopZtunnel(2)
	if captured(t, server) || captured(t, m.topo.Pod(2, 2)) {
		t.Fatal("rules left behind by a ztunnel stopped with RemoveCaptureOnExit")
	}
}

// TestZtunnel_PodLeftTheMeshWhileDownIsReleased: a pod whose namespace left
// the mesh while no ztunnel ran keeps the rules of the last one until the
// next ztunnel learns it is out, and then loses them; enrolled pods keep
// theirs.
func TestZtunnel_PodLeftTheMeshWhileDownIsReleased(t *testing.T) {
	m := newMesh(t)
	server, other := m.topo.Pod(2, 1), m.topo.Pod(2, 2)
	m.stopZtunnel(2)
	m.setWorkload(t, server, func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_NONE })
	m.startZtunnel(t, 2)
	waitFor(t, "rules of the pod out of the mesh removed", func() bool { return !captured(t, server) })
	waitFor(t, "the other pod served", func() bool { return captured(t, other) && m.zt[1].Ready() })
	if err := roundTrip(t, m.topo.Pod(1, 1), server); err != nil {
		t.Fatalf("client -> pod out of the mesh: %v", err)
	}
}

// TestZtunnel_ThousandConcurrentConnections: 1,000 connections open at once
// between the pods, each echoing its own bytes.
func TestZtunnel_ThousandConcurrentConnections(t *testing.T) {
	m := newMesh(t)
	pods := []*testenv.Pod{m.topo.Pod(1, 1), m.topo.Pod(1, 2), m.topo.Pod(2, 1), m.topo.Pod(2, 2)}
	const conns = 1000
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var open, release sync.WaitGroup
	open.Add(conns)
	release.Add(1)
	errs := make(chan error, conns)
	for i := range conns {
		from, to := pods[i%4], pods[(i+1+i/4)%4]
		if from == to {
			to = pods[(i+2)%4]
		}
		go func() {
			c, err := from.Dial(ctx, to.Addr(8080))
			if err != nil {
				open.Done()
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(50 * time.Second))
			msg := bytes.Repeat([]byte{byte(i)}, 1024+i)
			_, err = c.Write(msg)
			got := make([]byte, len(msg))
			if err == nil {
				_, err = io.ReadFull(c, got)
			}
			if err == nil && !bytes.Equal(got, msg) {
				err = errors.New("echo mismatch")
			}
			open.Done()
			release.Wait()
			errs <- err
		}()
	}
	open.Wait()
	release.Done()
	for range conns {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestZtunnel_DrainKeepsServingNewConnections: a stopping ztunnel keeps
// serving its pods, new connections included, while an open connection
// drains, and exits as soon as it ends, well before the drain timeout;
// then the pods' connections are refused (fail closed) until the next one.
func TestZtunnel_DrainKeepsServingNewConnections(t *testing.T) {
	m := newMesh(t)
	alice, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	out := outsider(t, m)
	if d := drainWithHeldConnection(t, m, alice, server); d > 15*time.Second {
		t.Errorf("drain took %v, want it to end with the last connection", d)
	}
	if !captured(t, server) {
		t.Fatal("capture removed on exit")
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	if c, err := out.Dial(dctx, server.Addr(8080)); err == nil {
		c.Close()
		t.Fatal("after the drain, a plaintext client outside the mesh reached the server")
	}
}

// drainWithHeldConnection restarts node 2's ztunnel with a 20 s drain
// timeout, holds a connection from client to server open through it, stops
// it, and checks that while it drains it is not Ready, still serves a new
// connection and does not exit; then closes the held connection and waits
// for the exit. It returns how long the drain took.
func drainWithHeldConnection(t *testing.T, m *mesh, client, server *testenv.Pod) time.Duration {
	t.Helper()
	m.stopZtunnel(2)
	m.startZtunnel(t, 2, func(c *Config) { c.DrainTimeout = 20 * time.Second })
	waitFor(t, "ztunnel 2 ready", func() bool { return m.zt[1].Ready() && len(m.zt[1].Pods()) == 2 })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	open, err := client.Dial(ctx, server.Addr(8080))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	open.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := open.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(open, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}

	stopping := time.Now()
	stopped := make(chan struct{})
	go func() { m.stopZtunnel(2); close(stopped) }()
	waitFor(t, "ztunnel 2 draining", m.zt[1].Draining)
	if m.zt[1].Ready() {
		t.Error("a draining ztunnel reports Ready")
	}
	if err := roundTrip(t, client, server); err != nil {
		t.Fatalf("new connection while draining: %v", err)
	}
	select {
	case <-stopped:
		t.Fatal("ztunnel stopped before its open connection ended")
	default:
	}
	open.Close()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("ztunnel still draining 10s after its last connection ended")
	}
	return time.Since(stopping)
}
