package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/hbonetest"
)

// serveWith runs a server whose streams are handed to serve instead of
// being dialled.
func serveWith(t *testing.T, serve func(st *Stream, c net.Conn)) (*tunnelServer, *Client) {
	return meshPair(t, ServerConfig{Serve: func(_ context.Context, st *Stream, c net.Conn) { serve(st, c) }})
}

var servedAuthority = netip.MustParseAddrPort("10.96.0.10:80")

// TestServe_HTTPServerOnTheStream: an http.Server serves requests on the
// stream itself; keep-alive, the stream's identity and the byte counts
// in the stream's result.
func TestServe_HTTPServerOnTheStream(t *testing.T) {
	serveHTTP := hbonetest.StartUpperHTTP(t)
	peers := make(chan string, 1)
	ts, cl := serveWith(t, func(st *Stream, c net.Conn) {
		peers <- st.Peer.String()
		serveHTTP(c)
	})
	c, err := cl.Dial(ctxT(t), target(ts, servedAuthority))
	if err != nil {
		t.Fatal(err)
	}
	hbonetest.UpperRoundTrips(t, c, 3)
	if peer := <-peers; peer != clientID.String() {
		t.Errorf("Serve saw peer %q, want %q", peer, clientID)
	}
	c.Close()
	waitFor(t, "stream result", func() bool { return len(ts.streamResults()) == 1 })
	r := ts.streamResults()[0]
	if r.Status != 200 || r.Authority != servedAuthority || r.BytesIn == 0 || r.BytesOut == 0 {
		t.Errorf("result = status %d authority %s in %d out %d", r.Status, r.Authority, r.BytesIn, r.BytesOut)
	}
}

// TestServe_CloseIsAFINWhenNothingIsUnread: the server closes after
// answering; the client reads the whole answer and then EOF (not a reset),
// like a TCP close. The stream ends once the client ends its side.
func TestServe_CloseIsAFINWhenNothingIsUnread(t *testing.T) {
	ts, cl := serveWith(t, func(_ *Stream, c net.Conn) {
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		c.Write([]byte("bye"))
		c.Close()
	})
	c, err := cl.Dial(ctxT(t), target(ts, servedAuthority))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("read %q, %v; want \"bye\" and EOF", got, err)
	}
	if len(ts.streamResults()) != 0 {
		t.Fatal("stream ended before the client closed its side")
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	waitFor(t, "stream result", func() bool { return len(ts.streamResults()) == 1 })
	if r := ts.streamResults()[0]; r.Err != nil || r.BytesIn != 5 || r.BytesOut != 3 {
		t.Errorf("result = err %v in %d out %d, want clean 5/3", r.Err, r.BytesIn, r.BytesOut)
	}
}

// TestServe_CloseWithUnreadDataResets: closing with received bytes unread
// resets the stream, as TCP answers RST.
func TestServe_CloseWithUnreadDataResets(t *testing.T) {
	ts, cl := serveWith(t, func(_ *Stream, c net.Conn) {
		s := c.(*servedConn).stream
		waitFor(t, "data queued", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.head < len(s.recv)
		})
		c.Close()
	})
	c, err := cl.Dial(ctxT(t), target(ts, servedAuthority))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("unread"))
	c.SetReadDeadline(time.Now().Add(testTimout))
	if _, err := io.ReadAll(c); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read ended with %v; want a reset", err)
	}
	waitFor(t, "stream result", func() bool { return len(ts.streamResults()) == 1 })
}

// TestServe_PastReadDeadlineWakesABlockedRead: what http.Server does to end
// its background read.
func TestServe_PastReadDeadlineWakesABlockedRead(t *testing.T) {
	readErr := make(chan error, 1)
	ts, cl := serveWith(t, func(_ *Stream, c net.Conn) {
		go func() {
			_, err := c.Read(make([]byte, 1))
			readErr <- err
			c.Close()
		}()
		time.Sleep(20 * time.Millisecond) // let the read block (not needed for correctness)
		c.SetReadDeadline(time.Unix(1, 0))
	})
	c, err := cl.Dial(ctxT(t), target(ts, servedAuthority))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err := <-readErr:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read = %v, want deadline exceeded", err)
		}
	case <-time.After(testTimout):
		t.Fatal("a past read deadline did not wake the blocked Read")
	}
}
