package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"

	"github.com/ambientmesh/ambient/internal/identity"
)

func TestMain(m *testing.M) {
	// The idle poller lives as long as the process.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/ambientmesh/ambient/internal/hbone.(*idlePoller).run"))
}

// meshPair is a server for serverID and a client for clientID, one CA.
func meshPair(t *testing.T, cfg ServerConfig) (*tunnelServer, *Client) {
	p := newPKI(t, td)
	ts := startServer(t, p.Source(serverID), bundles(p), cfg)
	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.Source(clientID)})
	return ts, cl
}

func TestTunnel_RoundTrip(t *testing.T) {
	up := startUpstream(t, echo)
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("hello through the mesh")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	c.Close()
	waitFor(t, "stream result", func() bool { return len(ts.streamResults()) == 1 })
	r := ts.streamResults()[0]
	if r.Status != 200 || r.Peer != clientID || r.Authority != up.Addr() {
		t.Errorf("result = status %d peer %s authority %s", r.Status, r.Peer, r.Authority)
	}
}

// TestTunnel_GiBTransfer_SHA256Matches sends 1 GiB through the tunnel to an
// echo server: what the server received and what came back hash the same as
// what was sent.
func TestTunnel_GiBTransfer_SHA256Matches(t *testing.T) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 64 << 20
	}
	var serverSum []byte
	serverDone := make(chan struct{})
	up := startUpstream(t, func(c net.Conn) {
		defer close(serverDone)
		h := sha256.New()
		io.Copy(io.MultiWriter(h, c), c) // echo while hashing
		serverSum = h.Sum(nil)
		c.(interface{ CloseWrite() error }).CloseWrite()
	})
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	sent := sha256.New()
	writeErr := make(chan error, 1)
	go func() {
		src := io.LimitReader(rand.NewChaCha8([32]byte{1}), size)
		_, err := io.Copy(io.MultiWriter(c, sent), src)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		writeErr <- err
	}()
	back := sha256.New()
	n, err := io.Copy(back, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	<-serverDone
	if n != size {
		t.Fatalf("echoed %d bytes, want %d", n, size)
	}
	if want := sent.Sum(nil); !bytes.Equal(serverSum, want) || !bytes.Equal(back.Sum(nil), want) {
		t.Fatalf("sha256 mismatch: sent %x, server got %x, echoed %x", want, serverSum, back.Sum(nil))
	}
}

// TestTunnel_HalfClose: the client shuts its write side and still reads
// the whole reply, which the server sends only after seeing EOF.
func TestTunnel_HalfClose(t *testing.T) {
	reply := bytes.Repeat([]byte("r"), 3<<20)
	up := startUpstream(t, func(c net.Conn) {
		req, err := io.ReadAll(c)
		if err != nil || string(req) != "request" {
			return
		}
		c.Write(reply)
		c.(interface{ CloseWrite() error }).CloseWrite()
	})
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("request"))
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, reply) {
		t.Fatalf("reply: got %d bytes, want %d", len(got), len(reply))
	}
}

// TestClient_ThousandStreamsRideOnTenConnections holds 1,000 streams open at
// once; the pool carries them on at most 10 HTTP/2 connections.
func TestClient_ThousandStreamsRideOnTenConnections(t *testing.T) {
	const streams = 1000
	up := startUpstream(t, echo)
	ts, cl := meshPair(t, ServerConfig{})
	ctx := ctxT(t)
	var open, release sync.WaitGroup
	open.Add(streams)
	release.Add(1)
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
			msg := bytes.Repeat([]byte{byte(i)}, 1024)
			_, err = c.Write(msg)
			got := make([]byte, len(msg))
			if err == nil {
				_, err = io.ReadFull(c, got)
			}
			if err == nil && !bytes.Equal(got, msg) {
				err = errors.New("echo mismatch")
			}
			open.Done()
			release.Wait()
			errs <- err
		}()
	}
	stopPolling := make(chan struct{})
	polled := make(chan struct{})
	go func() { // the debug view reads the pool while it grows
		defer close(polled)
		for {
			select {
			case <-stopPolling:
				return
			default:
				cl.Tunnels()
			}
		}
	}()
	open.Wait()
	close(stopPolling)
	<-polled
	conns, active := cl.PoolStats()
	tunnels := cl.Tunnels()
	release.Done()
	for range streams {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if conns > 10 || ts.accepts.Load() > 10 {
		t.Fatalf("1000 streams used %d pooled / %d accepted connections, want ≤ 10", conns, ts.accepts.Load())
	}
	if active != streams {
		t.Fatalf("pool counted %d open streams, want %d", active, streams)
	}
	inTunnels := 0
	for _, tun := range tunnels {
		inTunnels += tun.Streams
		if tun.Transport != "hbone" || tun.Path == nil || tun.Path.Sent == 0 || tun.Path.SmoothedRTT <= 0 {
			t.Errorf("tunnel %+v (path %+v): want hbone with TCP_INFO measurements", tun, tun.Path)
		}
	}
	if len(tunnels) != conns || inTunnels != streams {
		t.Errorf("Tunnels shows %d connections with %d streams, want %d with %d", len(tunnels), inTunnels, conns, streams)
	}
	t.Logf("%d streams on %d connections", streams, conns)
}

// Refusals at the handshake: each with its specific error, and not a byte
// reaches the upstream.
func TestServer_RefusesBadClientCertificates(t *testing.T) {
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
				// TLS 1.3 clients learn of a refused certificate on first read.
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

func TestClient_RefusesServerWithWrongID(t *testing.T) {
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

func TestServer_StatusCodes(t *testing.T) {
	up := startUpstream(t, echo)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	unreachable := netip.MustParseAddrPort(closed.Addr().String())
	closed.Close()
	denied := netip.MustParseAddrPort("127.0.0.1:9")

	p := newPKI(t, td)
	ts := startServer(t, p.Source(serverID), bundles(p), ServerConfig{
		Authorize: func(_ context.Context, st *Stream) error {
			if st.Authority == denied {
				return errors.New("policy says no")
			}
			return nil
		},
	})
	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.Source(clientID)})

	for _, tc := range []struct {
		name string
		dest netip.AddrPort
		want int
	}{
		{"denied by policy", denied, 401},
		{"upstream unreachable", unreachable, 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cl.Dial(ctxT(t), target(ts, tc.dest))
			var se *StatusError
			if !errors.As(err, &se) || se.Code != tc.want {
				t.Fatalf("Dial error = %v, want status %d", err, tc.want)
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

	raw := dialRaw(t, ts, p.Source(clientID), bundles(p))
	for _, tc := range []struct {
		name   string
		fields [][2]string
		want   int
	}{
		{"GET is not CONNECT", [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", up.Addr().String()}, {":path", "/"}}, 400},
		{"authority is a host name", [][2]string{{":method", "CONNECT"}, {":authority", "example.com:80"}}, 400},
		{"authority without port", [][2]string{{":method", "CONNECT"}, {":authority", "127.0.0.1"}}, 400},
		{"missing authority", [][2]string{{":method", "CONNECT"}}, 400},
		{"header list over 16 KiB", [][2]string{{":method", "CONNECT"}, {":authority", up.Addr().String()}, {"x-a", strings.Repeat("a", 6000)}, {"x-b", strings.Repeat("b", 6000)}, {"x-c", strings.Repeat("c", 6000)}}, 400},
		{"valid", [][2]string{{":method", "CONNECT"}, {":authority", up.Addr().String()}}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := raw.request(tc.fields); got != tc.want {
				t.Fatalf("status = %d, want %d", got, tc.want)
			}
		})
	}
	// The 200 means the server's dial completed; the upstream's accept loop
	// may count it a moment later.
	waitFor(t, "the valid request's upstream connection", func() bool { return up.Accepted.Load() >= 1 })
	if n := up.Accepted.Load(); n != 1 {
		t.Fatalf("upstream accepted %d connections, want 1 (only the valid request)", n)
	}
}

// TestClient_CertificateRotation: after the client's certificate is renewed,
// new streams present the new certificate while open streams carry on.
func TestClient_CertificateRotation(t *testing.T) {
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
		c.Write([]byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("stream after rotation: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	svid, _ := src.GetX509SVID()
	if len(serials) != 2 || serials[0] == serials[1] || serials[1] != svid.Certificates[0].SerialNumber.String() {
		t.Fatalf("serials seen by server = %v, want old then current %s", serials, svid.Certificates[0].SerialNumber)
	}
}

// TestClient_ClosesIdleConnections: a pooled connection with no streams for
// IdleTimeout is closed and leaves the pool; the next Dial opens a new one.
func TestClient_ClosesIdleConnections(t *testing.T) {
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
		if got := ts.accepts.Load(); got != int64(i+1) {
			t.Fatalf("server accepted %d connections, want %d", got, i+1)
		}
	}
}
