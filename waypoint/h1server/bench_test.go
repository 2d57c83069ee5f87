package h1server

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// BenchmarkServe: keep-alive requests with a 1 KiB body each way over one
// loopback connection, served by this package and by net/http's server
// with the same handler; allocations are the whole process's (the client
// is the same for both).
func BenchmarkServe(b *testing.B) {
	payload := make([]byte, 1024)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header()["Content-Length"] = []string{"1024"}
		w.Header()["Content-Type"] = []string{"application/octet-stream"}
		if n == 1024 {
			w.Write(payload)
		}
	})
	for _, srv := range []struct {
		name  string
		serve func(testing.TB, http.Handler) string
	}{
		{"h1server", func(t testing.TB, h http.Handler) string { return serve(t, &Server{Handler: h}) }},
		{"net-http", serveNetHTTP},
	} {
		b.Run(srv.name, func(b *testing.B) {
			addr := srv.serve(b, h)
			c, err := net.DialTimeout("tcp", addr, waitTimeout)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			req := append([]byte("POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 1024\r\n\r\n"), payload...)
			br := bufio.NewReaderSize(c, 8<<10)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				if n, _ := io.Copy(io.Discard, resp.Body); n != 1024 {
					b.Fatalf("response body %d bytes", n)
				}
				resp.Body.Close()
			}
		})
	}
}
