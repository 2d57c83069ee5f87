// Package hbonetest holds what the tests of both tunnel transports (hbone
// on HTTP/2, hbone3 on HTTP/3) share: identities, a CA per test, and TCP
// upstreams behind the tunnel. Only tests import it.
package hbonetest

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/identity"
)

// The identities tunnel tests use.
var (
	TD       = spiffeid.RequireTrustDomainFromString("cluster.local")
	ClientID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client")
	ServerID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/server")
	OtherTD  = spiffeid.RequireTrustDomainFromString("other.example")
)

// PKI is a CA minted for one test.
type PKI struct {
	t  testing.TB
	CA *ca.Authority
}

// NewPKI mints a self-signed CA for domain.
func NewPKI(t testing.TB, domain spiffeid.TrustDomain) *PKI {
	t.Helper()
	a, err := ca.NewSelfSigned(domain, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{t: t, CA: a}
}

// Source returns a static source holding a fresh SVID for id.
func (p *PKI) Source(id spiffeid.ID) *identity.StaticSource {
	p.t.Helper()
	svid, err := p.CA.NewSVID(id, time.Hour)
	if err != nil {
		p.t.Fatal(err)
	}
	return identity.NewStaticSource(svid, p.CA.Bundle())
}

// Bundles trusts the given CAs.
func Bundles(ps ...*PKI) x509bundle.Source {
	set := x509bundle.NewSet()
	for _, p := range ps {
		set.Add(p.CA.Bundle())
	}
	return set
}

// Upstream is a TCP server behind the tunnel; it counts what reaches it.
type Upstream struct {
	ln       net.Listener
	Accepted atomic.Int64 // connections
	Bytes    atomic.Int64 // bytes read by the handlers
	wg       sync.WaitGroup
}

// StartUpstream serves handle on a loopback port until the test ends.
func StartUpstream(t testing.TB, handle func(net.Conn)) *Upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &Upstream{ln: ln}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.Accepted.Add(1)
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer c.Close()
				handle(&CountingConn{Conn: c, n: &u.Bytes})
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

// Addr is the upstream's address.
func (u *Upstream) Addr() netip.AddrPort { return netip.MustParseAddrPort(u.ln.Addr().String()) }

// CountingConn is what an Upstream handler gets: the accepted connection,
// its reads counted.
type CountingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *CountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *CountingConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// Echo copies everything back, half-closing when the client does.
func Echo(c net.Conn) {
	io.Copy(c, c)
	c.(interface{ CloseWrite() error }).CloseWrite()
}

// WaitFor polls cond until it holds, failing the test after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Ctx is a context ending after timeout or with the test.
func Ctx(t testing.TB, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// StartUDPEcho runs a UDP echo server on loopback until the test ends.
func StartUDPEcho(t testing.TB) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// UDPPayload is datagram i of a test run: 1 to max bytes of noise.
func UDPPayload(i, max int) []byte {
	p := make([]byte, 1+(i*7919)%max)
	rand.NewChaCha8([32]byte{byte(i), byte(i >> 8)}).Read(p)
	return p
}
