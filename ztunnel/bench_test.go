package ztunnel

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// BenchmarkPodToPod moves 1 MiB per op from a pod on node 1 to a pod on
// node 2, through both nodes' ztunnels (HBONE) or with both pods out of the
// mesh (plain), over the topology's real node link. Run as root:
// go test -run '^$' -bench PodToPod ./ztunnel/
func BenchmarkPodToPod(b *testing.B) {
	for _, mode := range []string{"mesh", "plain"} {
		b.Run(mode, func(b *testing.B) {
			m := newMesh(b)
			client, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
			if mode == "plain" {
				for _, p := range []*testenv.Pod{client, server} {
					m.setWorkload(b, p, func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_NONE })
				}
				waitFor(b, "capture removed", func() bool { return !captured(b, client) && !captured(b, server) })
			}
			sink, err := server.Listen("0.0.0.0:9000")
			if err != nil {
				b.Fatal(err)
			}
			defer sink.Close()
			got := make(chan int64, 1)
			go func() {
				c, err := sink.Accept()
				if err != nil {
					got <- -1
					return
				}
				n, _ := io.Copy(io.Discard, c)
				c.Close()
				got <- n
			}()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := client.Dial(ctx, server.Addr(9000))
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			c.CloseWrite()
			n := <-got
			b.StopTimer()
			c.Close()
			if n != int64(b.N)*int64(len(buf)) {
				b.Fatalf("sink got %d bytes, want %d", n, int64(b.N)*int64(len(buf)))
			}
		})
	}
}
