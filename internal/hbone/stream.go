package hbone

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// sendChunk is how much a stream reads from its source before framing it:
// a 256 KiB pooled buffer less the frame header.
const sendChunk = 256<<10 - frameHeaderLen

// errRefused means the peer refused the stream before processing it; the
// request may be retried on another connection.
var errRefused = errors.New("hbone: stream refused by peer")

// chunk is a received DATA payload still to be consumed.
type chunk struct {
	bp   *[]byte
	data []byte
}

// stream is one CONNECT tunnel. It is a net.Conn whose writes become DATA
// frames and whose reads drain received DATA frames; CloseWrite sends
// END_STREAM. It also implements io.ReaderFrom and io.WriterTo so io.Copy
// moves bytes between sockets and pooled buffers without intermediate copies.
type stream struct {
	c  *conn
	id uint32

	// c.mu guards these send-side fields.
	sendWindow  int64
	sendErr     error
	wdeadline   deadline
	respHeaders []hpack.HeaderField // client: the response, set before respReady closes
	status      int

	respReady chan struct{} // client: closed when response headers arrive (or on failure)
	respOnce  sync.Once

	mu          sync.Mutex // guards the fields below
	cond        sync.Cond  // signalled when recv, recvEOF or err change
	recv        []chunk
	head        int // recv[head:] are unconsumed
	recvWindow  int64
	recvUnacked int64
	recvEOF     bool
	sentEnd     bool
	closed      bool
	err         error
	rdeadline   deadline
	sink        *sinkWriter // WriteTo's socket, for direct delivery by the read loop
	sinkBusy    bool        // a writer (WriteTo, the drainer or the read loop) is writing to the sink
	direct      int64       // bytes the read loop delivered to the sink
	drain       *drainer    // set by drainTo: received data is pushed, not pulled

	bytesIn, bytesOut atomic.Int64
	answered          atomic.Bool // server: the response headers were sent
}

// pushData delivers a received payload. When WriteTo is draining the stream
// into a socket and nothing is queued, the read loop writes the payload to
// that socket itself without blocking (no goroutine hand-off, the bytes still
// in cache); whatever the socket does not take at once is queued. It reports
// whether the buffer was queued (else the caller recycles it), how many
// bytes were delivered directly, and a stream error for flow-control or
// state violations.
func (s *stream) pushData(bp *[]byte, data []byte, frameLen int, end bool) (queued bool, delivered int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recvEOF {
		return false, 0, http2.StreamError{StreamID: s.id, Code: http2.ErrCodeStreamClosed}
	}
	s.recvWindow -= int64(frameLen)
	if s.recvWindow < 0 {
		return false, 0, http2.StreamError{StreamID: s.id, Code: http2.ErrCodeFlowControl}
	}
	if len(data) > 0 && s.err == nil && !s.closed {
		if s.sink != nil && !s.sinkBusy && s.head == len(s.recv) {
			s.sinkBusy = true
			sink := s.sink
			s.mu.Unlock()
			delivered, _ = sink.tryWrite(data) // an error shows again in WriteTo's own write
			s.mu.Lock()
			s.sinkBusy = false
			data = data[delivered:]
			s.direct += int64(delivered)
			s.bytesIn.Add(int64(delivered))
		}
		if len(data) > 0 {
			s.recv = append(s.recv, chunk{bp: bp, data: data})
			queued = true
		}
	}
	if end {
		s.recvEOF = true
	}
	s.kickDrainLocked()
	s.cond.Broadcast()
	return queued, delivered, nil
}

// addCredit records n consumed bytes and returns the stream WINDOW_UPDATE
// increment to send now, if any.
func (s *stream) addCredit(n int) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recvEOF {
		return 0
	}
	s.recvUnacked += int64(n)
	if s.recvUnacked < initialStreamWindow/creditDivisor {
		return 0
	}
	inc := s.recvUnacked
	s.recvUnacked = 0
	s.recvWindow += inc
	return inc
}

// next waits for received data and returns the first unconsumed chunk.
func (s *stream) nextLocked() (*chunk, error) {
	for s.head == len(s.recv) {
		if s.err != nil {
			return nil, s.err
		}
		if s.recvEOF {
			return nil, io.EOF
		}
		if s.rdeadline.expired {
			return nil, os.ErrDeadlineExceeded
		}
		s.cond.Wait()
	}
	return &s.recv[s.head], nil
}

// popLocked drops the first chunk, recycling its buffer.
func (s *stream) popLocked() {
	putBuf(s.recv[s.head].bp)
	s.recv[s.head] = chunk{}
	s.head++
	if s.head == len(s.recv) {
		s.recv, s.head = s.recv[:0], 0
	}
}

// Read implements net.Conn.
func (s *stream) Read(p []byte) (int, error) {
	s.mu.Lock()
	ch, err := s.nextLocked()
	if err != nil {
		s.mu.Unlock()
		return 0, err
	}
	n := copy(p, ch.data)
	ch.data = ch.data[n:]
	if len(ch.data) == 0 {
		s.popLocked()
	}
	s.mu.Unlock()
	s.bytesIn.Add(int64(n))
	s.c.returnCredit(s, n)
	return n, nil
}

// WriteTo implements io.WriterTo: received payloads go straight to w. When
// w is a socket the read loop may also write to it directly (see pushData);
// sinkBusy keeps the two writers in order.
func (s *stream) WriteTo(w io.Writer) (int64, error) {
	if sc, ok := w.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			sw := &sinkWriter{rc: rc}
			sw.writeFn = sw.writeFD
			s.mu.Lock()
			s.sink = sw
			s.mu.Unlock()
			defer func() {
				s.mu.Lock()
				s.sink = nil
				s.mu.Unlock()
			}()
		}
	}
	dst := w
	if rs := newRawSocket(w); rs != nil {
		dst = rs
	}
	var total int64
	for {
		s.mu.Lock()
		c, err := s.takeLocked()
		s.mu.Unlock()
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return total + s.directBytes(), err
		}
		n, err := dst.Write(c.data)
		putBuf(c.bp)
		s.mu.Lock()
		s.sinkBusy = false
		s.cond.Broadcast()
		s.mu.Unlock()
		total += int64(n)
		s.bytesIn.Add(int64(n))
		s.c.returnCredit(s, len(c.data))
		if err != nil {
			return total + s.directBytes(), err
		}
	}
}

// takeLocked waits for the next chunk and takes the sink for writing it.
func (s *stream) takeLocked() (chunk, error) {
	for {
		switch {
		case s.sinkBusy:
		case s.head < len(s.recv):
			c := s.recv[s.head]
			s.recv[s.head] = chunk{}
			s.head++
			if s.head == len(s.recv) {
				s.recv, s.head = s.recv[:0], 0
			}
			s.sinkBusy = true
			return c, nil
		case s.err != nil:
			return chunk{}, s.err
		case s.recvEOF:
			return chunk{}, io.EOF
		case s.rdeadline.expired:
			return chunk{}, os.ErrDeadlineExceeded
		}
		s.cond.Wait()
	}
}

// directBytes returns and resets the bytes the read loop delivered straight
// to the sink.
func (s *stream) directBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.direct
	s.direct = 0
	return n
}

// sinkWriter makes single non-blocking write attempts on a socket.
type sinkWriter struct {
	rc      syscall.RawConn
	writeFn func(fd uintptr) bool

	// Argument and results of the current attempt.
	data []byte
	n    int
	err  error
}

// tryWrite writes as much of p as the socket takes without blocking.
func (w *sinkWriter) tryWrite(p []byte) (int, error) {
	w.data, w.n, w.err = p, 0, nil
	if err := w.rc.Write(w.writeFn); err != nil {
		return 0, err
	}
	w.data = nil
	return w.n, w.err
}

func (w *sinkWriter) writeFD(fd uintptr) bool {
	n, errno := rawWrite(fd, w.data)
	w.n, w.err = max(n, 0), nil
	if errno != 0 && errno != syscall.EAGAIN {
		w.n, w.err = 0, errno
	}
	return true // never wait: the caller queues what is left
}

// Write implements net.Conn.
func (s *stream) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 || written == 0 {
		n := min(len(p), sendChunk)
		bp := getBuf(frameHeaderLen + n)
		frame := (*bp)[:frameHeaderLen+n]
		copy(frame[frameHeaderLen:], p[:n])
		err := s.sendFrames(frame, false)
		putBuf(bp)
		if err != nil {
			return written, err
		}
		written += n
		p = p[n:]
		if n == 0 {
			break
		}
	}
	return written, nil
}

// ReadFrom implements io.ReaderFrom: bytes are read from r into a pooled
// buffer behind a frame header and sent without another copy. For sockets
// the buffer is taken only once data is ready, so idle tunnels hold none.
func (s *stream) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	pr := newPooledReader(r)
	for {
		bp, n, err := pr.read()
		if n > 0 {
			serr := s.sendFrames((*bp)[:frameHeaderLen+n], false)
			total += int64(n)
			if serr != nil {
				putBuf(bp)
				return total, serr
			}
		}
		if bp != nil {
			putBuf(bp)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// sendFrames sends frame[9:] as DATA frames, splitting it to fit the flow
// control windows and the peer's frame size. Each later frame's header
// overwrites the 9 already-sent bytes before its payload.
func (s *stream) sendFrames(frame []byte, end bool) error {
	if len(frame) == frameHeaderLen {
		if !end {
			return nil
		}
		return s.sendEnd(frame)
	}
	off := frameHeaderLen
	for off < len(frame) {
		n, err := s.c.reserveSend(s, len(frame)-off)
		if err != nil {
			return err
		}
		last := off+n == len(frame)
		if err := s.c.writeDataFrame(s.id, frame[off-frameHeaderLen:off+n], end && last); err != nil {
			return err
		}
		s.bytesOut.Add(int64(n))
		off += n
	}
	if end {
		s.markSentEnd()
	}
	return nil
}

func (s *stream) sendEnd(frame []byte) error {
	s.c.mu.Lock()
	err := s.sendErrLocked()
	s.c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := s.c.writeDataFrame(s.id, frame[:frameHeaderLen], true); err != nil {
		return err
	}
	s.markSentEnd()
	return nil
}

func (s *stream) markSentEnd() {
	s.mu.Lock()
	s.sentEnd = true
	s.mu.Unlock()
	s.c.maybeRetire(s)
}

// sendErrLocked returns why s may not send. c.mu must be held.
func (s *stream) sendErrLocked() error {
	if s.sendErr != nil {
		return s.sendErr
	}
	if s.wdeadline.expired {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// CloseWrite half-closes the tunnel: END_STREAM, like a TCP FIN.
func (s *stream) CloseWrite() error {
	s.mu.Lock()
	done := s.sentEnd
	s.mu.Unlock()
	if done {
		return nil
	}
	var hdr [frameHeaderLen]byte
	return s.sendFrames(hdr[:], true)
}

// Close implements net.Conn. A stream not yet finished both ways is reset.
func (s *stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	finished := s.sentEnd && s.recvEOF
	unread := 0
	for s.head < len(s.recv) {
		unread += len(s.recv[s.head].data)
		s.popLocked()
	}
	if s.err == nil {
		s.err = net.ErrClosed
	}
	s.kickDrainLocked()
	s.cond.Broadcast()
	s.mu.Unlock()

	s.c.mu.Lock()
	if s.sendErr == nil {
		s.sendErr = net.ErrClosed
	}
	s.c.sendCond.Broadcast()
	connDead := s.c.err != nil
	s.c.mu.Unlock()

	if unread > 0 {
		s.c.returnCredit(nil, unread)
	}
	if !finished && !connDead {
		s.c.resetStream(s.id, http2.ErrCodeCancel)
		return nil
	}
	s.c.retire(s)
	return nil
}

// abort fails the stream with err (peer reset, connection failure).
func (s *stream) abort(err error) {
	s.c.mu.Lock()
	if s.sendErr == nil {
		s.sendErr = err
	}
	s.c.sendCond.Broadcast()
	s.c.mu.Unlock()

	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.kickDrainLocked()
	s.cond.Broadcast()
	s.mu.Unlock()
	if s.respReady != nil {
		s.respOnce.Do(func() { close(s.respReady) })
	}
}

// finished reports whether both directions have ended.
func (s *stream) finished() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return (s.sentEnd && s.recvEOF) || s.err != nil
}

// onResponse records the response headers (client side).
func (s *stream) onResponse(fields []hpack.HeaderField, end bool) {
	s.c.mu.Lock()
	first := s.respHeaders == nil
	if first {
		s.respHeaders = fields
		if s.respHeaders == nil {
			s.respHeaders = []hpack.HeaderField{}
		}
	}
	s.c.mu.Unlock()
	if !first {
		return // trailers: ignored
	}
	if end {
		s.mu.Lock()
		s.recvEOF = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}
	s.respOnce.Do(func() { close(s.respReady) })
}

// response returns the response headers once they have arrived.
func (s *stream) response() ([]hpack.HeaderField, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.respHeaders != nil {
		return s.respHeaders, nil
	}
	if s.sendErr != nil {
		return nil, s.sendErr
	}
	return nil, fmt.Errorf("hbone: no response")
}

// LocalAddr implements net.Conn: the tunnel connection's local address.
func (s *stream) LocalAddr() net.Addr { return s.c.nc.LocalAddr() }

// RemoteAddr implements net.Conn: the tunnel connection's remote address.
func (s *stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

// SetDeadline implements net.Conn.
func (s *stream) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn.
func (s *stream) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rdeadline.set(t, func(gen uint64) {
		s.mu.Lock()
		if s.rdeadline.gen == gen {
			s.rdeadline.expired = true
			s.cond.Broadcast()
		}
		s.mu.Unlock()
	})
	return nil
}

// SetWriteDeadline implements net.Conn. It bounds waits for flow-control
// credit; a write already handed to the socket completes.
func (s *stream) SetWriteDeadline(t time.Time) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.wdeadline.set(t, func(gen uint64) {
		s.c.mu.Lock()
		if s.wdeadline.gen == gen {
			s.wdeadline.expired = true
			s.c.sendCond.Broadcast()
		}
		s.c.mu.Unlock()
	})
	return nil
}

// deadline is a resettable timer; its owner's lock guards it.
type deadline struct {
	timer   *time.Timer
	gen     uint64
	expired bool
}

func (d *deadline) set(t time.Time, fire func(gen uint64)) {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.gen++
	d.expired = false
	if t.IsZero() {
		return
	}
	wait := time.Until(t)
	if wait <= 0 {
		d.expired = true
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(wait, func() { fire(gen) })
}

// pooledReader reads a source into pooled buffers behind frame-header room.
// For a socket it takes the buffer only when the socket is readable, so a
// reader blocked on an idle connection holds none. One pooledReader serves a
// whole copy, so a read allocates nothing.
type pooledReader struct {
	r      io.Reader
	rc     syscall.RawConn // nil unless r is a socket
	readFn func(fd uintptr) bool

	// Results of the last readFn call.
	bp  *[]byte
	n   int
	err error
}

func newPooledReader(r io.Reader) *pooledReader {
	pr := &pooledReader{r: r}
	if sc, ok := r.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			pr.rc = rc
			pr.readFn = pr.readFD
		}
	}
	return pr
}

// read returns a pooled buffer whose [frameHeaderLen:frameHeaderLen+n]
// holds the data read; the caller returns the buffer with putBuf.
func (pr *pooledReader) read() (*[]byte, int, error) {
	if pr.rc == nil {
		bp := getBuf(frameHeaderLen + sendChunk)
		n, err := pr.r.Read((*bp)[frameHeaderLen : frameHeaderLen+sendChunk])
		return bp, n, err
	}
	pr.bp, pr.n, pr.err = nil, 0, nil
	if err := pr.rc.Read(pr.readFn); err != nil {
		return pr.bp, 0, err
	}
	switch {
	case pr.err != nil:
		return pr.bp, 0, os.NewSyscallError("read", pr.err)
	case pr.n == 0:
		return pr.bp, 0, io.EOF
	}
	return pr.bp, pr.n, nil
}

// readFD is called by the runtime poller; false means "wait until readable".
func (pr *pooledReader) readFD(fd uintptr) bool {
	pr.bp = getBuf(frameHeaderLen + sendChunk)
	n, errno := rawRead(fd, (*pr.bp)[frameHeaderLen:frameHeaderLen+sendChunk])
	if errno == syscall.EAGAIN {
		putBuf(pr.bp)
		pr.bp = nil
		return false
	}
	pr.n = max(n, 0)
	if errno != 0 {
		pr.err = errno
	}
	return true
}

// drainer pushes received data to a socket without a goroutine waiting for
// it: the read loop writes directly when it can, and a short-lived drainer
// goroutine runs only when the socket pushed back, the stream ended, or it
// failed. An idle tunnel so costs no goroutine in this direction.
type drainer struct {
	w     io.Writer
	total int64 // bytes written by drainer goroutines
	done  func(n int64, err error)
}

// drainTo delivers everything received on s to w and calls done once, with
// the bytes delivered, when the stream's receive side ended (err nil) or
// failed. done may run on the connection's read loop: it must not block.
func (s *stream) drainTo(w io.Writer, done func(n int64, err error)) {
	d := &drainer{w: w, done: done}
	if rs := newRawSocket(w); rs != nil {
		d.w = rs
	}
	var sw *sinkWriter
	if sc, ok := w.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			sw = &sinkWriter{rc: rc}
			sw.writeFn = sw.writeFD
		}
	}
	s.mu.Lock()
	s.sink, s.drain = sw, d
	s.kickDrainLocked()
	s.mu.Unlock()
}

// kickDrainLocked starts a drainer goroutine when there is something for it
// to do and no writer holds the sink. s.mu must be held.
func (s *stream) kickDrainLocked() {
	if s.drain == nil || s.sinkBusy {
		return
	}
	if s.head == len(s.recv) && !s.recvEOF && s.err == nil {
		return
	}
	s.sinkBusy = true
	go s.drainLoop()
}

// drainLoop writes queued chunks until the queue is empty, then either
// reports the end of the stream or goes away until kicked again.
func (s *stream) drainLoop() {
	d := s.drain
	for {
		s.mu.Lock()
		if s.head < len(s.recv) {
			c := s.recv[s.head]
			s.recv[s.head] = chunk{}
			s.head++
			if s.head == len(s.recv) {
				s.recv, s.head = s.recv[:0], 0
			}
			s.mu.Unlock()
			n, err := d.w.Write(c.data)
			putBuf(c.bp)
			d.total += int64(n)
			s.bytesIn.Add(int64(n))
			s.c.returnCredit(s, len(c.data))
			if err != nil {
				s.finishDrain(err)
				return
			}
			continue
		}
		var err error
		switch {
		case s.err != nil:
			err = s.err
		case s.recvEOF:
		default:
			s.sinkBusy = false // idle: the read loop takes over again
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		s.finishDrain(err)
		return
	}
}

// finishDrain reports the end once; the sink stays busy so nothing more is
// written.
func (s *stream) finishDrain(err error) {
	s.mu.Lock()
	d := s.drain
	s.drain, s.sink = nil, nil
	n := d.total + s.direct
	s.mu.Unlock()
	d.done(n, err)
}
