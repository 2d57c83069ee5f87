package hbone3

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/hbonetest"
)

var servedAuthority = netip.MustParseAddrPort("10.96.0.10:80")

// serveWith runs a server whose CONNECT streams are handed to serve
// instead of being dialled.
func serveWith(t *testing.T, serve func(st *Stream, c net.Conn)) (*tunnelServer, *Client) {
	return meshPair(t, ServerConfig{
		Serve: func(_ context.Context, st *Stream, c net.Conn) { serve(st, c) },
		Dial: func(context.Context, *Stream) (net.Conn, error) {
			t.Error("a server with Serve dialled")
			return nil, errors.New("no dialling")
		},
	})
}

// TestServe3_HTTPServerOnTheStream: an http.Server serves keep-alive
// requests on the QUIC stream itself, handed over by Serve with the
// stream's peer; the stream's result, once the client closes, counts the
// bytes each way.
func TestServe3_HTTPServerOnTheStream(t *testing.T) {
	serveHTTP := hbonetest.StartUpperHTTP(t)
	peers := make(chan string, 1)
	ts, cl := serveWith(t, func(st *Stream, c net.Conn) {
		peers <- st.Peer.String()
		serveHTTP(c) // Serve returns at once: the HTTP server owns the conn
	})
	c, err := cl.Dial(ctxT(t), target(ts, servedAuthority))
	if err != nil {
		t.Fatal(err)
	}
	hbonetest.UpperRoundTrips(t, c, 3)
	if peer := <-peers; peer != clientID.String() {
		t.Errorf("Serve saw peer %q, want %q", peer, clientID)
	}
	if len(ts.streamResults()) != 0 {
		t.Fatal("the stream ended while the HTTP server still served it")
	}
	c.Close()
	waitFor(t, "stream result", func() bool { return len(ts.streamResults()) == 1 })
	r := ts.streamResults()[0]
	if r.Status != 200 || r.Authority != servedAuthority || r.Peer != clientID || r.BytesIn == 0 || r.BytesOut == 0 {
		t.Errorf("result = status %d authority %s peer %s in %d out %d", r.Status, r.Authority, r.Peer, r.BytesIn, r.BytesOut)
	}
}

// TestServe3_RefusalsStillApply: Authorize still refuses before Serve
// sees a stream, and a connect-udp stream is refused with 501 (Serve
// takes byte streams only).
func TestServe3_RefusalsStillApply(t *testing.T) {
	served := make(chan struct{}, 1)
	p := newPKI(t, td)
	ts := startServer(t, p.Source(serverID), bundles(p), ServerConfig{
		Authorize: func(_ context.Context, st *Stream) error {
			if st.Authority.Port() == 81 {
				return errors.New("port 81 is not for you")
			}
			return nil
		},
		Serve: func(_ context.Context, _ *Stream, c net.Conn) { served <- struct{}{}; c.Close() },
	})
	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.Source(clientID)})
	_, err := cl.Dial(ctxT(t), target(ts, netip.AddrPortFrom(servedAuthority.Addr(), 81)))
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Errorf("refused by Authorize: %v, want 401", err)
	}
	_, err = cl.DialUDP(ctxT(t), target(ts, servedAuthority))
	if !errors.As(err, &se) || se.Code != http.StatusNotImplemented {
		t.Errorf("connect-udp to a Serve server: %v, want 501", err)
	}
	select {
	case <-served:
		t.Error("Serve was handed a refused stream")
	default:
	}
}
