package hbone3

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/identity"
)

var (
	td          = spiffeid.RequireTrustDomainFromString("cluster.local")
	clientID    = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client")
	serverID    = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/server")
	otherTD     = spiffeid.RequireTrustDomainFromString("other.example")
	testTimeout = 30 * time.Second
)

// pki is a CA minted for one test, with helpers for SVID sources.
type pki struct {
	t  testing.TB
	ca *ca.Authority
}

func newPKI(t testing.TB, domain spiffeid.TrustDomain) *pki {
	t.Helper()
	a, err := ca.NewSelfSigned(domain, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &pki{t: t, ca: a}
}

// source returns a static source holding a fresh SVID for id.
func (p *pki) source(id spiffeid.ID) *identity.StaticSource {
	p.t.Helper()
	svid, err := p.ca.NewSVID(id, time.Hour)
	if err != nil {
		p.t.Fatal(err)
	}
	return identity.NewStaticSource(svid, p.ca.Bundle())
}

// bundles trusts the given CAs.
func bundles(ps ...*pki) x509bundle.Source {
	set := x509bundle.NewSet()
	for _, p := range ps {
		set.Add(p.ca.Bundle())
	}
	return set
}

// upstream is a TCP server behind the tunnel; it counts what reaches it.
type upstream struct {
	ln       net.Listener
	accepted atomic.Int64
	bytes    atomic.Int64
	wg       sync.WaitGroup
}

// startUpstream serves handle on a loopback port until the test ends.
func startUpstream(t testing.TB, handle func(net.Conn)) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{ln: ln}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepted.Add(1)
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer c.Close()
				handle(&countingConn{Conn: c, n: &u.bytes})
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

func (u *upstream) addr() netip.AddrPort { return netip.MustParseAddrPort(u.ln.Addr().String()) }

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

type closeWriter interface{ CloseWrite() error }

// echo copies everything back, half-closing when the client does.
func echo(c net.Conn) {
	io.Copy(c, c)
	c.(closeWriter).CloseWrite()
}

// tunnelServer is a running Server with what it reported.
type tunnelServer struct {
	srv     *Server
	addr    netip.AddrPort
	mu      sync.Mutex
	results []hbone.StreamResult
	refused []error
	conns   atomic.Int64 // distinct client addresses (one UDP socket per client connection)
	seen    sync.Map
	stop    func() // shuts the server down and waits for Serve
}

func (ts *tunnelServer) streamResults() []hbone.StreamResult {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]hbone.StreamResult(nil), ts.results...)
}

func (ts *tunnelServer) refusals() []error {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]error(nil), ts.refused...)
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startServer runs an HBONE/3 server for the SVIDs, trusting trust; cfg's
// zero fields get test defaults (allow everything).
func startServer(t testing.TB, svids x509svid.Source, trust x509bundle.Source, cfg ServerConfig) *tunnelServer {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, pc, svids, trust, cfg)
}

func serveOn(t testing.TB, pc net.PacketConn, svids x509svid.Source, trust x509bundle.Source, cfg ServerConfig) *tunnelServer {
	t.Helper()
	ts := &tunnelServer{}
	if cfg.TLSConfig == nil {
		cfg.TLSConfig = identity.ServerConfig(svids, trust, td, identity.WithNextProtos(identity.ALPNHTTP3))
	}
	if cfg.Authorize == nil {
		cfg.Authorize = func(context.Context, *Stream) error { return nil }
	}
	authorize := cfg.Authorize
	cfg.Authorize = func(ctx context.Context, st *Stream) error {
		if _, dup := ts.seen.LoadOrStore(st.PeerAddr, true); !dup {
			ts.conns.Add(1)
		}
		return authorize(ctx, st)
	}
	cfg.OnStreamEnd = func(r hbone.StreamResult) {
		ts.mu.Lock()
		ts.results = append(ts.results, r)
		ts.mu.Unlock()
	}
	cfg.OnConnRefused = func(_ net.Addr, err error) {
		ts.mu.Lock()
		ts.refused = append(ts.refused, err)
		ts.mu.Unlock()
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.srv = srv
	ts.addr = netip.MustParseAddrPort(pc.LocalAddr().String())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pc) }()
	var once sync.Once
	ts.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(testTimeout):
				t.Errorf("Serve did not return after shutdown")
			}
		})
	}
	t.Cleanup(ts.stop)
	return ts
}

// newClient returns a Client whose sources map identities to SVID sources,
// trusting trust. Its TLS function is the HTTP/2 client's (ALPN h2): the
// client replaces the ALPN itself.
func newClient(t testing.TB, trust x509bundle.Source, sources map[spiffeid.ID]x509svid.Source) *Client {
	t.Helper()
	cl, err := NewClient(ClientConfig{
		TLSConfig: func(src, dst spiffeid.ID) (*tls.Config, error) {
			s, ok := sources[src]
			if !ok {
				return nil, errors.New("no source for " + src.String())
			}
			return identity.ClientConfig(s, trust, dst), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func target(server *tunnelServer, dest netip.AddrPort) hbone.Target {
	return hbone.Target{Source: clientID, Destination: serverID, Address: server.addr, Authority: dest}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// meshPair is a server for serverID and a client for clientID, one CA.
func meshPair(t testing.TB, cfg ServerConfig) (*tunnelServer, *Client) {
	p := newPKI(t, td)
	ts := startServer(t, p.source(serverID), bundles(p), cfg)
	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.source(clientID)})
	return ts, cl
}
