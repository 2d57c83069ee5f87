//go:build unix

package h1client

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/cputime"
)

// BenchmarkRoundTrip compares Client with net/http.Transport on one
// loopback server answering a small body. The server runs in the same
// process: its CPU and allocations count too, the same for both.
// cpu-ns/op is the process's user and system CPU time per request, what
// the proxy pays; ns/op is the wall time.
func BenchmarkRoundTrip(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello, waypoint")
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	url := "http://" + ln.Addr().String() + "/bench"
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	transport := &http.Transport{
		DialContext:        func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
		DisableCompression: true, MaxIdleConnsPerHost: 100,
	}
	b.Cleanup(transport.CloseIdleConnections)
	client := &Client{Dial: dial}
	b.Cleanup(client.CloseIdleConnections)

	for _, rt := range []struct {
		name string
		rt   http.RoundTripper
	}{{"h1client", client}, {"http.Transport", transport}} {
		b.Run(rt.name, func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background()) // as the proxy's requests: cancellable
			defer cancel()
			req := newRequest(b, ctx, http.MethodGet, url, nil)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if err := roundTrip(rt.rt, req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(rt.name+"/parallel", func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			b.ReportAllocs()
			defer reportCPU(b)()
			b.RunParallel(func(pb *testing.PB) {
				req := newRequest(b, ctx, http.MethodGet, url, nil)
				for pb.Next() {
					if err := roundTrip(rt.rt, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func roundTrip(rt http.RoundTripper, req *http.Request) error {
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err
}

// reportCPU starts measuring the process's CPU time; the function it
// returns reports it per op.
func reportCPU(b *testing.B) func() {
	start := cpuTime(b)
	return func() {
		b.ReportMetric(float64((cpuTime(b)-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime(b *testing.B) time.Duration {
	d, err := cputime.Self()
	if err != nil {
		b.Fatal(err)
	}
	return d
}
