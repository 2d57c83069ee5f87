package hbone

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2/hpack"
)

// splicedPair is an app connection spliced into a tunnel to an echo
// upstream, on both ends as ztunnel does it, with the client side's result.
type splicedPair struct {
	app    net.Conn
	server *tunnelServer
	ended  chan error
}

func newSplicedPair(t *testing.T) *splicedPair {
	t.Helper()
	up := startUpstream(t, echo)
	p := newPKI(t, td)
	ts := startServer(t, p.Source(serverID), bundles(p), ServerConfig{})
	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.Source(clientID)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sp := &splicedPair{server: ts, ended: make(chan error, 1)}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sp.ended <- err
			return
		}
		tun, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
		if err != nil {
			c.Close()
			sp.ended <- err
			return
		}
		SpliceAsync(tun, c, func(_, _ int64, err error) { sp.ended <- err })
	}()
	sp.app, err = net.DialTimeout("tcp", ln.Addr().String(), testTimout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.app.Close() })
	return sp
}

func (sp *splicedPair) roundTrip(t *testing.T, msg string) {
	t.Helper()
	sp.app.SetDeadline(time.Now().Add(testTimout))
	if _, err := sp.app.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(sp.app, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
}

func shortParkAfter(t *testing.T) {
	old := parkAfter.Swap(int64(50 * time.Millisecond))
	t.Cleanup(func() { parkAfter.Store(old) })
}

// An idle splice parks both ends' sockets (no goroutine waits), and data
// arriving later resumes the copy in either direction.
func TestParkIdleAndResume(t *testing.T) {
	shortParkAfter(t)
	base := ParkedConnections()
	sp := newSplicedPair(t)
	sp.roundTrip(t, "hello")
	// Client side: the app socket; server side: the upstream socket.
	waitFor(t, "both ends parked", func() bool { return ParkedConnections() >= base+2 })
	sp.roundTrip(t, "again, after parking")
	waitFor(t, "parked again", func() bool { return ParkedConnections() >= base+2 })
	sp.roundTrip(t, "and once more")

	// A half-close while parked is passed on, and the splice then ends.
	waitFor(t, "parked before the half-close", func() bool { return ParkedConnections() >= base+2 })
	sp.app.(*net.TCPConn).CloseWrite()
	sp.app.SetReadDeadline(time.Now().Add(testTimout))
	if n, err := sp.app.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after half-close: read %d, %v; want EOF", n, err)
	}
	select {
	case err := <-sp.ended:
		if err != nil {
			t.Fatalf("splice ended with %v", err)
		}
	case <-time.After(testTimout):
		t.Fatal("splice did not end")
	}
	waitFor(t, "nothing parked", func() bool { return ParkedConnections() == base })
}

// Aborting the tunnel stream while the upstream socket is parked ends the
// server-side splice and closes the upstream.
func TestParkedAbort(t *testing.T) {
	shortParkAfter(t)
	base := ParkedConnections()
	sp := newSplicedPair(t)
	sp.roundTrip(t, "hello")
	waitFor(t, "both ends parked", func() bool { return ParkedConnections() >= base+2 })
	sp.app.(*net.TCPConn).SetLinger(0)
	sp.app.Close() // RST: the client splice resets the stream
	select {
	case <-sp.ended:
	case <-time.After(testTimout):
		t.Fatal("client splice did not end")
	}
	waitFor(t, "server stream ended", func() bool { return len(sp.server.streamResults()) == 1 })
	waitFor(t, "nothing parked", func() bool { return ParkedConnections() == base })
}

// A socket closed behind the splice's back while parked is found by the
// sweep, and the splice ends.
func TestParkedClosedBehindTheBack(t *testing.T) {
	p := idle()
	c1, c2 := tcpPair(t)
	defer c2.Close()
	rc, err := c1.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	resumed := make(chan struct{})
	var e parked
	e.init(rc, func() { close(resumed) })
	if err := p.park(&e); err != nil {
		t.Fatal(err)
	}
	c1.Close()
	p.sweep()
	select {
	case <-resumed:
	case <-time.After(testTimout):
		t.Fatal("closed socket not resumed by the sweep")
	}
}

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c1, c2
}

// ParseRequest keeps the regular fields compactly; Header canonicalizes.
func TestParseRequest_KeepsRegularFields(t *testing.T) {
	req, err := ParseRequest([]hpack.HeaderField{
		{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.1:80"},
		{Name: "forwarded", Value: "for=10.0.0.2"}, {Name: "baggage", Value: "a=1"}, {Name: "baggage", Value: "b=2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(req.Fields) != 3 {
		t.Fatalf("Fields = %v, want the 3 regular fields", req.Fields)
	}
	h := req.Header()
	if h.Get("Forwarded") != "for=10.0.0.2" || len(h["Baggage"]) != 2 {
		t.Fatalf("Header() = %v", h)
	}
}
