package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/ambientmesh/ambient/internal/caclient"
	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/xdsclient"
	"github.com/ambientmesh/ambient/istiod-lite/translate"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// The population: 5,000 pods across 50 services on 2 nodes.
var benchTopology = topology{Namespaces: 5, ServicesPerNS: 10, PodsPerService: 100, Nodes: 2}

// Knobs of the measurement.
const (
	changes       = 20                     // per change kind
	changeSpacing = 500 * time.Millisecond // quiet time after every client saw a change
	changeTimeout = 30 * time.Second
	syncTimeout   = 3 * time.Minute
)

// wireCounter is a client-side gRPC stats.Handler counting received
// messages and their bytes on the wire (gRPC framing included).
type wireCounter struct {
	msgs, bytes atomic.Int64
}

func (w *wireCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (w *wireCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (w *wireCounter) HandleConn(context.Context, stats.ConnStats)                       {}
func (w *wireCounter) HandleRPC(_ context.Context, s stats.RPCStats) {
	if in, ok := s.(*stats.InPayload); ok {
		w.msgs.Add(1)
		w.bytes.Add(int64(in.WireLength))
	}
}

// ztunnel is one node's xDS client and its store.
type ztunnel struct {
	node   string
	store  *state.Store
	client *xdsclient.Client
	wire   *wireCounter
	sub    <-chan struct{}
}

// startClients starts n clients (client i on node i mod nodes), all at once,
// and returns them with the time each took to hold every workload and
// service.
func startClients(ctx context.Context, b *testing.B, in *istiod, tokenFile string, n int, topo topology) ([]*ztunnel, []time.Duration) {
	b.Helper()
	creds, err := caclient.NewTransportCredentials(caclient.TLSOptions{RootFile: in.rootCert})
	if err != nil {
		b.Fatal(err)
	}
	zs := make([]*ztunnel, n)
	for i := range zs {
		z := &ztunnel{node: nodeName(i % topo.Nodes), store: state.NewStore(), wire: &wireCounter{}}
		z.client, err = xdsclient.New(xdsclient.Config{
			Target: in.grpc,
			DialOptions: []grpc.DialOption{
				grpc.WithTransportCredentials(creds),
				grpc.WithPerRPCCredentials(caclient.TokenCredentials{File: tokenFile}),
				grpc.WithStatsHandler(z.wire),
			},
			Store:  z.store,
			NodeID: fmt.Sprintf("ztunnel~%d~ztunnel-%d.istio-system~istio-system.svc.cluster.local", i, i),
			Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			b.Fatal(err)
		}
		z.sub = z.store.Subscribe(ctx)
		zs[i] = z
	}
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i, z := range zs {
		go z.client.Run(ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			took[i] = z.waitFull(ctx, topo, start)
		}()
	}
	wg.Wait()
	for i, z := range zs {
		if took[i] < 0 {
			b.Fatalf("client %d (%s) did not sync within %v", i, z.node, syncTimeout)
		}
	}
	return zs, took
}

// waitFull waits until the store is synced and holds every workload and
// service, and returns the time since start (-1 on timeout).
func (z *ztunnel) waitFull(ctx context.Context, topo topology, start time.Time) time.Duration {
	timeout := time.After(syncTimeout)
	lastPod := topo.podAt(topo.pods() - 1).uid()
	for {
		if v := z.store.Current(); z.client.Synced() && v.Workload(lastPod) != nil {
			snap := v.Snapshot()
			if len(snap.Workloads) >= topo.pods() && len(snap.Services) >= topo.services() {
				return time.Since(start)
			}
		}
		select {
		case <-z.sub:
		case <-timeout:
			return -1
		case <-ctx.Done():
			return -1
		}
	}
}

// waitFor waits until ok holds for the store's current view and returns
// the time since start (-1 on timeout).
func (z *ztunnel) waitFor(start time.Time, ok func(*state.View) bool) time.Duration {
	timeout := time.After(changeTimeout)
	for {
		if ok(z.store.Current()) {
			return time.Since(start)
		}
		select {
		case <-z.sub:
		case <-timeout:
			return -1
		}
	}
}

// change is one pod change: apply makes it, seen says a view has it.
type change struct {
	apply func(ctx context.Context) error
	seen  func(*state.View) bool
}

// labelChange sets the pod's canonical-revision label, which changes its
// workload's canonical_revision (a metadata update: a rollout's relabel).
func labelChange(kc *kubernetes.Clientset, p podRef, rev string) change {
	patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:%q}}}`, translate.LabelCanonicalRevision, rev)
	return change{
		apply: func(ctx context.Context) error {
			_, err := kc.CoreV1().Pods(p.ns).Patch(ctx, p.name, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		},
		seen: func(v *state.View) bool { return v.Workload(p.uid()).GetCanonicalRevision() == rev },
	}
}

// readinessChange flips the pod's Ready condition through the status
// subresource (a kubelet's report), which changes its workload's status.
func readinessChange(kc *kubernetes.Clientset, p podRef, ready bool) change {
	want := workloadapi.WorkloadStatus_UNHEALTHY
	status := corev1.ConditionFalse
	if ready {
		want, status = workloadapi.WorkloadStatus_HEALTHY, corev1.ConditionTrue
	}
	patch := fmt.Appendf(nil, `{"status":{"conditions":[{"type":"Ready","status":%q}]}}`, status)
	return change{
		apply: func(ctx context.Context) error {
			_, err := kc.CoreV1().Pods(p.ns).Patch(ctx, p.name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
			return err
		},
		seen: func(v *state.View) bool {
			w := v.Workload(p.uid())
			return w != nil && w.GetStatus() == want
		},
	}
}

// changeResult is what one kind of change cost.
type changeResult struct {
	latencies []time.Duration // per change: until the last client saw it
	api       []time.Duration // per change: until the apiserver answered the write
	cpu       time.Duration   // istiod-lite CPU over all changes
	bytes     int64           // wire bytes received by all clients over all changes
	msgs      int64
	elapsed   time.Duration
	// push is istiod-lite's mean xds_push_latency_seconds: from the xDS
	// cache update to the response written to the stream (the xDS
	// debounce and the send).
	push time.Duration
}

// runChanges applies each change in turn, waits until every client has it,
// then stays quiet for changeSpacing (so each change pays the full debounce
// and is pushed alone).
func runChanges(ctx context.Context, b *testing.B, in *istiod, zs []*ztunnel, cs []change) changeResult {
	b.Helper()
	var r changeResult
	bytes0, msgs0 := wireTotals(zs)
	pushSum0, pushN0 := in.metric(b, "xds_push_latency_seconds_sum"), in.metric(b, "xds_push_latency_seconds_count")
	cpu0, t0 := in.cpu(b), time.Now()
	for i, c := range cs {
		start := time.Now()
		if err := c.apply(ctx); err != nil {
			b.Fatalf("change %d: %v", i, err)
		}
		r.api = append(r.api, time.Since(start))
		var worst atomic.Int64
		var wg sync.WaitGroup
		for _, z := range zs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := z.waitFor(start, c.seen)
				if d < 0 {
					d = changeTimeout * 1000 // marks a miss
				}
				for {
					old := worst.Load()
					if int64(d) <= old || worst.CompareAndSwap(old, int64(d)) {
						break
					}
				}
			}()
		}
		wg.Wait()
		d := time.Duration(worst.Load())
		if d >= changeTimeout {
			b.Fatalf("change %d did not reach every client within %v", i, changeTimeout)
		}
		r.latencies = append(r.latencies, d)
		time.Sleep(changeSpacing)
	}
	r.cpu, r.elapsed = in.cpu(b)-cpu0, time.Since(t0)
	bytes1, msgs1 := wireTotals(zs)
	r.bytes, r.msgs = bytes1-bytes0, msgs1-msgs0
	pushSum, pushN := in.metric(b, "xds_push_latency_seconds_sum")-pushSum0, in.metric(b, "xds_push_latency_seconds_count")-pushN0
	if pushN > 0 {
		r.push = time.Duration(pushSum / pushN * float64(time.Second))
	}
	return r
}

func wireTotals(zs []*ztunnel) (bytes, msgs int64) {
	for _, z := range zs {
		bytes += z.wire.bytes.Load()
		msgs += z.wire.msgs.Load()
	}
	return bytes, msgs
}

func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// clientsPerNode is $BENCH_CLIENTS_PER_NODE, default 1 (the real count).
func clientsPerNode(b *testing.B) int {
	b.Helper()
	s := os.Getenv("BENCH_CLIENTS_PER_NODE")
	if s == "" {
		return 1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("BENCH_CLIENTS_PER_NODE=%q: want a positive integer", s)
	}
	return n
}

// BenchmarkControlPlane_5000Pods: see the package doc. Run with
// -benchtime 1x; every iteration repeats the whole measurement on a fresh
// cluster.
func BenchmarkControlPlane_5000Pods(b *testing.B) {
	topo := benchTopology
	bin := buildIstiod(b)
	for range b.N {
		runOnce(b, bin, topo)
	}
}

func runOnce(b *testing.B, bin string, topo topology) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := kubetest.Start(b, kubetest.Options{})
	kc := kubeClient(b, c)
	populate(ctx, b, kc, topo)

	tokenFile := filepath.Join(b.TempDir(), "ztunnel-token")
	if err := os.WriteFile(tokenFile, []byte(ztunnelToken(ctx, b, kc)), 0o600); err != nil {
		b.Fatal(err)
	}

	// Initial sync: istiod-lite start → /ready (informers listed, first
	// translation in the xDS cache), then every client start → full store.
	in := startIstiod(b, bin, c.Kubeconfig, nil)
	ready := in.waitReady(b, syncTimeout)
	cpuReady := in.cpu(b)
	rssReady, _ := in.memKiB(b)
	nClients := topo.Nodes * clientsPerNode(b)
	zs, took := startClients(ctx, b, in, tokenFile, nClients, topo)
	cpuSynced := in.cpu(b)
	syncBytes, syncMsgs := wireTotals(zs)
	time.Sleep(2 * time.Second) // let the post-sync garbage collection settle
	rssSynced, hwm := in.memKiB(b)
	cpuIdle0 := in.cpu(b)
	time.Sleep(2 * time.Second)
	idle := in.cpu(b) - cpuIdle0

	// Pod changes, one pod at a time, spread over namespaces and nodes.
	var labels, readiness []change
	for i := range changes {
		p := topo.podAt((i*997 + 13) % topo.pods())
		labels = append(labels, labelChange(kc, p, fmt.Sprintf("v%d", i+1)))
		q := topo.podAt((i*1009 + 501) % topo.pods())
		readiness = append(readiness, readinessChange(kc, q, false), readinessChange(kc, q, true))
	}
	readiness = readiness[:changes]
	pushes0 := in.metric(b, "xds_pushes_total")
	lr := runChanges(ctx, b, in, zs, labels)
	rr := runChanges(ctx, b, in, zs, readiness)
	pushes := in.metric(b, "xds_pushes_total") - pushes0
	rssEnd, hwmEnd := in.memKiB(b)
	all := append(slices.Clone(lr.latencies), rr.latencies...)

	maxSync := slices.Max(took)
	b.Logf("istiod-lite start → ready %v (CPU %v, RSS %d MiB); %d clients start → full store: %v (CPU %v); %d msgs, %d wire bytes",
		ready.Round(time.Millisecond), cpuReady, rssReady>>10, nClients, took, cpuSynced-cpuReady, syncMsgs, syncBytes)
	b.Logf("RSS after sync %d MiB (peak %d MiB); idle CPU %v per 2 s; after changes RSS %d MiB (peak %d MiB)",
		rssSynced>>10, hwm>>10, idle, rssEnd>>10, hwmEnd>>10)
	for _, x := range []struct {
		name string
		r    changeResult
	}{{"label", lr}, {"readiness", rr}} {
		n := int64(len(x.r.latencies))
		b.Logf("%s changes: apiserver write p50 %v max %v; istiod-lite xDS cache update → response sent, mean %v",
			x.name, quantile(x.r.api, 0.5), slices.Max(x.r.api), x.r.push)
		b.Logf("%s changes: p50 %v max %v; istiod-lite CPU %v per change (idle included); %d bytes, %.1f msgs per change to %d clients; latencies %v",
			x.name, quantile(x.r.latencies, 0.5), slices.Max(x.r.latencies), x.r.cpu/time.Duration(n),
			x.r.bytes/n, float64(x.r.msgs)/float64(n), nClients, x.r.latencies)
	}
	b.Logf("xds pushes during the %d changes: %.0f (%.2f per change per client)", len(all), pushes, pushes/float64(len(all))/float64(nClients))

	n := float64(len(all))
	b.ReportMetric(float64(nClients), "clients")
	b.ReportMetric(ms(ready), "ready-ms")
	b.ReportMetric(ms(maxSync), "client-sync-ms")
	b.ReportMetric(ms(ready+maxSync), "start-to-synced-ms")
	b.ReportMetric(cpuReady.Seconds(), "cpu-s-to-ready")
	b.ReportMetric((cpuSynced - cpuReady).Seconds(), "cpu-s-client-sync")
	b.ReportMetric(float64(syncBytes)/float64(nClients), "sync-B/client")
	b.ReportMetric(float64(rssSynced)/1024, "RSS-MiB-synced")
	b.ReportMetric(float64(hwmEnd)/1024, "RSS-MiB-peak")
	b.ReportMetric(ms(quantile(all, 0.5)), "change-p50-ms")
	b.ReportMetric(ms(slices.Max(all)), "change-max-ms")
	b.ReportMetric(ms(quantile(lr.latencies, 0.5)), "label-p50-ms")
	b.ReportMetric(ms(quantile(rr.latencies, 0.5)), "ready-p50-ms")
	b.ReportMetric((lr.cpu+rr.cpu).Seconds()/n*1000, "cpu-ms/change")
	b.ReportMetric(ms((lr.push+rr.push)/2), "xds-push-ms")
	b.ReportMetric(float64(lr.bytes+rr.bytes)/n, "B/change")
	b.ReportMetric(float64(lr.bytes+rr.bytes)/n/float64(nClients), "B/change/client")
	b.ReportMetric(0, "ns/op")
}
