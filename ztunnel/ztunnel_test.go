package ztunnel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
	"github.com/ambientmesh/ambient/ztunnel/certs"
	"github.com/ambientmesh/ambient/ztunnel/state"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// syncBuffer is a goroutine-safe flow log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// flows parses the records written so far.
func (s *syncBuffer) flows(t *testing.T) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("bad flow line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// mesh is a 2-node × 2-pod topology with one ztunnel per node.
type mesh struct {
	topo  *testenv.Topology
	store *state.Store
	zt    []*Ztunnel
	logs  []*syncBuffer
	sa    map[*testenv.Pod]string
}

// serviceAccounts of pod (node, index).
var serviceAccounts = map[[2]int]string{{1, 1}: "alice", {1, 2}: "bob", {2, 1}: "server", {2, 2}: "other"}

func podUID(p *testenv.Pod) string { return fmt.Sprintf("pod-%d-%d", p.Node.Index, p.Index) }

func newMesh(t *testing.T) *mesh {
	testenv.RequireRoot(t)
	m := &mesh{topo: testenv.NewTopology(t, testenv.Spec{Nodes: 2, PodsPerNode: 2}), store: state.NewStore(),
		sa: map[*testenv.Pod]string{}}
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var workloads []*workloadapi.Workload
	for _, n := range m.topo.Nodes {
		for _, p := range n.Pods {
			sa := serviceAccounts[[2]int{n.Index, p.Index}]
			m.sa[p] = sa
			workloads = append(workloads, &workloadapi.Workload{
				Uid: podUID(p), Name: fmt.Sprintf("%s-%d", sa, p.Index), Namespace: "shop", ServiceAccount: sa,
				Node: fmt.Sprintf("node-%d", n.Index), Addresses: [][]byte{p.IP.AsSlice()},
				TunnelProtocol: workloadapi.TunnelProtocol_HBONE, Status: workloadapi.WorkloadStatus_HEALTHY,
			})
			startEcho(t, p)
		}
	}
	if err := m.store.Replace(state.Snapshot{Workloads: workloads}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, n := range m.topo.Nodes {
		cm, err := certs.New(certs.Config{Sign: certs.LocalSigner(authority, time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cm.Close)
		log := &syncBuffer{}
		z, err := New(Config{Node: fmt.Sprintf("node-%d", n.Index), Store: m.store, Certs: cm,
			FlowLog: telemetry.NewFlowLog(log), DrainTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range n.Pods {
			z.AddPod(podUID(p), p.Path)
		}
		wg.Add(1)
		go func() { defer wg.Done(); z.Run(ctx) }()
		m.zt = append(m.zt, z)
		m.logs = append(m.logs, log)
	}
	waitFor(t, "ztunnels ready", func() bool { return m.zt[0].Ready() && m.zt[1].Ready() && len(m.zt[0].Pods()) == 2 })
	return m
}

// startEcho runs a plain TCP echo app on port 8080 inside pod p.
func startEcho(t *testing.T, p *testenv.Pod) {
	ln, err := p.Listen("0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
}

func waitFor(t *testing.T, what string, cond func() bool) {
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, to.Addr(8080))
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
func findFlow(t *testing.T, log *syncBuffer, want map[string]any) map[string]any {
	t.Helper()
	var found map[string]any
	waitFor(t, fmt.Sprintf("flow %v", want), func() bool {
		for _, f := range log.flows(t) {
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
		if err := roundTrip(t, alice, server); err != nil {
			t.Fatal(err)
		}
		f := findFlow(t, m.logs[1], map[string]any{"reporter": "destination", "src.identity": id("alice"),
			"dst.identity": id("server"), "decision": "allow", "transport": "hbone"})
		if f["bytes_sent"].(float64) == 0 {
			t.Errorf("flow counted no bytes: %v", f)
		}
		findFlow(t, m.logs[0], map[string]any{"reporter": "source", "src.identity": id("alice"),
			"dst.identity": id("server"), "transport": "hbone"})
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

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) || strings.Contains(err.Error(), "reset")
}
