package hbone3

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3Stream is what a tunnel needs of an HTTP/3 request stream once the
// CONNECT has been answered: *http3.Stream on the server (taken over with
// http3.HTTPStreamer) and *http3.RequestStream on the client. Reads and
// writes carry DATA frame payloads; Close ends the send side with a FIN.
type h3Stream interface {
	io.ReadWriteCloser
	CancelRead(quic.StreamErrorCode)
	CancelWrite(quic.StreamErrorCode)
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

var (
	_ h3Stream = (*http3.Stream)(nil)
	_ h3Stream = (*http3.RequestStream)(nil)
)

// codeCancel is the error code of a stream reset or aborted read
// (H3_REQUEST_CANCELLED, RFC 9114 §8.1).
const codeCancel = quic.StreamErrorCode(http3.ErrCodeRequestCanceled)

// tunnelConn is an open tunnel as a net.Conn.
//
// CloseWrite ends the send direction with a FIN on the QUIC stream, a TCP
// half-close. Close behaves like closing a TCP socket: it sends a FIN if
// none was sent, and if the peer's data has not been read to its end it
// stops it with STOP_SENDING (the peer's writes fail, as after a TCP RST).
// Abort resets both directions (RESET_STREAM and STOP_SENDING); Splice uses
// it when a copy fails, so a truncated transfer never looks complete.
type tunnelConn struct {
	str           h3Stream
	local, remote net.Addr

	closed    atomic.Bool
	readEOF   atomic.Bool
	mu        sync.Mutex // guards wroteFIN
	wroteFIN  bool
	closeOnce sync.Once
	onClose   func() // called once after Close or Abort (pool bookkeeping)
}

func newTunnelConn(str h3Stream, local, remote net.Addr, onClose func()) *tunnelConn {
	return &tunnelConn{str: str, local: local, remote: remote, onClose: onClose}
}

// Read implements net.Conn. io.EOF is the peer's FIN.
func (c *tunnelConn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := c.str.Read(p)
	if err == io.EOF {
		c.readEOF.Store(true)
	} else if err != nil && c.closed.Load() {
		err = net.ErrClosed
	}
	return n, err
}

// Write implements net.Conn.
func (c *tunnelConn) Write(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := c.str.Write(p)
	if err != nil && c.closed.Load() {
		err = net.ErrClosed
	}
	return n, err
}

// ReadFrom copies r into the stream in large writes (fewer DATA frames and
// stream wake-ups than io.Copy's 32 KiB).
func (c *tunnelConn) ReadFrom(r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(struct{ io.Writer }{c}, r, *bp)
}

// WriteTo copies the stream into w in large reads.
func (c *tunnelConn) WriteTo(w io.Writer) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(w, struct{ io.Reader }{c}, *bp)
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// CloseWrite half-closes the tunnel: a FIN on the QUIC stream.
func (c *tunnelConn) CloseWrite() error {
	if c.closed.Load() {
		return net.ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.wroteFIN {
		return nil
	}
	c.wroteFIN = true
	return c.str.Close()
}

// Close implements net.Conn (see the type's comment).
func (c *tunnelConn) Close() error {
	c.end(false)
	return nil
}

// Abort resets the stream both ways; the peer sees an error, not an end.
func (c *tunnelConn) Abort() { c.end(true) }

func (c *tunnelConn) end(abort bool) {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.mu.Lock()
		fin := c.wroteFIN
		c.wroteFIN = true
		c.mu.Unlock()
		switch {
		case abort:
			c.str.CancelWrite(codeCancel) // a no-op once the FIN was acknowledged
		case !fin:
			c.str.Close()
		}
		if abort || !c.readEOF.Load() {
			c.str.CancelRead(codeCancel) // a no-op once EOF was read
		}
		if c.onClose != nil {
			c.onClose()
		}
	})
}

func (c *tunnelConn) LocalAddr() net.Addr                { return c.local }
func (c *tunnelConn) RemoteAddr() net.Addr               { return c.remote }
func (c *tunnelConn) SetDeadline(t time.Time) error      { return c.str.SetDeadline(t) }
func (c *tunnelConn) SetReadDeadline(t time.Time) error  { return c.str.SetReadDeadline(t) }
func (c *tunnelConn) SetWriteDeadline(t time.Time) error { return c.str.SetWriteDeadline(t) }
