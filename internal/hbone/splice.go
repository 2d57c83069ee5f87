package hbone

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Splice copies between a tunnel stream and another connection in both
// directions until both have ended, then closes both. A clean end of one
// direction (EOF) is passed on as a half-close (FIN or END_STREAM) and the
// other direction carries on; an error in either direction resets both.
// It returns the bytes copied from tunnel to conn and from conn to tunnel.
func Splice(tunnel, conn net.Conn) (toConn, toTunnel int64, err error) {
	if _, ok := tunnel.(*stream); !ok {
		return spliceConns(tunnel, conn)
	}
	ended := make(chan struct{})
	SpliceAsync(tunnel, conn, func(tc, tt int64, e error) {
		toConn, toTunnel, err = tc, tt, e
		close(ended)
	})
	<-ended
	return toConn, toTunnel, err
}

// SpliceAsync is Splice without waiting: it returns at once and calls done,
// on a goroutine of its own, when both directions have ended and both
// connections are closed.
//
// When tunnel is a stream of this package and conn a socket, an idle splice
// holds no goroutine and no buffer: the tunnel → conn direction is pushed by
// the tunnel connection's read loop, and the conn → tunnel copy parks the
// socket in the idle poller after it has been quiet a while. Such a conn
// must then not be closed by anyone else while the splice runs (a parked
// socket would only notice at the next sweep): end the splice early by
// closing the tunnel, or Stream.Abort on the server side.
func SpliceAsync(tunnel, conn net.Conn, done func(toConn, toTunnel int64, err error)) {
	s, ok := tunnel.(*stream)
	if !ok {
		go func() { done(spliceConns(tunnel, conn)) }()
		return
	}
	// One allocation holds the state of both directions (and of the idle
	// poller's entry): it lives as long as the connection.
	sp := &splicer{s: s, conn: conn, done: done, running: 2}
	rc := syscallConn(conn)
	sp.pr.init(rc)
	sp.drain = drainer{w: conn, done: sp.pushed}
	var sink *sinkWriter
	if rc != nil {
		sp.sink.init(rc)
		sp.drain.w, sink = &sp.sink, &sp.sink
	}
	sp.canPark = rc != nil && idle() != nil
	if sp.canPark {
		sp.parked.init(rc, sp.resume)
	}
	s.drainTo(&sp.drain, sink)
	go sp.pump()
}

// splicer runs the two directions between a stream and a connection.
type splicer struct {
	s      *stream
	conn   net.Conn
	pr     pooledReader // conn → tunnel
	sink   sinkWriter   // tunnel → conn: the read loop's and the drainer's writes
	drain  drainer      // and their bookkeeping
	done   func(toConn, toTunnel int64, err error)
	parked parked // the idle poller's entry, while parked

	toTunnel int64 // written by the pump goroutines, one at a time

	mu       sync.Mutex // guards the fields below, except canPark
	running  int32      // directions not yet ended
	aborted  bool
	isParked bool
	canPark  bool // set before the pump starts, then read-only
	toConn   int64
	pumpErr  error
	pushErr  error
}

// pump copies conn → tunnel until conn ends or fails, or until conn has
// been quiet for parkAfter: then the socket is parked and the goroutine
// exits, and a new one carries on once the socket is readable.
func (sp *splicer) pump() {
	var last time.Time // when conn was last read from
	if sp.canPark {
		last = time.Now()
		sp.conn.SetReadDeadline(last.Add(time.Duration(parkAfter.Load())))
	}
	for {
		bp, n, err := sp.pr.read(sp.conn)
		if n > 0 {
			if sp.canPark {
				last = time.Now()
			}
			serr := sp.s.sendFrames((*bp)[:frameHeaderLen+n], false)
			sp.toTunnel += int64(n)
			putBuf(bp)
			if serr != nil {
				sp.endPump(serr)
				return
			}
			continue
		}
		if bp != nil {
			putBuf(bp)
		}
		if sp.canPark && errors.Is(err, os.ErrDeadlineExceeded) {
			// The deadline was set parkAfter after some read; wait out
			// the rest of the quiet period since the latest one.
			if quietUntil := last.Add(time.Duration(parkAfter.Load())); time.Now().Before(quietUntil) {
				sp.conn.SetReadDeadline(quietUntil)
				continue
			}
			sp.conn.SetReadDeadline(time.Time{})
			if sp.park() {
				return
			}
			// Not parked: wait here, as before.
			last = time.Now()
			sp.conn.SetReadDeadline(last.Add(time.Duration(parkAfter.Load())))
			continue
		}
		if err == io.EOF {
			err = nil
		}
		sp.endPump(err)
		return
	}
}

// park hands the quiet socket to the idle poller; false means it could
// not, and the caller keeps waiting itself.
func (sp *splicer) park() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.aborted {
		return false // the next read fails on the closed connection
	}
	if idle().park(&sp.parked) != nil {
		return false
	}
	sp.isParked = true
	return true
}

func (sp *splicer) resume() {
	sp.mu.Lock()
	sp.isParked = false
	sp.mu.Unlock()
	sp.pump()
}

// endPump ends the conn → tunnel direction: a clean end half-closes the
// tunnel, a failure resets both sides.
func (sp *splicer) endPump(err error) {
	if err == nil {
		closeWrite(sp.s)
	} else {
		sp.abort()
	}
	sp.finish(func() { sp.pumpErr = err }, false)
}

// pushed is called by the stream when the tunnel → conn direction ended,
// possibly on the tunnel connection's read loop.
func (sp *splicer) pushed(n int64, err error) {
	if err == nil {
		closeWrite(sp.conn)
	} else {
		sp.abort()
	}
	sp.finish(func() { sp.toConn, sp.pushErr = n, err }, true)
}

// abort resets both sides; a parked pump is taken out and ended here.
func (sp *splicer) abort() {
	abortConn(sp.s, sp.conn)
	sp.mu.Lock()
	sp.aborted = true
	wasParked := sp.isParked
	sp.isParked = false
	sp.mu.Unlock()
	if wasParked && idle().cancel(&sp.parked) {
		sp.finish(func() { sp.pumpErr = net.ErrClosed }, true)
	}
}

// finish records one direction's end; after the second it closes both
// connections and reports. Called on the read loop (async), the report
// runs on a goroutine of its own.
func (sp *splicer) finish(record func(), async bool) {
	sp.mu.Lock()
	record()
	sp.running--
	last := sp.running == 0
	sp.mu.Unlock()
	if !last {
		return
	}
	sp.s.Close()
	sp.conn.Close()
	report := func() {
		sp.done(sp.toConn, sp.toTunnel, errors.Join(quiet(sp.pumpErr), quiet(sp.pushErr)))
	}
	if async {
		go report()
	} else {
		report()
	}
}

// spliceConns is Splice for two plain connections: a goroutine each way.
func spliceConns(a, b net.Conn) (aToB, bToA int64, err error) {
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
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
// so the peer sees the failure, streams are reset. A connection with an
// Abort method (another transport's tunnel stream, such as HBONE/3's) is
// aborted with it rather than closed, so its peer sees a reset too.
func abortConn(conns ...net.Conn) {
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		if a, ok := c.(Aborter); ok {
			a.Abort()
			continue
		}
		c.Close()
	}
}

// Aborter is a connection that can end abruptly, its peer seeing a reset
// rather than a clean end (a tunnel stream of another transport). Splice
// aborts such a connection when either direction fails.
type Aborter interface {
	Abort()
}

// quiet drops the errors that only say the other side already closed.
func quiet(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}
