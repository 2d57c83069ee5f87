package hbone3

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/hbonetest"
	"github.com/ambientmesh/ambient/internal/identity"
)

// TestTunnel3_HalfClose_ClientFirst: the client shuts its write side (a FIN
// on the QUIC stream) and still reads the whole reply, which the upstream
// sends only after seeing EOF.
func TestTunnel3_HalfClose_ClientFirst(t *testing.T) {
	reply := bytes.Repeat([]byte("r"), 3<<20)
	up := startUpstream(t, func(c net.Conn) {
		req, err := io.ReadAll(c)
		if err != nil || string(req) != "request" {
			return
		}
		c.Write(reply)
		c.(closeWriter).CloseWrite()
	})
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	c.Write([]byte("request"))
	if err := c.(closeWriter).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, reply) {
		t.Fatalf("reply: got %d bytes, want %d", len(got), len(reply))
	}
	waitFor(t, "stream result", func() bool { return len(ts.streamResults()) == 1 })
	if r := ts.streamResults()[0]; r.Err != nil || r.BytesOut != int64(len(reply)) {
		t.Fatalf("result: err %v, %d bytes out", r.Err, r.BytesOut)
	}
}

// TestTunnel3_HalfClose_UpstreamFirst: the upstream says everything and
// half-closes first; the client reads EOF and can still send, and what it
// sends after that reaches the upstream.
func TestTunnel3_HalfClose_UpstreamFirst(t *testing.T) {
	got := make(chan []byte, 1)
	up := startUpstream(t, func(c net.Conn) {
		c.Write([]byte("banner"))
		c.(closeWriter).CloseWrite()
		b, _ := io.ReadAll(c)
		got <- b
	})
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	banner, err := io.ReadAll(c)
	if err != nil || string(banner) != "banner" {
		t.Fatalf("read %q, %v; want banner then EOF", banner, err)
	}
	payload := bytes.Repeat([]byte("after-eof "), 100_000)
	if _, err := c.Write(payload); err != nil {
		t.Fatalf("write after the peer's FIN: %v", err)
	}
	c.(closeWriter).CloseWrite()
	select {
	case b := <-got:
		if !bytes.Equal(b, payload) {
			t.Fatalf("upstream got %d bytes, want %d", len(b), len(payload))
		}
	case <-time.After(testTimeout):
		t.Fatal("upstream never saw the client's data and FIN")
	}
}

// TestTunnel3_UpstreamResetIsNotAnEnd: when the upstream connection fails
// mid-transfer the client sees a stream error, never a clean EOF.
func TestTunnel3_UpstreamResetIsNotAnEnd(t *testing.T) {
	up := startUpstream(t, func(c net.Conn) {
		// Reset only once the tunnel is up (the client's "go" arrived):
		// a reset racing the dial is a 503, not the case under test.
		io.ReadFull(c, make([]byte, 2))
		c.Write(bytes.Repeat([]byte("x"), 1<<20))
		c.(*hbonetest.CountingConn).Conn.(*net.TCPConn).SetLinger(0) // RST
	})
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	c.Write([]byte("go"))
	n, err := io.Copy(io.Discard, c)
	if err == nil {
		t.Fatalf("read %d bytes and a clean EOF after an upstream reset; want an error", n)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stream hung until the deadline: %v", err)
	}
}

func TestTunnel3_Deadlines(t *testing.T) {
	up := startUpstream(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	// The stream is still usable after the deadline is lifted.
	c.SetReadDeadline(time.Time{})
	if _, err := c.Write([]byte("still open")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// TestClient3_PoolsPerKey: two tunnels with the same (source, destination,
// address) share one QUIC connection; another source identity gets its own.
func TestClient3_PoolsPerKey(t *testing.T) {
	p := newPKI(t, td)
	up := startUpstream(t, echo)
	ts := startServer(t, p.Source(serverID), bundles(p), ServerConfig{})
	otherClient := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other")
	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{
		clientID: p.Source(clientID), otherClient: p.Source(otherClient),
	})
	var conns []net.Conn
	dial := func(src spiffeid.ID) {
		tgt := target(ts, up.Addr())
		tgt.Source = src
		c, err := cl.Dial(ctxT(t), tgt)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	dial(clientID)
	dial(clientID)
	if n, streams := cl.PoolStats(); n != 1 || streams != 2 {
		t.Fatalf("same key: %d connections, %d streams; want 1, 2", n, streams)
	}
	dial(otherClient)
	if n, streams := cl.PoolStats(); n != 2 || streams != 3 {
		t.Fatalf("another source: %d connections, %d streams; want 2, 3", n, streams)
	}
	streamsOf := map[string]int{}
	for _, tun := range cl.Tunnels() {
		streamsOf[tun.Source] = tun.Streams
		if tun.Transport != "hbone3" || tun.Path == nil || tun.Path.Sent == 0 || tun.Path.SmoothedRTT <= 0 || tun.Path.CongestionWindow == 0 {
			t.Errorf("tunnel %+v (path %+v): want hbone3 with quic-go's measurements", tun, tun.Path)
		}
	}
	if want := map[string]int{clientID.String(): 2, otherClient.String(): 1}; !maps.Equal(streamsOf, want) {
		t.Errorf("Tunnels: streams per source %v, want %v", streamsOf, want)
	}
	peers := map[spiffeid.ID]bool{}
	for _, c := range conns {
		c.Write([]byte("ping"))
		io.ReadFull(c, make([]byte, 4))
		c.Close()
	}
	waitFor(t, "stream results", func() bool { return len(ts.streamResults()) == 3 })
	for _, r := range ts.streamResults() {
		peers[r.Peer] = true
	}
	if ts.conns.Load() != 2 || !peers[clientID] || !peers[otherClient] {
		t.Fatalf("server saw %d client connections, peers %v; want 2 connections, both identities", ts.conns.Load(), peers)
	}
}

// TestClient3_ConcurrentStreams holds 250 streams open at once; the pool
// carries them on at most 3 QUIC connections (100 streams each).
func TestClient3_ConcurrentStreams(t *testing.T) {
	const streams = 250
	up := startUpstream(t, echo)
	ts, cl := meshPair(t, ServerConfig{})
	ctx := ctxT(t)
	var open sync.WaitGroup
	open.Add(streams)
	release := make(chan struct{})
	errs := make(chan error, streams)
	for i := range streams {
		go func() {
			c, err := cl.Dial(ctx, target(ts, up.Addr()))
			if err != nil {
				open.Done()
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(testTimeout))
			msg := bytes.Repeat([]byte{byte(i)}, 4096)
			_, err = c.Write(msg)
			got := make([]byte, len(msg))
			if err == nil {
				_, err = io.ReadFull(c, got)
			}
			if err == nil && !bytes.Equal(got, msg) {
				err = errors.New("echo mismatch")
			}
			open.Done()
			<-release
			errs <- err
		}()
	}
	open.Wait()
	conns, active := cl.PoolStats()
	close(release)
	for range streams {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if conns > 3 || ts.conns.Load() > 3 {
		t.Fatalf("%d streams used %d pooled / %d server connections, want ≤ 3", streams, conns, ts.conns.Load())
	}
	if active != streams {
		t.Fatalf("pool counted %d open streams, want %d", active, streams)
	}
	waitFor(t, "streams to end", func() bool { _, s := cl.PoolStats(); return s == 0 })
}

// Refusals at the handshake: each with its specific error, and not a byte
// reaches the upstream.
func TestServer3_RefusesBadClientCertificates(t *testing.T) {
	p := newPKI(t, td)
	foreign := newPKI(t, td)
	other := newPKI(t, otherTD)
	otherID := spiffeid.RequireFromString("spiffe://other.example/ns/shop/sa/client")
	expired, err := p.CA.NewSVIDAt(clientID, time.Now().Add(-2*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		src    spiffeid.ID
		svids  x509svid.Source
		server error
	}{
		{"foreign CA", clientID, foreign.Source(clientID), identity.ErrPeerUnknownAuthority},
		{"expired", clientID, identity.NewStaticSource(expired, p.CA.Bundle()), identity.ErrPeerExpired},
		{"other trust domain", otherID, other.Source(otherID), identity.ErrPeerWrongTrustDomain},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, echo)
			// The server trusts both domains' CAs, so only the rule under
			// test can refuse.
			ts := startServer(t, p.Source(serverID), bundles(p, other), ServerConfig{})
			cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{tc.src: tc.svids})
			tgt := target(ts, up.Addr())
			tgt.Source = tc.src
			c, err := cl.Dial(ctxT(t), tgt)
			if err == nil {
				// TLS 1.3 clients may learn of a refused certificate late.
				c.SetDeadline(time.Now().Add(testTimeout))
				c.Write([]byte("secret"))
				_, err = c.Read(make([]byte, 1))
				c.Close()
			}
			if err == nil {
				t.Fatal("tunnel opened, want refusal")
			}
			waitFor(t, "server refusal", func() bool { return len(ts.refusals()) > 0 })
			if got := ts.refusals()[0]; !errors.Is(got, tc.server) {
				t.Fatalf("server refused with %v, want %v", got, tc.server)
			}
			if up.Accepted.Load() != 0 || up.Bytes.Load() != 0 {
				t.Fatalf("upstream saw %d connections, %d bytes", up.Accepted.Load(), up.Bytes.Load())
			}
		})
	}
}

func TestClient3_RefusesServerWithWrongID(t *testing.T) {
	p := newPKI(t, td)
	impostor := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/impostor")
	up := startUpstream(t, echo)
	ts := startServer(t, p.Source(impostor), bundles(p), ServerConfig{})
	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.Source(clientID)})
	_, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if !errors.Is(err, identity.ErrPeerWrongID) {
		t.Fatalf("Dial error = %v, want %v", err, identity.ErrPeerWrongID)
	}
	if up.Accepted.Load() != 0 {
		t.Fatal("upstream was reached")
	}
}

func TestServer3_StatusCodes(t *testing.T) {
	up := startUpstream(t, echo)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	unreachable := netip.MustParseAddrPort(closed.Addr().String())
	closed.Close()
	denied := netip.MustParseAddrPort("127.0.0.1:9")
	notHere := netip.MustParseAddrPort("127.0.0.1:10")

	p := newPKI(t, td)
	ts := startServer(t, p.Source(serverID), bundles(p), ServerConfig{
		Authorize: func(_ context.Context, st *Stream) error {
			switch st.Authority {
			case denied:
				return errors.New("policy says no")
			case notHere:
				return hbone.ErrBadDestination
			}
			return nil
		},
	})
	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.Source(clientID)})

	for _, tc := range []struct {
		name    string
		dest    netip.AddrPort
		want    int
		message string
	}{
		{"denied by policy", denied, 401, "policy says no"},
		{"destination not served here", notHere, 400, hbone.ErrBadDestination.Error()},
		{"upstream unreachable", unreachable, 503, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(ts.streamResults())
			_, err := cl.Dial(ctxT(t), target(ts, tc.dest))
			var se *hbone.StatusError
			if !errors.As(err, &se) || se.Code != tc.want {
				t.Fatalf("Dial error = %v, want status %d", err, tc.want)
			}
			waitFor(t, "stream result", func() bool { return len(ts.streamResults()) > before })
			r := ts.streamResults()[before]
			if r.Status != tc.want || r.Err == nil || !strings.Contains(r.Err.Error(), tc.message) {
				t.Fatalf("result: status %d err %v; want %d with %q", r.Status, r.Err, tc.want, tc.message)
			}
		})
	}

	t.Run("client refuses oversized headers", func(t *testing.T) {
		tgt := target(ts, up.Addr())
		tgt.Header = http.Header{"Baggage": {strings.Repeat("k=v,", 5000)}}
		if _, err := cl.Dial(ctxT(t), tgt); err == nil || !strings.Contains(err.Error(), "limit") {
			t.Fatalf("Dial error = %v, want header limit error", err)
		}
	})

	t.Run("headers reach Authorize", func(t *testing.T) {
		tgt := target(ts, up.Addr())
		tgt.Header = http.Header{"Baggage": {"k8s.namespace.name=shop"}, "Forwarded": {"for=10.0.0.1"}}
		c, err := cl.Dial(ctxT(t), tgt)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		waitFor(t, "stream result", func() bool {
			for _, r := range ts.streamResults() {
				if r.Header().Get("Baggage") == "k8s.namespace.name=shop" && r.Header().Get("Forwarded") == "for=10.0.0.1" {
					return len(r.Fields) == 2 // no user-agent, no accept-encoding
				}
			}
			return false
		})
	})

	raw := dialRaw(t, ts, p.Source(clientID), bundles(p))
	for _, tc := range []struct {
		name string
		req  *http.Request
		want int
	}{
		{"GET is not CONNECT", rawRequest(http.MethodGet, up.Addr().String(), nil), 400},
		{"authority is a host name", rawRequest(http.MethodConnect, "example.com:80", nil), 400},
		{"authority without port", rawRequest(http.MethodConnect, "127.0.0.1", nil), 400},
		{"authority with zone", rawRequest(http.MethodConnect, "[fe80::1%25eth0]:80", nil), 400},
		// Malformed at the HTTP/3 layer (RFC 9114 §4.1.2): quic-go resets
		// the stream with H3_MESSAGE_ERROR before any handler runs.
		{"connection-specific header", rawRequest(http.MethodConnect, up.Addr().String(), http.Header{"Te": {"gzip"}}), -1},
		{"header section over 16 KiB", rawRequest(http.MethodConnect, up.Addr().String(), http.Header{"X-A": {strings.Repeat("a", 6000)}, "X-B": {strings.Repeat("b", 6000)}, "X-C": {strings.Repeat("c", 6000)}}), 431},
		{"valid", rawRequest(http.MethodConnect, up.Addr().String(), nil), 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := raw.request(t, tc.req); got != tc.want {
				t.Fatalf("status = %d, want %d", got, tc.want)
			}
		})
	}
	// A 200 means the server's dial completed; the upstream's accept loop
	// may count it a moment later.
	waitFor(t, "the valid requests' upstream connections", func() bool { return up.Accepted.Load() >= 2 })
	if n := up.Accepted.Load(); n != 2 {
		t.Fatalf("upstream accepted %d connections, want 2 (the valid requests)", n)
	}
}

// TestClient3_CertificateRotation: after the client's certificate is
// renewed, new streams present the new certificate while open streams
// carry on.
func TestClient3_CertificateRotation(t *testing.T) {
	p := newPKI(t, td)
	src, err := identity.NewSource(ctxT(t), identity.SourceConfig{
		ID: clientID,
		Fetch: func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
			svid, err := p.CA.NewSVID(id, time.Hour)
			return svid, p.CA.Bundle(), err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	up := startUpstream(t, echo)
	var mu sync.Mutex
	var serials []string
	ts := startServer(t, p.Source(serverID), bundles(p), ServerConfig{
		Authorize: func(_ context.Context, st *Stream) error {
			mu.Lock()
			serials = append(serials, st.PeerCertificate.SerialNumber.String())
			mu.Unlock()
			return nil
		},
	})
	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: src})

	old, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := src.Rotate(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	cl.Rotate(clientID)
	fresh, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	for _, c := range []net.Conn{old, fresh} {
		c.SetDeadline(time.Now().Add(testTimeout))
		c.Write([]byte("ping"))
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatalf("stream after rotation: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	svid, _ := src.GetX509SVID()
	if len(serials) != 2 || serials[0] == serials[1] || serials[1] != svid.Certificates[0].SerialNumber.String() {
		t.Fatalf("serials seen by server = %v, want old then current %s", serials, svid.Certificates[0].SerialNumber)
	}
	// The retired connection closes once its last stream ends.
	old.Close()
	waitFor(t, "retired connection to close", func() bool { n, _ := cl.PoolStats(); return n == 1 })
}

// TestClient3_ClosesIdleConnections: a pooled connection with no streams
// for IdleTimeout is closed and leaves the pool; the next Dial opens a new one.
func TestClient3_ClosesIdleConnections(t *testing.T) {
	p := newPKI(t, td)
	up := startUpstream(t, echo)
	ts := startServer(t, p.Source(serverID), bundles(p), ServerConfig{})
	src := p.Source(clientID)
	cl, err := NewClient(ClientConfig{
		TLSConfig: func(_, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientConfig(src, bundles(p), dst), nil
		},
		IdleTimeout: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := range 2 {
		c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		if conns, _ := cl.PoolStats(); conns != 1 {
			t.Fatalf("pool has %d connections, want 1", conns)
		}
		c.Close()
		waitFor(t, "idle connection to close", func() bool { conns, _ := cl.PoolStats(); return conns == 0 })
		if got := ts.conns.Load(); got != int64(i+1) {
			t.Fatalf("server saw %d connections, want %d", got, i+1)
		}
	}
}

// TestServer3_DrainsOnShutdown: when Serve's context ends, an open stream
// may finish, and Serve returns once it has.
func TestServer3_DrainsOnShutdown(t *testing.T) {
	up := startUpstream(t, echo)
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	stopped := make(chan struct{})
	go func() { ts.stop(); close(stopped) }()
	// The open stream still works while the server drains.
	for range 3 {
		c.Write([]byte("ping"))
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatalf("stream during drain: %v", err)
		}
	}
	select {
	case <-stopped:
		t.Fatal("Serve returned with a stream open")
	default:
	}
	c.(closeWriter).CloseWrite()
	io.Copy(io.Discard, c)
	c.Close()
	select {
	case <-stopped:
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return after the last stream ended")
	}
}
