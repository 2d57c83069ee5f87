package hbone3

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestTunnel3_RoundTrip(t *testing.T) {
	up := startUpstream(t, echo)
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("hello through the mesh over QUIC")
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
	c.(closeWriter).CloseWrite()
	if n, err := io.Copy(io.Discard, c); n != 0 || err != nil {
		t.Fatalf("after half-close read %d bytes, err %v; want a clean EOF", n, err)
	}
	c.Close()
	waitFor(t, "stream result", func() bool { return len(ts.streamResults()) == 1 })
	r := ts.streamResults()[0]
	if r.Status != 200 || r.Peer != clientID || r.Authority != up.Addr() || r.Err != nil {
		t.Errorf("result = status %d peer %s authority %s err %v", r.Status, r.Peer, r.Authority, r.Err)
	}
	if r.BytesIn != int64(len(msg)) || r.BytesOut != int64(len(msg)) {
		t.Errorf("result bytes in/out = %d/%d, want %d each", r.BytesIn, r.BytesOut, len(msg))
	}
}

// TestTunnel3_GiBTransfer_SHA256Matches sends 1 GiB (64 MiB with -short)
// through the tunnel to an echo server: what the server received and what
// came back hash the same as what was sent.
func TestTunnel3_GiBTransfer_SHA256Matches(t *testing.T) {
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
		c.(closeWriter).CloseWrite()
	})
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute)) // under -race this takes about a minute

	sent := sha256.New()
	writeErr := make(chan error, 1)
	go func() {
		src := io.LimitReader(rand.NewChaCha8([32]byte{1}), size)
		_, err := io.Copy(io.MultiWriter(c, sent), src)
		if err == nil {
			err = c.(closeWriter).CloseWrite()
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
