package hbone3

import (
	"io"
	"net"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/internal/hbone"
)

// BenchmarkTunnel3_BulkMiB moves 1 MiB per op along the whole data path as
// ztunnel would use it, the shape of hbone's BenchmarkTunnel_BulkMiB: app
// socket → Splice → HBONE/3 client → QUIC → HBONE/3 server → Splice →
// upstream socket. Allocations are counted across both ends, so allocs/op
// is allocations per proxied MiB.
func BenchmarkTunnel3_BulkMiB(b *testing.B) {
	received := make(chan int64, 1)
	up := startUpstream(b, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, struct{ io.Reader }{c})
		received <- n
	})
	p := newPKI(b, td)
	ts := startServer(b, p.Source(serverID), bundles(p), ServerConfig{})
	cl := newClient(b, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.Source(clientID)})

	// The "outbound listener": each app connection is spliced into a tunnel.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	spliced := make(chan struct{})
	go func() {
		defer close(spliced)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		t, err := cl.Dial(ctxT(b), target(ts, up.Addr()))
		if err != nil {
			c.Close()
			return
		}
		hbone.Splice(t, c)
	}()
	app, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	warm := 64
	for range warm { // fill pools and windows before measuring
		app.Write(buf)
	}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := app.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	app.(*net.TCPConn).CloseWrite()
	got := <-received
	b.StopTimer()
	app.Close()
	<-spliced
	if want := int64(warm+b.N) * int64(len(buf)); got != want {
		b.Fatalf("upstream received %d bytes, want %d", got, want)
	}
}
