package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/internal/hbonetest"
	"github.com/ambientmesh/ambient/internal/identity"
)

var (
	td         = hbonetest.TD
	clientID   = hbonetest.ClientID
	serverID   = hbonetest.ServerID
	otherTD    = hbonetest.OtherTD
	testTimout = 20 * time.Second
)

// The shared tunnel-test harness (internal/hbonetest), under this
// package's names.
type (
	pki      = hbonetest.PKI
	upstream = hbonetest.Upstream
)

var (
	newPKI        = hbonetest.NewPKI
	bundles       = hbonetest.Bundles
	startUpstream = hbonetest.StartUpstream
	echo          = hbonetest.Echo
)

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
	hbonetest.WaitFor(t, testTimout, what, cond)
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

func ctxT(t testing.TB) context.Context { return hbonetest.Ctx(t, testTimout) }
