package hbone

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
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
	c        *conn
	id       uint32
	answered atomic.Bool // server: the response headers were sent

	// A stream lives as long as its tunnelled connection, mostly idle, so
	// what only some streams need for a while (the client's wait for the
	// reply, deadlines) hangs off pointers that are nil otherwise.

	// c.mu guards these send-side fields.
	sendWindow int64
	sendErr    error
	wdeadline  *deadline // nil until SetWriteDeadline
	resp       *reply    // client: until Dial has the reply

	mu          sync.Mutex // guards the fields below
	cond        sync.Cond  // signalled when recv, recvEOF or err change
	recv        []chunk
	head        int // recv[head:] are unconsumed
	recvWindow  int64
	recvUnacked int64
	recvEOF     bool
	sentEnd     bool
	closed      bool
	sinkBusy    bool // a writer (WriteTo, the drainer or the read loop) is writing to the sink
	err         error
	rdeadline   *deadline   // nil until SetReadDeadline
	sink        *sinkWriter // WriteTo's socket, for direct delivery by the read loop
	direct      int64       // bytes the read loop delivered to the sink
	drain       *drainer    // set by drainTo: received data is pushed, not pulled
}

// reply is a client stream's wait for the response headers.
type reply struct {
	ready   chan struct{} // closed when the headers arrive (or on failure)
	once    sync.Once
	headers []hpack.HeaderField // set (under c.mu) before ready closes
}

// close wakes the waiter; safe to call more than once.
func (r *reply) close() { r.once.Do(func() { close(r.ready) }) }

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
		if s.rdeadline.isExpired() {
			return nil, os.ErrDeadlineExceeded
		}
		s.cond.Wait()
	}
	return &s.recv[s.head], nil
}

// shiftLocked removes and returns the first unconsumed chunk. s.mu must be
// held and a chunk must be queued.
func (s *stream) shiftLocked() chunk {
	c := s.recv[s.head]
	s.recv[s.head] = chunk{}
	s.head++
	if s.head == len(s.recv) {
		s.recv, s.head = s.recv[:0], 0
	}
	return c
}

// popLocked drops the first chunk, recycling its buffer.
func (s *stream) popLocked() { putBuf(s.shiftLocked().bp) }

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
	s.c.returnCredit(s, n)
	return n, nil
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
		bp, n, err := pr.read(r)
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
	if s.wdeadline.isExpired() {
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
	resp := s.resp
	s.c.sendCond.Broadcast()
	s.c.mu.Unlock()

	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.kickDrainLocked()
	s.cond.Broadcast()
	s.mu.Unlock()
	if resp != nil {
		resp.close()
	}
}

// finished reports whether both directions have ended.
func (s *stream) finished() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return (s.sentEnd && s.recvEOF) || s.err != nil
}

// onResponse records the response headers (client side). Later header
// blocks (trailers) are ignored.
func (s *stream) onResponse(fields []hpack.HeaderField, end bool) {
	s.c.mu.Lock()
	resp := s.resp
	first := resp != nil && resp.headers == nil
	if first {
		resp.headers = fields
		if resp.headers == nil {
			resp.headers = []hpack.HeaderField{}
		}
	}
	s.c.mu.Unlock()
	if !first {
		return
	}
	if end {
		s.mu.Lock()
		s.recvEOF = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}
	resp.close()
}

// response returns the response headers once they have arrived, and lets
// go of them: the stream is then a plain tunnel.
func (s *stream) response() ([]hpack.HeaderField, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.resp != nil && s.resp.headers != nil {
		h := s.resp.headers
		s.resp = nil
		return h, nil
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
	if s.rdeadline == nil {
		if t.IsZero() {
			return nil
		}
		s.rdeadline = &deadline{}
		d := s.rdeadline
		d.fire = func() {
			s.mu.Lock()
			if d.passed() {
				s.cond.Broadcast()
			}
			s.mu.Unlock()
		}
	}
	if s.rdeadline.set(t) { // a time already past wakes a blocked Read now
		s.cond.Broadcast()
	}
	return nil
}

// SetWriteDeadline implements net.Conn. It bounds waits for flow-control
// credit; a write already handed to the socket completes.
func (s *stream) SetWriteDeadline(t time.Time) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.wdeadline == nil {
		if t.IsZero() {
			return nil
		}
		s.wdeadline = &deadline{}
		d := s.wdeadline
		d.fire = func() {
			s.c.mu.Lock()
			if d.passed() {
				s.c.sendCond.Broadcast()
			}
			s.c.mu.Unlock()
		}
	}
	if s.wdeadline.set(t) {
		s.c.sendCond.Broadcast()
	}
	return nil
}

// deadline is a resettable deadline; its owner's lock guards it. Its timer
// is made once and re-armed, since servers set deadlines per request.
type deadline struct {
	timer   *time.Timer
	fire    func() // the timer's function: takes the owner's lock, calls passed
	at      time.Time
	expired bool
}

// isExpired reports whether d (nil: never set) has passed.
func (d *deadline) isExpired() bool { return d != nil && d.expired }

// set arms d for t (zero: none) and reports whether t has already passed.
func (d *deadline) set(t time.Time) bool {
	d.at, d.expired = t, false
	wait := time.Until(t)
	if t.IsZero() || wait <= 0 {
		if d.timer != nil {
			d.timer.Stop()
		}
		d.expired = !t.IsZero()
		return d.expired
	}
	if d.timer == nil {
		d.timer = time.AfterFunc(wait, d.fire)
	} else {
		d.timer.Reset(wait)
	}
	return false
}

// passed is the timer's check, under the owner's lock: a timer that fired
// for a deadline since moved or cleared finds it not passed.
func (d *deadline) passed() bool {
	if d.at.IsZero() || time.Now().Before(d.at) {
		return false
	}
	d.expired = true
	return true
}
