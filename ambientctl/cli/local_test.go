package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/ambientctl/cli"
	"github.com/ambientmesh/ambient/ambientctl/ztunnels"
	"github.com/ambientmesh/ambient/ambientctl/ztunnels/ztunnelstest"
	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/logtest"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/ztunnel/admin"
)

// localCluster is two simulated nodes, each with a real ztunnel admin
// server on 127.0.0.1:15000 in its network namespace, and the state file
// describing them.
type localCluster struct {
	topo  *testenv.Topology
	state string // the state file
	feeds []*telemetry.Feed
	logs  []*telemetry.FlowLog
}

const localServer = "https://127.0.0.1:16443"

func startLocalCluster(t *testing.T) *localCluster {
	t.Helper()
	testenv.RequireRoot(t)
	lc := &localCluster{topo: testenv.NewTopology(t, testenv.Spec{Nodes: 2})}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	certsOf := func(sas ...string) []admin.Certificate {
		var out []admin.Certificate
		for _, sa := range sas {
			id := spiffeid.RequireFromPath(td, "/ns/shop/sa/"+sa)
			svid, err := authority.NewSVIDAt(id, time.Now().Add(-time.Minute), 24*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, admin.Certificate{Identity: id.String(), State: "Available", CertChain: []admin.Cert{
				admin.NewCert(svid.Certificates[0]), admin.NewCert(authority.Certificate())}})
		}
		return out
	}
	st := &ztunnels.ClusterState{Name: "test-local", Server: localServer}
	for i, n := range lc.topo.Nodes {
		name := fmt.Sprintf("node-%d", i+1)
		feed := telemetry.NewFeed(100)
		lc.feeds = append(lc.feeds, feed)
		lc.logs = append(lc.logs, telemetry.NewFlowLogFeed(&bytes.Buffer{}, feed))
		sas := []string{"frontend", "reviews"}
		if i == 1 {
			sas = []string{"reviews"}
		}
		src := &ztunnelstest.Source{V: ztunnelstest.View(t, "../zc/testdata/"+name+".yaml"), Certs: certsOf(sas...)}
		ztunnelstest.StartAdmin(t, n.NS, src, feed)
		st.Nodes = append(st.Nodes, ztunnels.StateNode{Name: name, Netns: n.Path, IP: n.IP.String()})
	}
	lc.state = filepath.Join(t.TempDir(), "ambient", "cluster.json")
	if err := ztunnels.WriteState(lc.state, st); err != nil {
		t.Fatal(err)
	}
	return lc
}

var (
	frontend = telemetry.Peer{Workload: "frontend-1", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/frontend"}
	reviews  = telemetry.Peer{Workload: "reviews-v2-1", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/reviews",
		Service: "reviews.shop.svc.cluster.local"}
	dbClient = telemetry.Peer{Workload: "db-client", Namespace: "legacy", Addr: "10.244.1.9:40000"}
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func TestZc_MergesEveryNodesConfigDump(t *testing.T) {
	lc := startLocalCluster(t)
	s := "--cluster-state=" + lc.state

	golden(t, "zc-workloads.golden.txt", mustRun(t, "zc", "workloads", s))
	golden(t, "zc-workloads-node-2.golden.txt", mustRun(t, "zc", "workloads", "--node", "node-2", s))
	golden(t, "zc-services-shop.golden.txt", mustRun(t, "zc", "services", "-n", "shop", s))
	golden(t, "zc-policies.golden.txt", mustRun(t, "zc", "policies", "-A", s))

	var svcs []admin.Service
	if err := json.Unmarshal([]byte(mustRun(t, "zc", "services", "-n", "shop", "-o", "json", s)), &svcs); err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || svcs[0].Name != "reviews" || len(svcs[0].Endpoints) != 2 {
		t.Errorf("services -n shop -o json = %+v, want reviews with the endpoints of both nodes", svcs)
	}
	if y := mustRun(t, "zc", "policies", "-o", "yaml", s); !strings.Contains(y, "name: audit-all") || !strings.Contains(y, "dryRun: true") {
		t.Errorf("policies -o yaml:\n%s", y)
	}

	// Certificates: frontend's leaf and root from node-1, reviews' leaf
	// from each node and one root, all valid now.
	certs := mustRun(t, "zc", "certs", "-n", "shop", s)
	lines := strings.Split(strings.TrimSpace(certs), "\n")
	if len(lines) != 6 {
		t.Fatalf("certs table has %d lines, want header + 5:\n%s", len(lines), certs)
	}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) < 5 || f[2] != "Available" || f[3] != "true" {
			t.Errorf("certificate row %q: want Available and valid", l)
		}
	}
	if n := strings.Count(certs, "Leaf"); n != 3 {
		t.Errorf("%d leaves, want 3:\n%s", n, certs)
	}
}

func TestZc_PicksTheLocalDialerForTheLocalClustersContext(t *testing.T) {
	lc := startLocalCluster(t)
	t.Setenv("AMBIENT_CLUSTER_STATE", lc.state)
	// The local cluster's context: its server matches the state file, so
	// ambientctl reads the ztunnels through the node namespaces without
	// contacting an API server.
	local := writeKubeconfig(t, localServer+"/", "ambient-local")
	if out := mustRun(t, "zc", "workloads", "-n", "legacy", "--kubeconfig", local); !strings.Contains(out, "db-0") {
		t.Errorf("zc workloads through the local cluster's context:\n%s", out)
	}
	// Another cluster: port-forward through its (unreachable) API server.
	other := writeKubeconfig(t, "https://127.0.0.1:1", "elsewhere")
	if _, errOut, code := run(t, "zc", "workloads", "--kubeconfig", other); code == 0 || !strings.Contains(errOut, "finding the ztunnel pods: cannot reach") {
		t.Errorf("zc workloads against another cluster: exit %d, stderr %q; want the port-forward path failing on the API server", code, errOut)
	}
}

func TestZc_ReportsNodesWhoseZtunnelDoesNotAnswer(t *testing.T) {
	lc := startLocalCluster(t)
	st, err := ztunnels.LoadState(lc.state)
	if err != nil {
		t.Fatal(err)
	}
	st.Nodes = append(st.Nodes, ztunnels.StateNode{Name: "node-3", Netns: "/run/netns/no-such-node"})
	partial := filepath.Join(t.TempDir(), "partial.json")
	ztunnels.WriteState(partial, st)
	out, errOut, code := run(t, "zc", "workloads", "--cluster-state", partial)
	if code != 0 || !strings.Contains(out, "reviews-v2-1") || !strings.Contains(errOut, "warning: ztunnel on node node-3") {
		t.Errorf("one node down: exit %d\nstdout:\n%s\nstderr:\n%s\nwant the others' workloads and a warning naming node-3", code, out, errOut)
	}

	st.Nodes = st.Nodes[2:]
	none := filepath.Join(t.TempDir(), "none.json")
	ztunnels.WriteState(none, st)
	if _, errOut, code := run(t, "zc", "workloads", "--cluster-state", none); code == 0 || !strings.Contains(errOut, "no ztunnel answered") || !strings.Contains(errOut, "kubectl apply -k manifests/") {
		t.Errorf("no ztunnel: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := run(t, "zc", "workloads", "--node", "node-9", "--cluster-state", lc.state); code == 0 || !strings.Contains(errOut, `no ztunnel on node "node-9"`) {
		t.Errorf("--node node-9: exit %d, stderr %q", code, errOut)
	}
}

func TestFlows_GatheredFromEveryNodeMergedByTime(t *testing.T) {
	lc := startLocalCluster(t)
	// node-1 reports as source, node-2 as destination, written out of order.
	lc.logs[1].Record(telemetry.Flow{Start: t0.Add(time.Millisecond), Reporter: "destination", Src: frontend, Dst: reviews, Decision: "allow", Policy: "shop/allow-frontend", BytesSent: 100, BytesRecv: 900, Duration: 3 * time.Millisecond})
	lc.logs[1].Record(telemetry.Flow{Start: t0.Add(2 * time.Second), Reporter: "destination", Src: frontend, Dst: reviews, Decision: "deny", Policy: "shop/deny-all"})
	lc.logs[0].Record(telemetry.Flow{Start: t0, Reporter: "source", Src: frontend, Dst: reviews, Decision: "allow", BytesSent: 100, BytesRecv: 900, Duration: 4 * time.Millisecond})
	lc.logs[0].Record(telemetry.Flow{Start: t0.Add(time.Second), Reporter: "source", Src: dbClient, Dst: telemetry.Peer{Addr: "10.244.1.4:5432"}, Decision: "allow"})
	s := "--cluster-state=" + lc.state

	golden(t, "flows.golden.txt", mustRun(t, "flows", s))
	golden(t, "flows-shop.golden.txt", mustRun(t, "flows", "-n", "shop", s))

	var got []string
	for _, l := range strings.Split(strings.TrimSpace(mustRun(t, "flows", "-o", "json", "--identity", reviews.Identity, s)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		got = append(got, fmt.Sprint(m["node"], " ", m["reporter"], " ", m["decision"]))
	}
	want := "[node-1 source allow node-2 destination allow node-2 destination deny]"
	if fmt.Sprint(got) != want {
		t.Errorf("flows -o json --identity reviews: %v, want %s", got, want)
	}
}

func TestFlows_FollowStreamsRecordsWrittenAfterConnecting(t *testing.T) {
	lc := startLocalCluster(t)
	lc.logs[0].Record(telemetry.Flow{Start: t0, Reporter: "source", Src: frontend, Dst: reviews, Decision: "allow"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut logtest.Buffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Main(ctx, []string{"flows", "--follow", "-o", "json", "-n", "shop", "--cluster-state", lc.state}, &out, &errOut)
	}()
	waitFor(t, "both nodes' streams", func() bool { return lc.feeds[0].Subscribers() == 1 && lc.feeds[1].Subscribers() == 1 })
	waitFor(t, "the recent record", func() bool { return strings.Contains(out.String(), `"node":"node-1"`) })

	// A stuck reader on node-2 must not hold up its flow log.
	stuck := lc.feeds[1].Subscribe(2)
	start := time.Now()
	for i := range 10 {
		lc.logs[1].Record(telemetry.Flow{Start: time.Now(), Reporter: "destination", Src: dbClient, Dst: telemetry.Peer{Addr: "10.244.2.9:80"}, Decision: "allow", BytesSent: int64(i)})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("recording with a stuck subscriber took %v", d)
	}
	if stuck.Err() != telemetry.ErrSlowSubscriber || lc.feeds[1].Dropped() != 1 {
		t.Errorf("stuck subscriber: err %v, dropped %d; want it cut off", stuck.Err(), lc.feeds[1].Dropped())
	}

	live := telemetry.Flow{Start: time.Now(), Reporter: "destination", Src: frontend, Dst: reviews, Decision: "deny", Policy: "shop/deny-frontend"}
	lc.logs[1].Record(live)
	waitFor(t, "the live record", func() bool { return strings.Contains(out.String(), `"policy":"shop/deny-frontend"`) })
	if strings.Contains(out.String(), "legacy") {
		t.Errorf("-n shop let a legacy flow through:\n%s", out.String())
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("flows --follow exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], `{"node":"node-2",`) {
		t.Errorf("followed output:\n%s\nwant the recent node-1 record then the live node-2 one", out.String())
	}
}

func TestFlows_FollowTablePrintsHeaderThenRows(t *testing.T) {
	lc := startLocalCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut logtest.Buffer
	done := make(chan int, 1)
	go func() { done <- cli.Main(ctx, []string{"flows", "-f", "--cluster-state", lc.state}, &out, &errOut) }()
	waitFor(t, "both nodes' streams", func() bool { return lc.feeds[0].Subscribers() == 1 && lc.feeds[1].Subscribers() == 1 })
	lc.logs[0].Record(telemetry.Flow{Start: t0, Reporter: "source", Src: frontend, Dst: reviews, Decision: "allow", BytesSent: 7, BytesRecv: 9})
	waitFor(t, "a row", func() bool { return strings.Contains(out.String(), "node-1/src") })
	cancel()
	<-done
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[1], "7/9") {
		t.Errorf("flows -f:\n%s", out.String())
	}
}

func TestFlows_FollowCarriesOnWithoutANodeThatIsDown(t *testing.T) {
	lc := startLocalCluster(t)
	st, _ := ztunnels.LoadState(lc.state)
	st.Nodes = append(st.Nodes, ztunnels.StateNode{Name: "node-3", Netns: "/run/netns/no-such-node"})
	partial := filepath.Join(t.TempDir(), "partial.json")
	ztunnels.WriteState(partial, st)
	lc.logs[1].Record(telemetry.Flow{Start: t0, Reporter: "destination", Src: frontend, Dst: reviews, Decision: "allow"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut logtest.Buffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Main(ctx, []string{"flows", "-f", "-o", "json", "--cluster-state", partial}, &out, &errOut)
	}()
	waitFor(t, "the recent record", func() bool { return strings.Contains(out.String(), `"node":"node-2"`) })
	waitFor(t, "both live nodes' streams", func() bool { return lc.feeds[0].Subscribers() == 1 && lc.feeds[1].Subscribers() == 1 })
	lc.logs[0].Record(telemetry.Flow{Start: time.Now(), Reporter: "source", Src: frontend, Dst: reviews, Decision: "allow", BytesSent: 42})
	waitFor(t, "the live record", func() bool { return strings.Contains(out.String(), `"bytes_sent":42`) })
	time.Sleep(1500 * time.Millisecond) // a reconnection attempt or two
	cancel()
	<-done
	if n := strings.Count(errOut.String(), "warning: ztunnel on node node-3"); n != 1 {
		t.Errorf("%d warnings about node-3, want one:\n%s", n, errOut.String())
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
