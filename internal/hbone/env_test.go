package hbone

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
	"github.com/ambientmesh/ambient/internal/identity"
)

var (
	td         = spiffeid.RequireTrustDomainFromString("cluster.local")
	clientID   = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client")
	serverID   = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/server")
	otherTD    = spiffeid.RequireTrustDomainFromString("other.example")
	testTimout = 20 * time.Second
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

// echo copies everything back, half-closing when the client does.
func echo(c net.Conn) {
	io.Copy(c, c)
	c.(interface{ CloseWrite() error }).CloseWrite()
}

// tunnelServer is a running Server with what it reported.
type tunnelServer struct {
	addr    netip.AddrPort
	mu      sync.Mutex
	results []StreamResult
	refused []error
	accepts atomic.Int64
}

func (ts *tunnelServer) streamResults() []StreamResult {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]StreamResult(nil), ts.results...)
}

func (ts *tunnelServer) refusals() []error {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]error(nil), ts.refused...)
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startServer runs an HBONE server for serverID trusting trust; cfg's
// zero fields get test defaults (allow everything).
func startServer(t testing.TB, svids x509svid.Source, trust x509bundle.Source, cfg ServerConfig) *tunnelServer {
	t.Helper()
	ts := &tunnelServer{}
	if cfg.TLSConfig == nil {
		cfg.TLSConfig = identity.ServerConfig(svids, trust, td)
	}
	if cfg.Authorize == nil {
		cfg.Authorize = func(context.Context, *Stream) error { return nil }
	}
	cfg.OnStreamEnd = func(r StreamResult) {
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = netip.MustParseAddrPort(ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, &countingListener{Listener: ln, n: &ts.accepts}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// newClient returns a Client whose sources map identities to SVID sources,
// trusting trust.
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

func target(server *tunnelServer, dest netip.AddrPort) Target {
	return Target{Source: clientID, Destination: serverID, Address: server.addr, Authority: dest}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimout)
	t.Cleanup(cancel)
	return ctx
}
