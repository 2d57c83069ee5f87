package xds_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ambientmesh/ambient/istiod-lite/xds"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Metrics that keeps counts.
type recorder struct {
	mu      sync.Mutex
	pushes  int
	clients int
	drops   map[string]int
	nacks   int
}

func (r *recorder) Push(string, int, time.Duration) { r.mu.Lock(); r.pushes++; r.mu.Unlock() }
func (r *recorder) Connected(d int)                 { r.mu.Lock(); r.clients += d; r.mu.Unlock() }
func (r *recorder) Drop(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.drops == nil {
		r.drops = map[string]int{}
	}
	r.drops[reason]++
}
func (r *recorder) Nack(string) { r.mu.Lock(); r.nacks++; r.mu.Unlock() }
func (r *recorder) get(f func(*recorder) int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return f(r)
}

func workload(uid string, ip byte) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: uid, Name: uid, Namespace: "default", Addresses: [][]byte{{10, 0, 0, ip}},
	}}}
}

// startServer runs a server on 127.0.0.1:0 until the test ends.
func startServer(t *testing.T, cfg xds.Config) (*xds.Server, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = lis
	srv, err := xds.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return srv, lis.Addr().String()
}

type adsStream = grpc.BidiStreamingClient[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]

// openStream opens a raw Delta ADS stream and subscribes to both types.
func openStream(t *testing.T, addr string) adsStream {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); cc.Close() })
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{xds.TypeAddress, xds.TypeAuthorization} {
		if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResourceNamesSubscribe: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func ack(t *testing.T, st adsStream, r *discovery.DeltaDiscoveryResponse) {
	t.Helper()
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
}

// recvAll reads and ACKs responses, in a goroutine, into a channel.
func recvAll(t *testing.T, st adsStream) <-chan *discovery.DeltaDiscoveryResponse {
	ch := make(chan *discovery.DeltaDiscoveryResponse, 1000)
	go func() {
		defer close(ch)
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			ch <- r
			if st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()}) != nil {
				return
			}
		}
	}()
	return ch
}

func next(t *testing.T, ch <-chan *discovery.DeltaDiscoveryResponse) *discovery.DeltaDiscoveryResponse {
	t.Helper()
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("stream closed")
		}
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no response within 5s")
	}
	return nil
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

func TestCache_UnchangedContentIsNotAChange(t *testing.T) {
	c := xds.NewCache()
	w := workload("w1", 1)
	if err := c.Update(xds.TypeAddress, map[string]proto.Message{"w1": w}, nil); err != nil {
		t.Fatal(err)
	}
	v1, _ := xds.Version(w)
	v2, _ := xds.Version(proto.Clone(w))
	if v1 != v2 || len(v1) != 16 {
		t.Fatalf("Version not a stable content hash: %q %q", v1, v2)
	}
	if err := c.Update(xds.TypeAuthorization, map[string]proto.Message{"x": w}, nil); err == nil {
		t.Fatal("Update accepted an Address under the Authorization type")
	}
}

func TestNames(t *testing.T) {
	if got := xds.AddressName(workload("cluster//Pod/ns/a", 1)); got != "cluster//Pod/ns/a" {
		t.Errorf("workload name %q", got)
	}
	svc := &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{Namespace: "ns", Hostname: "a.ns.svc"}}}
	if got := xds.AddressName(svc); got != "ns/a.ns.svc" {
		t.Errorf("service name %q", got)
	}
	if got := xds.AuthorizationName(&security.Authorization{Namespace: "ns", Name: "p"}); got != "ns/p" {
		t.Errorf("authorization name %q", got)
	}
}

func TestStream_InitialThenDeltaThenRemoval(t *testing.T) {
	cache := xds.NewCache()
	if err := cache.Update(xds.TypeAddress, map[string]proto.Message{"w1": workload("w1", 1)}, nil); err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, xds.Config{Cache: cache, DebounceAfter: 10 * time.Millisecond})
	ch := recvAll(t, openStream(t, addr))
	got := map[string]*discovery.DeltaDiscoveryResponse{}
	for range 2 {
		r := next(t, ch)
		got[r.GetTypeUrl()] = r
	}
	if n := len(got[xds.TypeAddress].GetResources()); n != 1 {
		t.Fatalf("initial Address response has %d resources, want 1", n)
	}
	if n := len(got[xds.TypeAuthorization].GetResources()); n != 0 {
		t.Fatalf("initial Authorization response has %d resources, want 0", n)
	}

	cache.Update(xds.TypeAddress, map[string]proto.Message{"w2": workload("w2", 2), "w1": workload("w1", 1)}, nil)
	r := next(t, ch)
	if len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "w2" {
		t.Fatalf("delta = %v, want only w2", r.GetResources())
	}
	cache.Update(xds.TypeAddress, nil, []string{"w1"})
	r = next(t, ch)
	if len(r.GetResources()) != 0 || len(r.GetRemovedResources()) != 1 || r.GetRemovedResources()[0] != "w1" {
		t.Fatalf("removal response = %v", r)
	}
}

// TestStream_RefusedUntilReady: before the first translation is in the
// cache a stream is refused (Unavailable), not answered with an empty
// snapshot that would remove everything a reconnecting client holds.
func TestStream_RefusedUntilReady(t *testing.T) {
	cache := xds.NewCache()
	ready := make(chan struct{})
	_, addr := startServer(t, xds.Config{Cache: cache, Ready: ready, DebounceAfter: 10 * time.Millisecond})
	st := openStream(t, addr)
	if _, err := st.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("Recv before ready = %v, want Unavailable saying not ready", err)
	}

	if err := cache.Update(xds.TypeAddress, map[string]proto.Message{"w1": workload("w1", 1)}, nil); err != nil {
		t.Fatal(err)
	}
	close(ready)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err = discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A client that held w1 and w0 is told only that w0 is gone.
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeAddress, ResourceNamesSubscribe: []string{"*"},
		InitialResourceVersions: map[string]string{"w0": "0", "w1": "1"}}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "w1" || !slices.Equal(r.GetRemovedResources(), []string{"w0"}) {
		t.Fatalf("first response after ready: resources %v, removed %v; want w1, and w0 removed", r.GetResources(), r.GetRemovedResources())
	}
}

func TestStream_StuckClientIsCutOffWhileOthersGetPushes(t *testing.T) {
	cache := xds.NewCache()
	// A large resource set, so a client that never reads fills the
	// transport's flow-control window and the server's Send blocks.
	big := map[string]proto.Message{}
	for i := range 200 {
		w := workload(fmt.Sprintf("w%d", i), byte(i))
		w.GetWorkload().ServiceAccount = string(make([]byte, 2048))
		big[fmt.Sprintf("w%d", i)] = w
	}
	cache.Update(xds.TypeAddress, big, nil)
	rec := &recorder{}
	srv, addr := startServer(t, xds.Config{Cache: cache, Metrics: rec, AckTimeout: 300 * time.Millisecond, DebounceAfter: 10 * time.Millisecond})

	openStream(t, addr) // stuck: never reads
	good := recvAll(t, openStream(t, addr))
	next(t, good)
	next(t, good)
	// (Not "two clients now": on a loaded machine the stuck one may already
	// be cut off by its 300 ms ACK timeout; the drop counted below proves it
	// was there.)

	for i := range 10 {
		cache.Update(xds.TypeAuthorization, map[string]proto.Message{"ns/p": &security.Authorization{Namespace: "ns", Name: "p", Groups: make([]*security.Group, i)}}, nil)
		r := next(t, good)
		if r.GetTypeUrl() != xds.TypeAuthorization {
			t.Fatalf("push %d has type %s", i, r.GetTypeUrl())
		}
		time.Sleep(50 * time.Millisecond)
	}
	eventually(t, "stuck client cut off", func() bool { return srv.Clients() == 1 })
	if d := rec.get(func(r *recorder) int { return r.drops["ack_timeout"] }); d != 1 {
		t.Fatalf("ack_timeout drops = %d, want 1", d)
	}
}

func TestStream_TooManyPendingChangesClosesStream(t *testing.T) {
	cache := xds.NewCache()
	rec := &recorder{}
	_, addr := startServer(t, xds.Config{Cache: cache, Metrics: rec, MaxPending: 10, DebounceAfter: time.Millisecond})
	st := openStream(t, addr)
	// Read both initial responses but never ACK: later changes queue up.
	for range 2 {
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 11 {
		cache.Update(xds.TypeAddress, map[string]proto.Message{fmt.Sprint("w", i): workload(fmt.Sprint("w", i), byte(i))}, nil)
	}
	_, err := st.Recv()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Recv = %v, want ResourceExhausted", err)
	}
	if d := rec.get(func(r *recorder) int { return r.drops["queue_full"] }); d != 1 {
		t.Fatalf("queue_full drops = %d, want 1", d)
	}
}

func TestStream_DebounceCoalescesRapidUpdates(t *testing.T) {
	cache := xds.NewCache()
	_, addr := startServer(t, xds.Config{Cache: cache, DebounceAfter: 100 * time.Millisecond, DebounceMax: time.Second})
	ch := recvAll(t, openStream(t, addr))
	next(t, ch)
	next(t, ch)
	for i := range 100 {
		name := fmt.Sprint("w", i)
		cache.Update(xds.TypeAddress, map[string]proto.Message{name: workload(name, byte(i))}, nil)
		time.Sleep(time.Millisecond)
	}
	pushes, resources := 0, 0
	for resources < 100 {
		r := next(t, ch)
		pushes++
		resources += len(r.GetResources())
	}
	if resources != 100 || pushes > 3 {
		t.Fatalf("100 rapid updates → %d pushes carrying %d resources; want ≤3 pushes, 100 resources", pushes, resources)
	}
	t.Logf("100 updates coalesced into %d push(es)", pushes)
}

func TestStream_NackKeepsStream(t *testing.T) {
	cache := xds.NewCache()
	rec := &recorder{}
	_, addr := startServer(t, xds.Config{Cache: cache, Metrics: rec, DebounceAfter: time.Millisecond})
	st := openStream(t, addr)
	for range 2 {
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		ack(t, st, r)
	}
	cache.Update(xds.TypeAddress, map[string]proto.Message{"w1": workload("w1", 1)}, nil)
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce(), ErrorDetail: statusProto("bad")})
	cache.Update(xds.TypeAddress, map[string]proto.Message{"w2": workload("w2", 2)}, nil)
	r, err = st.Recv()
	if err != nil {
		t.Fatalf("stream ended after NACK: %v", err)
	}
	if len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "w2" {
		t.Fatalf("after NACK got %v, want w2", r.GetResources())
	}
	eventually(t, "nack counted", func() bool { return rec.get(func(r *recorder) int { return r.nacks }) == 1 })
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != io.EOF {
		t.Fatalf("after CloseSend Recv = %v, want EOF", err)
	}
}

func TestPrometheusMetrics_CountPushesAndClients(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := xds.NewPrometheusMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	cache := xds.NewCache()
	_, addr := startServer(t, xds.Config{Cache: cache, Metrics: m})
	ch := recvAll(t, openStream(t, addr))
	next(t, ch)
	next(t, ch)
	eventually(t, "metrics", func() bool {
		n, err := testutil.GatherAndCount(reg, "xds_pushes_total", "xds_connected_clients")
		return err == nil && n == 3 && testutil.ToFloat64(mustGauge(t, reg)) == 1
	})
}

// mustGauge returns the xds_connected_clients value as a collector.
func mustGauge(t *testing.T, reg *prometheus.Registry) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "xds_connected_clients" {
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x"}, func() float64 { return mf.GetMetric()[0].GetGauge().GetValue() })
		}
	}
	t.Fatal("xds_connected_clients not registered")
	return nil
}
