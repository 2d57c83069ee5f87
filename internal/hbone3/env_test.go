package hbone3

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

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/hbonetest"
	"github.com/ambientmesh/ambient/internal/identity"
)

var (
	td          = hbonetest.TD
	clientID    = hbonetest.ClientID
	serverID    = hbonetest.ServerID
	otherTD     = hbonetest.OtherTD
	testTimeout = 30 * time.Second
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

type closeWriter interface{ CloseWrite() error }

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
	hbonetest.WaitFor(t, testTimeout, what, cond)
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

func ctxT(t testing.TB) context.Context { return hbonetest.Ctx(t, testTimeout) }

// meshPair is a server for serverID and a client for clientID, one CA.
func meshPair(t testing.TB, cfg ServerConfig) (*tunnelServer, *Client) {
	p := newPKI(t, td)
	ts := startServer(t, p.Source(serverID), bundles(p), cfg)
	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.Source(clientID)})
	return ts, cl
}
