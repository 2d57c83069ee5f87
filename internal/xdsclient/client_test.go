package xdsclient_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/xdsclient"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// counter is a client Metrics that counts what responses carried.
type counter struct {
	mu        sync.Mutex
	responses int
	resources int
	removed   int
	nacks     int
}

func (c *counter) Response(_ string, res, rem int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.responses++
	c.resources += res
	c.removed += rem
	if err != nil {
		c.nacks++
	}
}
func (c *counter) Connected(bool) {}
func (c *counter) snapshot() (responses, resources, removed, nacks int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.responses, c.resources, c.removed, c.nacks
}

func wl(uid string, ip byte) *workloadapi.Workload {
	return &workloadapi.Workload{Uid: uid, Name: uid, Namespace: "default", Addresses: [][]byte{{10, 0, 0, ip}}}
}

func svc(ns, host string) *workloadapi.Service {
	return &workloadapi.Service{Name: host, Namespace: ns, Hostname: host}
}

// put upserts workloads and services into the server cache under their
// resource names.
func put(t *testing.T, c *xds.Cache, items ...proto.Message) {
	t.Helper()
	addr := map[string]proto.Message{}
	pol := map[string]proto.Message{}
	for _, it := range items {
		switch x := it.(type) {
		case *workloadapi.Workload:
			a := &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: x}}
			addr[xds.AddressName(a)] = a
		case *workloadapi.Service:
			a := &workloadapi.Address{Type: &workloadapi.Address_Service{Service: x}}
			addr[xds.AddressName(a)] = a
		case *security.Authorization:
			pol[xds.AuthorizationName(x)] = x
		}
	}
	if err := c.Update(xds.TypeAddress, addr, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Update(xds.TypeAuthorization, pol, nil); err != nil {
		t.Fatal(err)
	}
}

// server is a real xds server on a fixed local address that can be stopped
// and started again.
type server struct {
	t      *testing.T
	cache  *xds.Cache
	addr   string
	cancel context.CancelFunc
	done   chan error
}

func newServer(t *testing.T) *server {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, cache: xds.NewCache(), addr: lis.Addr().String()}
	s.start(lis)
	t.Cleanup(s.stop)
	return s
}

func (s *server) start(lis net.Listener) {
	if lis == nil {
		var err error
		lis, err = net.Listen("tcp", s.addr)
		if err != nil {
			s.t.Fatal(err)
		}
	}
	srv, err := xds.New(xds.Config{Cache: s.cache, Listener: lis, DebounceAfter: 5 * time.Millisecond})
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	go func() { s.done <- srv.Run(ctx) }()
}

func (s *server) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	if err := <-s.done; err != nil {
		s.t.Errorf("server Run: %v", err)
	}
	s.cancel = nil
}

// runClient runs a client against addr until the returned stop is called.
func runClient(t *testing.T, addr string, store *state.Store, m xdsclient.Metrics) (*xdsclient.Client, func()) {
	t.Helper()
	return runClientWith(t, addr, store, m, nil)
}

// runClientWith is runClient with extra subscriptions.
func runClientWith(t *testing.T, addr string, store *state.Store, m xdsclient.Metrics, extra []xdsclient.Extra) (*xdsclient.Client, func()) {
	t.Helper()
	c, err := xdsclient.New(xdsclient.Config{
		Extra:          extra,
		Target:         addr,
		DialOptions:    []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Store:          store,
		NodeID:         "node-1",
		Metrics:        m,
		BackoffInitial: 20 * time.Millisecond,
		BackoffMax:     200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("client Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return c, stop
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitSynced(t *testing.T, c *xdsclient.Client) {
	t.Helper()
	select {
	case <-c.SyncedCh():
	case <-time.After(5 * time.Second):
		t.Fatal("client did not sync within 5s")
	}
}

func TestClient_InitialSync(t *testing.T) {
	s := newServer(t)
	put(t, s.cache, wl("w1", 1), wl("w2", 2), svc("ns", "a.ns.svc"), &security.Authorization{Namespace: "ns", Name: "p"})
	store := state.NewStore()
	c, _ := runClient(t, s.addr, store, nil)
	if c.Synced() {
		t.Fatal("Synced before any response")
	}
	waitSynced(t, c)
	v := store.Current()
	if v.Workload("w1") == nil || v.Workload("w2") == nil || v.Service("ns", "a.ns.svc") == nil || v.Policy("ns", "p") == nil {
		t.Fatalf("store after sync: %+v", v.Snapshot())
	}
}

func TestClient_SyncsWithEmptyServer(t *testing.T) {
	s := newServer(t)
	c, _ := runClient(t, s.addr, state.NewStore(), nil)
	waitSynced(t, c)
}

func TestClient_UpdateAndRemovalArriveAsDeltas(t *testing.T) {
	s := newServer(t)
	put(t, s.cache, wl("w1", 1))
	store := state.NewStore()
	m := &counter{}
	c, _ := runClient(t, s.addr, store, m)
	waitSynced(t, c)

	put(t, s.cache, wl("w1", 1), wl("w2", 2)) // w1 unchanged
	eventually(t, "w2", func() bool { return store.Current().Workload("w2") != nil })
	if _, res, _, _ := m.snapshot(); res != 2 {
		t.Fatalf("received %d resources, want 2 (w1 once, w2 once)", res)
	}

	if err := s.cache.Update(xds.TypeAddress, nil, []string{"w1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "w1 removed", func() bool { return store.Current().Workload("w1") == nil })
	if store.Current().Workload("w2") == nil {
		t.Fatal("w2 lost on removal of w1")
	}
}

func TestClient_AddressNameSwitchingKindReplacesIt(t *testing.T) {
	s := newServer(t)
	put(t, s.cache, svc("ns", "x"))
	store := state.NewStore()
	c, _ := runClient(t, s.addr, store, nil)
	waitSynced(t, c)
	put(t, s.cache, wl("ns/x", 9))
	eventually(t, "workload ns/x", func() bool { return store.Current().Workload("ns/x") != nil })
	if store.Current().Service("ns", "x") != nil {
		t.Fatal("service ns/x still present after its name became a workload")
	}
}

func TestClient_RestartResumesWithoutDuplicates(t *testing.T) {
	s := newServer(t)
	put(t, s.cache, wl("w1", 1), wl("w2", 2), svc("ns", "a"), &security.Authorization{Namespace: "ns", Name: "p"})
	store := state.NewStore()
	c, stop := runClient(t, s.addr, store, nil)
	waitSynced(t, c)
	stop()

	// While the client is down: one change, one removal.
	put(t, s.cache, wl("w3", 3))
	s.cache.Update(xds.TypeAddress, nil, []string{"w2"})

	m := &counter{}
	c2, _ := runClient(t, s.addr, store, m)
	waitSynced(t, c2)
	responses, resources, removed, nacks := m.snapshot()
	if resources != 1 || removed != 1 || nacks != 0 {
		t.Fatalf("resume: %d responses carried %d resources, %d removals, %d NACKs; want 1 (w3), 1 (w2), 0", responses, resources, removed, nacks)
	}
	v := store.Current()
	if v.Workload("w3") == nil || v.Workload("w2") != nil || v.Workload("w1") == nil || v.Policy("ns", "p") == nil {
		t.Fatalf("store after resume: %+v", v.Snapshot())
	}
}

func TestClient_KeepsStateWhileServerDownAndConverges(t *testing.T) {
	s := newServer(t)
	put(t, s.cache, wl("w1", 1), wl("w2", 2))
	store := state.NewStore()
	m := &counter{}
	c, _ := runClient(t, s.addr, store, m)
	waitSynced(t, c)

	s.stop()
	time.Sleep(300 * time.Millisecond) // a few failed reconnects
	if v := store.Current(); v.Workload("w1") == nil || v.Workload("w2") == nil || !c.Synced() {
		t.Fatal("client dropped its state while disconnected")
	}
	put(t, s.cache, wl("w3", 3))
	s.cache.Update(xds.TypeAddress, nil, []string{"w1"})
	_, before, _, _ := m.snapshot()

	s.start(nil)
	eventually(t, "convergence", func() bool {
		v := store.Current()
		return v.Workload("w3") != nil && v.Workload("w1") == nil && v.Workload("w2") != nil
	})
	_, after, _, _ := m.snapshot()
	if after-before != 1 {
		t.Fatalf("reconnect resent %d resources, want 1 (w3)", after-before)
	}
}

func TestClient_NacksWhatTheStoreRejects(t *testing.T) {
	s := newServer(t)
	store := state.NewStore()
	m := &counter{}
	c, _ := runClient(t, s.addr, store, m)
	waitSynced(t, c)
	bad := wl("bad", 1)
	bad.Addresses = [][]byte{{1, 2, 3}}
	put(t, s.cache, bad)
	eventually(t, "NACK", func() bool { _, _, _, n := m.snapshot(); return n == 1 })
	if store.Current().Workload("bad") != nil {
		t.Fatal("rejected workload in store")
	}
	put(t, s.cache, wl("good", 2)) // the stream survives the NACK
	eventually(t, "good", func() bool { return store.Current().Workload("good") != nil })
}

func TestNaming_ClientAndServerAgree(t *testing.T) {
	w := wl("cluster//Pod/ns/a", 1)
	s := svc("ns", "a.ns.svc")
	p := &security.Authorization{Namespace: "ns", Name: "p"}
	aw := &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	as := &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
	if xds.AddressName(aw) != state.WorkloadKey(w) || xds.AddressName(as) != state.ServiceKey(s) || xds.AuthorizationName(p) != state.PolicyKey(p) {
		t.Fatal("server names differ from state keys")
	}
	store := state.NewStore()
	if err := store.Replace(state.Snapshot{Workloads: []*workloadapi.Workload{w}, Services: []*workloadapi.Service{s}, Policies: []*security.Authorization{p}}); err != nil {
		t.Fatal(err)
	}
	got, err := xdsclient.InitialVersions(store.Current())
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]proto.Message{xds.AddressName(aw): aw, xds.AddressName(as): as} {
		want, _ := xds.Version(m)
		if got[xdsclient.TypeAddress][name] != want {
			t.Errorf("version of %s: client %q, server %q", name, got[xdsclient.TypeAddress][name], want)
		}
	}
	want, _ := xds.Version(p)
	if got[xdsclient.TypeAuthorization]["ns/p"] != want {
		t.Errorf("policy version: client %q, server %q", got[xdsclient.TypeAuthorization]["ns/p"], want)
	}
}
