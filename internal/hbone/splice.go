package hbone

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// Splice copies between a tunnel stream and another connection in both
// directions until both have ended, then closes both. A clean end of one
// direction (EOF) is passed on as a half-close (FIN or END_STREAM) and the
// other direction carries on; an error in either direction resets both.
// It returns the bytes copied from tunnel to conn and from conn to tunnel.
func Splice(tunnel, conn net.Conn) (toConn, toTunnel int64, err error) {
	return splice(tunnel, conn)
}

func splice(a, b net.Conn) (aToB, bToA int64, err error) {
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	if s, ok := a.(*stream); ok {
		// Tunnel → b is pushed by the connection's read loop: no goroutine
		// waits on an idle tunnel in that direction.
		s.drainTo(b, func(n int64, err error) {
			if err == nil {
				closeWrite(b)
			} else {
				abortConn(a, b)
			}
			done <- result{n, err}
		})
		n, err := copyConn(s, b) // b → tunnel
		if err == nil {
			closeWrite(s)
		} else {
			abortConn(a, b)
		}
		r := <-done
		a.Close()
		b.Close()
		return r.n, n, errors.Join(quiet(err), quiet(r.err))
	}
	go func() {
		n, err := copyConn(a, b) // b → a
		if err == nil {
			closeWrite(a)
		} else {
			abortConn(a, b)
		}
		done <- result{n, err}
	}()
	aToB, err = copyConn(b, a) // a → b
	if err == nil {
		closeWrite(b)
	} else {
		abortConn(a, b)
	}
	r := <-done
	bToA = r.n
	a.Close()
	b.Close()
	return aToB, bToA, errors.Join(quiet(err), quiet(r.err))
}

// copyConn copies src to dst, using the stream fast paths when one side is
// a tunnel stream.
func copyConn(dst, src net.Conn) (int64, error) {
	if s, ok := dst.(*stream); ok {
		return s.ReadFrom(src)
	}
	if s, ok := src.(*stream); ok {
		return s.WriteTo(dst)
	}
	_, rf := dst.(io.ReaderFrom)
	_, wt := src.(io.WriterTo)
	if rf || wt {
		return io.Copy(dst, src) // e.g. TCP to TCP: splice(2), no buffer
	}
	bp := getBuf(64 << 10)
	defer putBuf(bp)
	return io.CopyBuffer(dst, src, *bp)
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// abortConn makes both copies stop: TCP connections are reset (SO_LINGER 0)
// so the peer sees the failure, streams are reset.
func abortConn(conns ...net.Conn) {
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

// quiet drops the errors that only say the other side already closed.
func quiet(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}
