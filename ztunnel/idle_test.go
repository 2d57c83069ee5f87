package ztunnel

import (
	"context"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/hbone"
)

// BenchmarkIdleConnections holds b.N idle tunnelled connections (pod on
// node 1 → pod on node 2) and reports the memory they take per connection
// across everything in the process: both ztunnels (source and destination
// side), the client sockets and the echo app.
func BenchmarkIdleConnections(b *testing.B) {
	if os.Getenv("IDLE_HEAP_PROFILE") != "" {
		runtime.MemProfileRate = 1
	}
	m := newMesh(b)
	client, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	conns := make([]io.Closer, 0, b.N)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := client.Dial(ctx, server.Addr(8080))
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		// One round trip so the connection is established end to end.
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	var setup runtime.MemStats
	runtime.ReadMemStats(&setup)
	b.ReportMetric(float64(setup.StackInuse)/float64(b.N), "stack-bytes/conn-at-setup")
	// Idle sockets are parked after 2 s of quiet.
	deadline := time.Now().Add(10 * time.Second)
	for hbone.ParkedConnections() < 2*b.N && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	runtime.GC()
	if path := os.Getenv("IDLE_HEAP_PROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		pprof.WriteHeapProfile(f)
		f.Close()
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	used := float64(after.HeapInuse+after.StackInuse) - float64(before.HeapInuse+before.StackInuse)
	b.ReportMetric(used/float64(b.N), "bytes/conn")
	b.ReportMetric(float64(runtime.NumGoroutine())/float64(b.N), "goroutines/conn")
	ss := []metrics.Sample{{Name: "/gc/stack/starting-size:bytes"}}
	metrics.Read(ss)
	b.ReportMetric(float64(ss[0].Value.Uint64()), "starting-stack-bytes")
	b.ReportMetric(float64(after.StackInuse)/float64(b.N), "stack-bytes/conn")
}
