package istiod

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/testenv"
)

// strictYAML is the Istio documentation's namespace-wide STRICT mTLS.
const strictYAML = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: shop
spec:
  mtls:
    mode: STRICT
`

// denyAliceYAML denies alice at the server pod.
const denyAliceYAML = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-alice, namespace: shop}
spec:
  selector:
    matchLabels: {app: server}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/alice"]
`

// strictPolicy is the key of the policy a STRICT PeerAuthentication
// converts to: Istio's static one in the root namespace.
const strictPolicy = "istio-system/istio_converted_static_strict"

// TestMesh_ZtunnelBehaviourWithIstiod runs the ztunnel scenarios of the
// in-process tests (package ztunnel) against the ztunnel binaries with
// config and certificates from istiod-lite, every change made through the
// Kubernetes API as a user would. The subtests share one cluster and mesh;
// each starts from the policy-free, fully enrolled mesh and restores it.
func TestMesh_ZtunnelBehaviourWithIstiod(t *testing.T) {
	m := newMesh(t)
	m.startZtunnels()
	m.waitState(t, withoutPolicy)
	n1, n2 := m.zt[0], m.zt[1]

	// baseline waits for the mesh every subtest starts from and returns to.
	baseline := func(t *testing.T) {
		t.Helper()
		m.waitState(t, withoutPolicy)
		for _, p := range []podSpec{alice, bob, server} {
			waitFor(t, p.name+" captured", func() (bool, string) { return captured(t, m.pod(p)), "no table inet ambient" })
		}
		for _, z := range m.zt {
			m.waitReady(t, z)
		}
	}

	t.Run("TwoHundredConcurrentConnections", func(t *testing.T) {
		baseline(t)
		since := []int{len(n1.flows(t)), len(n2.flows(t))}
		pods := []podSpec{alice, bob, server}
		const conns = 200
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var open, release sync.WaitGroup
		open.Add(conns)
		release.Add(1)
		errs := make(chan error, conns)
		for i := range conns {
			from, to := pods[i%3], pods[(i+1+(i/3)%2)%3]
			go func() {
				c, err := func() (net.Conn, error) {
					defer open.Done()
					c, err := m.pod(from).Dial(ctx, m.pod(to).Addr(8080))
					if err != nil {
						return nil, err
					}
					c.SetDeadline(time.Now().Add(25 * time.Second))
					msg := bytes.Repeat([]byte{byte(i)}, 16<<10+i)
					got := make([]byte, len(msg))
					if _, err = c.Write(msg); err == nil {
						_, err = io.ReadFull(c, got)
					}
					if err == nil && !bytes.Equal(got, msg) {
						err = errors.New("echo differs from what was sent")
					}
					return c, err
				}()
				release.Wait() // every connection is open at once
				if c != nil {
					c.Close()
				}
				if err != nil {
					err = fmt.Errorf("connection %d %s -> %s: %w", i, from.name, to.name, err)
				}
				errs <- err
			}()
		}
		open.Wait()
		release.Done()
		for range conns {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		// Every one went through the mesh: one destination record each,
		// carried over HBONE with the caller's identity.
		waitFor(t, fmt.Sprintf("%d destination HBONE flow records", conns), func() (bool, string) {
			n := 0
			for i, z := range m.zt {
				for _, f := range z.flows(t)[since[i]:] {
					if flowMatches(f, map[string]any{"reporter": "destination", "transport": "hbone", "decision": "allow"}) &&
						f["src.identity"] != nil {
						n++
					}
				}
			}
			return n == conns, fmt.Sprint(n)
		})
	})

	t.Run("NamespaceLabelEnrolsAndUnenrolsRunningPods", func(t *testing.T) {
		baseline(t)
		uid := kubectl(t, m, "get", "pod", "alice", "-n", "shop", "-o", "jsonpath={.metadata.uid}")
		kubectl(t, m, "label", "namespace", "shop", "istio.io/dataplane-mode-")
		t.Cleanup(func() { m.kube.Kubectl("label", "--overwrite", "namespace", "shop", "istio.io/dataplane-mode=ambient") })

		// istiod-lite sends the pods with tunnel protocol NONE (TCP in the
		// dump); the ztunnels remove their capture.
		for _, p := range []podSpec{alice, bob, server} {
			waitProtocol(t, m, p, "TCP")
			waitFor(t, p.name+" rules removed", func() (bool, string) { return !captured(t, m.pod(p)), "table inet ambient still there" })
		}
		since := []int{len(n1.flows(t)), len(n2.flows(t))}
		msg := "plain from alice " + time.Now().Format(time.RFC3339Nano)
		pkts := capture(t, m.topo.Nodes[0], func() error { return m.echoOnce(alice, m.pod(server).Addr(8080), msg) })
		if !sentPlain(pkts, netip.AddrPortFrom(m.pod(server).IP, 8080), msg) {
			t.Errorf("alice's bytes did not cross node-1's link in plaintext to the server's port 8080 (%d packets)", len(pkts))
		}
		for i, z := range m.zt {
			if recs := z.flows(t)[since[i]:]; len(recs) > 0 {
				t.Errorf("%s recorded flows for traffic of unenrolled pods: %v", z.proc.name, recs)
			}
		}

		kubectl(t, m, "label", "namespace", "shop", "istio.io/dataplane-mode=ambient")
		for _, p := range []podSpec{alice, bob, server} {
			waitProtocol(t, m, p, "HBONE")
		}
		baseline(t)
		msg = "mtls from alice " + time.Now().Format(time.RFC3339Nano)
		pkts = capture(t, m.topo.Nodes[0], func() error { return m.echoOnce(alice, m.pod(server).Addr(8080), msg) })
		if sentPlain(pkts, netip.AddrPortFrom(m.pod(server).IP, 8080), msg) || !sentTo(pkts, netip.AddrPortFrom(m.pod(server).IP, 15008)) {
			t.Errorf("alice's traffic after enrolment not carried over HBONE only (%d packets)", len(pkts))
		}
		n2.findFlowSince(t, since[1], map[string]any{"reporter": "destination", "src.identity": alice.id(), "transport": "hbone", "decision": "allow"})
		if got := kubectl(t, m, "get", "pod", "alice", "-n", "shop", "-o", "jsonpath={.metadata.uid}"); got != uid {
			t.Errorf("pod alice replaced (uid %s, was %s)", got, uid)
		}
	})

	t.Run("PodLabelNoneOptsOutRunningPod", func(t *testing.T) {
		baseline(t)
		kubectl(t, m, "label", "pod", "alice", "-n", "shop", "istio.io/dataplane-mode=none")
		t.Cleanup(func() { m.kube.Kubectl("label", "pod", "alice", "-n", "shop", "istio.io/dataplane-mode-") })
		waitProtocol(t, m, alice, "TCP")
		waitFor(t, "alice's rules removed", func() (bool, string) { return !captured(t, m.pod(alice)), "table inet ambient still there" })
		if !captured(t, m.pod(bob)) || !captured(t, m.pod(server)) {
			t.Fatal("opting alice out uncaptured other pods")
		}
		// The server is still enrolled: it sees a plaintext caller, with no
		// identity.
		since := len(n2.flows(t))
		if err := m.roundTrip(alice, m.pod(server).Addr(8080)); err != nil {
			t.Fatalf("opted-out alice -> server: %v", err)
		}
		f := n2.findFlowSince(t, since, map[string]any{"reporter": "destination", "transport": "plaintext", "decision": "allow"})
		if f["src.identity"] != nil || !strings.HasPrefix(fmt.Sprint(f["src.addr"]), m.pod(alice).IP.String()+":") {
			t.Errorf("plaintext flow not from alice's address without identity: %v", f)
		}

		kubectl(t, m, "label", "pod", "alice", "-n", "shop", "istio.io/dataplane-mode-")
		waitProtocol(t, m, alice, "HBONE")
		baseline(t)
		since = len(n2.flows(t))
		if err := m.roundTrip(alice, m.pod(server).Addr(8080)); err != nil {
			t.Fatalf("re-enrolled alice -> server: %v", err)
		}
		n2.findFlowSince(t, since, map[string]any{"reporter": "destination", "src.identity": alice.id(), "transport": "hbone"})
	})

	t.Run("StrictPeerAuthenticationRefusesOutsiders", func(t *testing.T) {
		baseline(t)
		// node-1 itself, outside the mesh, dials the server pod.
		outsider := m.topo.Nodes[0]
		if err := nodeRoundTrip(outsider, m.pod(server).Addr(8080)); err != nil {
			t.Fatalf("outsider before STRICT: %v", err)
		}
		if err := m.kube.ApplyYAML(strictYAML); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.kube.Kubectl("delete", "peerauthentication", "default", "-n", "shop", "--ignore-not-found") })
		m.waitState(t, meshState{Workloads: uids(alice, bob, server), Services: services, Endpoints: serverEndpoints,
			Policies: []string{strictPolicy},
			Bindings: []string{alice.uid() + " " + strictPolicy, bob.uid() + " " + strictPolicy, server.uid() + " " + strictPolicy}})
		since := len(n2.flows(t))
		if err := nodeRoundTrip(outsider, m.pod(server).Addr(8080)); err == nil {
			t.Error("outsider let through under STRICT")
		}
		f := n2.findFlowSince(t, since, map[string]any{"reporter": "destination", "transport": "plaintext", "decision": "deny"})
		if !strings.HasPrefix(fmt.Sprint(f["src.addr"]), outsider.IP.String()+":") {
			t.Errorf("deny flow not for the outsider %s: %v", outsider.IP, f)
		}
		for _, p := range []podSpec{alice, bob} {
			if err := m.roundTrip(p, m.pod(server).Addr(8080)); err != nil {
				t.Errorf("meshed %s refused under STRICT: %v", p.name, err)
			}
		}
		kubectl(t, m, "delete", "peerauthentication", "default", "-n", "shop")
		m.waitState(t, withoutPolicy)
		if err := nodeRoundTrip(outsider, m.pod(server).Addr(8080)); err != nil {
			t.Errorf("outsider after STRICT was deleted: %v", err)
		}
	})

	t.Run("DenyClosesIdleConnectionAndBeatsAllow", func(t *testing.T) {
		baseline(t)
		t.Cleanup(func() {
			m.kube.Kubectl("delete", "authorizationpolicy", "deny-alice", "allow-alice", "-n", "shop", "--ignore-not-found")
		})
		held, err := m.dial(alice, m.pod(server).Addr(8080))
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		if err := echo(held, "once"); err != nil {
			t.Fatal(err)
		}
		// Idle long enough for both ztunnels to park the connection's
		// sockets (after 2 s quiet, internal/hbone/park.go): the DENY must
		// reach it there.
		time.Sleep(5 * time.Second)
		since := len(n2.flows(t))
		if err := m.kube.ApplyYAML(denyAliceYAML); err != nil {
			t.Fatal(err)
		}
		applied := time.Now()
		held.SetDeadline(applied.Add(15 * time.Second))
		if _, err := io.Copy(io.Discard, held); err != nil && !isReset(err) {
			t.Fatalf("held connection after the DENY: %v", err)
		}
		closed := time.Since(applied)
		t.Logf("idle connection closed %v after kubectl apply of the DENY", closed.Round(time.Millisecond))
		if closed > 5*time.Second {
			t.Errorf("idle connection closed only %v after the DENY was applied", closed)
		}
		n2.findFlowSince(t, since, map[string]any{"reporter": "destination", "src.identity": alice.id(),
			"decision": "deny", "policy": "shop/deny-alice"})

		if err := m.kube.ApplyYAML(allowAliceYAML); err != nil {
			t.Fatal(err)
		}
		m.waitState(t, meshState{Workloads: uids(alice, bob, server), Services: services, Endpoints: serverEndpoints,
			Policies: []string{"shop/allow-alice", "shop/deny-alice"},
			Bindings: []string{server.uid() + " shop/allow-alice", server.uid() + " shop/deny-alice"}})
		sinceAllow := len(n2.flows(t))
		if err := m.roundTrip(alice, m.pod(server).Addr(8080)); err == nil {
			t.Error("alice let through: ALLOW beat DENY")
		}
		n2.findFlowSince(t, sinceAllow, map[string]any{"reporter": "destination", "src.identity": alice.id(),
			"decision": "deny", "policy": "shop/deny-alice"})
		// The held connection ended in exactly one record.
		held1 := 0
		for _, f := range n2.flows(t)[since:sinceAllow] {
			if flowMatches(f, map[string]any{"reporter": "destination", "src.identity": alice.id(), "policy": "shop/deny-alice"}) {
				held1++
			}
		}
		if held1 != 1 {
			t.Errorf("the connection closed by the DENY has %d destination flow records, want 1", held1)
		}
		if err := m.roundTrip(bob, m.pod(server).Addr(8080)); err == nil {
			t.Error("bob let through by an ALLOW naming only alice")
		}
		kubectl(t, m, "delete", "authorizationpolicy", "deny-alice", "allow-alice", "-n", "shop")
	})

	t.Run("InboundRefusesBadTunnels", func(t *testing.T) {
		baseline(t)
		td := spiffeid.RequireTrustDomainFromString("cluster.local")
		mesh := m.istiodCA(t, td)
		// Hand-made HBONE clients in node-1's namespace (outside every
		// pod's capture) dial the server pod's 15008.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		target := hbone.Target{Source: spiffeid.RequireFromString(alice.id()), Destination: spiffeid.RequireFromString(server.id()),
			Address: netip.AddrPortFrom(m.pod(server).IP, 15008), Authority: netip.AddrPortFrom(m.topo.Pod(2, 2).IP, 8080)}

		svid, err := mesh.NewSVID(target.Source, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		_, err = rawClient(t, m.topo.Nodes[0], svid, mesh.Bundle()).Dial(ctx, target)
		if se := (*hbone.StatusError)(nil); !errors.As(err, &se) || se.Code != 400 {
			t.Errorf("CONNECT to another pod's IP with an istiod-lite certificate = %v, want 400", err)
		}

		foreign, err := ca.NewSelfSigned(td, ca.Options{})
		if err != nil {
			t.Fatal(err)
		}
		svid, err = foreign.NewSVID(target.Source, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		target.Authority = netip.AddrPortFrom(m.pod(server).IP, 8080)
		since := len(n2.flows(t))
		c, err := rawClient(t, m.topo.Nodes[0], svid, mesh.Bundle()).Dial(ctx, target)
		if err == nil {
			c.Write([]byte("x"))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil {
			t.Fatal("tunnel opened with a certificate of a foreign CA")
		}
		f := n2.findFlowSince(t, since, map[string]any{"reporter": "destination", "decision": "deny", "transport": "hbone"})
		if !strings.Contains(fmt.Sprint(f["error"]), "not signed by a trusted authority") {
			t.Errorf("refusal flow: %v", f)
		}
	})

	t.Run("RestartedZtunnelRecapturesPodsFromIstiod", func(t *testing.T) {
		baseline(t)
		netnsBefore := netnsList(t, m.topo.Prefix)
		stopping := time.Now()
		n2.proc.stop()
		t.Logf("%s drained and exited %v after SIGTERM", n2.proc.name, time.Since(stopping).Round(time.Millisecond))
		if code := n2.proc.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("%s exited with %d on SIGTERM, want a clean drain:\n%s", n2.proc.name, code, tail(n2.proc.log, 20))
		}
		// Fail closed: the pods keep their capture, so while no ztunnel
		// runs a client outside the mesh is refused rather than reaching
		// the server in plaintext past its policies (ztunnel's
		// TestZtunnel_RestartRecapturesPods shows the refusal).
		if tables := nftTables(t, m.pod(server)); strings.Count(tables, "table inet ambient") != 1 {
			t.Errorf("server after its ztunnel stopped: nft tables %q, want its capture kept", tables)
		}

		// A client retrying from the other node gets through once the
		// restarted ztunnel serves the server again.
		since := len(n2.flows(t))
		type retry struct {
			attempts []string // error and duration of each failed attempt
			err      error
		}
		retried := make(chan retry, 1)
		go func() {
			var r retry
			deadline := time.Now().Add(waitTimeout)
			for {
				start := time.Now()
				r.err = m.roundTrip(alice, m.pod(server).Addr(8080))
				if r.err == nil || time.Now().After(deadline) {
					retried <- r
					return
				}
				r.attempts = append(r.attempts, fmt.Sprintf("%v after %v", r.err, time.Since(start).Round(time.Millisecond)))
				time.Sleep(50 * time.Millisecond)
			}
		}()
		restarting := time.Now()
		m.startZtunnel(n2)
		m.waitReady(t, n2)
		t.Logf("%s ready %v after its restart", n2.proc.name, time.Since(restarting).Round(time.Millisecond))
		r := <-retried
		if r.err != nil {
			t.Fatalf("client retrying through the restart: still failing: %v; attempts: %q", r.err, r.attempts)
		}
		t.Logf("client retrying through the restart got through %v after the restart, after %d failed attempts %q",
			time.Since(restarting).Round(time.Millisecond), len(r.attempts), r.attempts)
		if tables := nftTables(t, m.pod(server)); strings.Count(tables, "table inet ambient") != 1 {
			t.Errorf("server's nft tables after the restart: %q, want table inet ambient once", tables)
		}
		if got := netnsList(t, m.topo.Prefix); got != netnsBefore {
			t.Errorf("network namespaces changed across the restart:\nbefore %s\nafter %s", netnsBefore, got)
		}
		// The new process took its config and certificates from istiod-lite.
		m.waitState(t, withoutPolicy)
		if v := n2.metric("istio_xds_connected"); v != 1 {
			t.Errorf("restarted ztunnel istio_xds_connected = %v", v)
		}
		m.checkCertFromIstiod(t, n2, server.id())
		if v := n2.metric(`istio_agent_num_outgoing_requests{request_type="csr"}`); v != 1 {
			t.Errorf("restarted ztunnel sent %v CSRs, want 1 (server)", v)
		}
		n2.findFlowSince(t, since, map[string]any{"reporter": "destination", "src.identity": alice.id(), "dst.identity": server.id(),
			"transport": "hbone", "decision": "allow"})
	})
}

// kubectl runs kubectl for subtest t and returns its trimmed output.
func kubectl(t *testing.T, m *mesh, args ...string) string {
	t.Helper()
	out, err := m.kube.Kubectl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// waitProtocol waits until the ztunnel of p's node holds p's Workload with
// tunnel protocol want as the dump shows it (HBONE: enrolled; TCP: NONE,
// not enrolled), the field ztunnel decides capture by.
func waitProtocol(t *testing.T, m *mesh, p podSpec, want string) {
	t.Helper()
	z := m.zt[p.node-1]
	waitFor(t, fmt.Sprintf("%s: %s protocol %s", z.proc.name, p.name, want), func() (bool, string) {
		for _, w := range z.dump(t).Workloads {
			if w.UID == p.uid() {
				return w.Protocol == want, w.Protocol
			}
		}
		return false, "no workload"
	})
}

// nftTables lists the nftables tables in pod p's namespace, as a user would
// with `ip netns exec <pod> nft list tables`.
func nftTables(t *testing.T, p *testenv.Pod) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := p.Command(ctx, "nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables in %s: %v\n%s", p.Name, err, out)
	}
	return strings.TrimSpace(string(out))
}

// captured reports whether pod p has ztunnel's capture table.
func captured(t *testing.T, p *testenv.Pod) bool {
	t.Helper()
	for _, l := range strings.Split(nftTables(t, p), "\n") {
		if strings.TrimSpace(l) == "table inet ambient" {
			return true
		}
	}
	return false
}

// netnsList is `ip netns list`, only the namespaces whose names start with
// prefix (other tests create their own at the same time).
func netnsList(t *testing.T, prefix string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	var ours []string
	for _, line := range strings.Split(string(out), "\n") {
		if name, _, _ := strings.Cut(strings.TrimSpace(line), " "); strings.HasPrefix(name, prefix) {
			ours = append(ours, name)
		}
	}
	slices.Sort(ours)
	return strings.Join(ours, " ")
}

// echoOnce opens a connection from `from` to addr and echoes msg.
func (m *mesh) echoOnce(from podSpec, addr, msg string) error {
	c, err := m.dial(from, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c, msg)
}

// capture runs fn while capturing on node n's link and returns the packets.
func capture(t *testing.T, n *testenv.Node, fn func() error) []testenv.Packet {
	t.Helper()
	c := n.Capture(t)
	err := fn()
	c.Stop()
	if err != nil {
		t.Fatal(err)
	}
	return c.Packets()
}

// sentPlain reports whether a TCP packet to dst carried msg in the clear.
func sentPlain(pkts []testenv.Packet, dst netip.AddrPort, msg string) bool {
	for _, p := range pkts {
		if p.Dst == dst && bytes.Contains(p.Payload, []byte(msg)) {
			return true
		}
	}
	return false
}

// sentTo reports whether any packet went to dst.
func sentTo(pkts []testenv.Packet, dst netip.AddrPort) bool {
	for _, p := range pkts {
		if p.Dst == dst {
			return true
		}
	}
	return false
}

// nodeRoundTrip echoes once over a plain connection from node n's own
// namespace: a client outside the mesh.
func nodeRoundTrip(n *testenv.Node, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := n.Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c, "hello from "+n.Name)
}

// isReset reports a connection the other side closed abruptly (not a
// timeout: a connection left open must fail the test).
func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout() || strings.Contains(err.Error(), "reset")
}

// istiodCA loads istiod-lite's signing CA from the istio-ca-secret it
// created, as a cluster admin could.
func (m *mesh) istiodCA(t *testing.T, td spiffeid.TrustDomain) *ca.Authority {
	t.Helper()
	var secret struct {
		Data map[string]string `json:"data"`
	}
	if err := json.Unmarshal([]byte(kubectl(t, m, "get", "secret", "istio-ca-secret", "-n", "istio-system", "-o", "json")), &secret); err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{}
	for k, v := range secret.Data {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			t.Fatal(err)
		}
		data[k] = b
	}
	a, err := ca.LoadSecretData(data, td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// rawClient is a hand-made HBONE client in node n's namespace presenting
// svid and trusting trust.
func rawClient(t *testing.T, n *testenv.Node, svid *x509svid.SVID, trust *x509bundle.Bundle) *hbone.Client {
	t.Helper()
	src := identity.NewStaticSource(svid, trust)
	cl, err := hbone.NewClient(hbone.ClientConfig{
		TLSConfig: func(_, dst spiffeid.ID) (*tls.Config, error) { return identity.ClientConfig(src, trust, dst), nil },
		Dial: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return n.Dial(ctx, addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}
