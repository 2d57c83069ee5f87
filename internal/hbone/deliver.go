package hbone

// Delivery of received data to a socket: pulled by WriteTo, or pushed by
// the read loop (drainTo) with a drainer goroutine only under back-pressure.

import (
	"io"
	"os"
	"syscall"
)

// WriteTo implements io.WriterTo: received payloads go straight to w. When
// w is a socket the read loop may also write to it directly (see pushData);
// sinkBusy keeps the two writers in order.
func (s *stream) WriteTo(w io.Writer) (int64, error) {
	sw := newSinkWriter(w)
	if sw != nil {
		s.mu.Lock()
		s.sink = sw
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			s.sink = nil
			s.mu.Unlock()
		}()
	}
	dst := w
	if sw != nil {
		dst = sw // its writes and the read loop's take turns (sinkBusy)
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
		n, err := s.writeChunk(dst, c)
		s.mu.Lock()
		s.sinkBusy = false
		s.cond.Broadcast()
		s.mu.Unlock()
		total += int64(n)
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
			s.sinkBusy = true
			return s.shiftLocked(), nil
		case s.err != nil:
			return chunk{}, s.err
		case s.recvEOF:
			return chunk{}, io.EOF
		case s.rdeadline.isExpired():
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

// sinkWriter writes to a socket with raw system calls: single
// non-blocking attempts for the read loop (tryWrite), and whole writes that
// wait for the socket (Write) for a drainer. Its users never write at the
// same time (the stream's sinkBusy), so they share one call state.
type sinkWriter struct {
	rc      syscall.RawConn
	writeFn func(fd uintptr) bool

	// Argument and results of the current attempt.
	data  []byte
	n     int
	errno syscall.Errno
	wait  bool // on EAGAIN, wait until writable (Write) rather than return
}

// tryWrite writes as much of p as the socket takes without blocking.
func (w *sinkWriter) tryWrite(p []byte) (int, error) {
	w.data, w.n, w.errno, w.wait = p, 0, 0, false
	err := w.rc.Write(w.writeFn)
	w.data = nil
	if err != nil {
		return 0, err
	}
	if w.errno != 0 {
		return 0, w.errno
	}
	return w.n, nil
}

// Write writes all of p like net.Conn.Write, honouring the deadlines.
func (w *sinkWriter) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		w.data, w.n, w.errno, w.wait = p[written:], 0, 0, true
		err := w.rc.Write(w.writeFn)
		w.data = nil
		if err != nil {
			return written, err
		}
		if w.errno != 0 {
			return written, os.NewSyscallError("write", w.errno)
		}
		written += w.n
	}
	return written, nil
}

func (w *sinkWriter) writeFD(fd uintptr) bool {
	n, errno := rawWrite(fd, w.data)
	if errno == syscall.EAGAIN {
		return !w.wait // false: wait until writable, then again
	}
	if errno != 0 {
		w.errno = errno
		return true
	}
	w.n = max(n, 0)
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

// drainTo delivers everything received on s to d.w and calls d.done once,
// with the bytes delivered, when the stream's receive side ended (err nil)
// or failed; d.done may run on the connection's read loop: it must not
// block. sink, if not nil, is d.w's socket for the read loop's direct
// writes.
func (s *stream) drainTo(d *drainer, sink *sinkWriter) {
	s.mu.Lock()
	s.sink, s.drain = sink, d
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
			c := s.shiftLocked()
			s.mu.Unlock()
			n, err := s.writeChunk(d.w, c)
			d.total += int64(n)
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

// writeChunk writes a taken chunk to w, recycles its buffer and returns the
// flow-control credit for it.
func (s *stream) writeChunk(w io.Writer, c chunk) (int, error) {
	n, err := w.Write(c.data)
	putBuf(c.bp)
	s.c.returnCredit(s, len(c.data))
	return n, err
}

// newSinkWriter returns nil when w is not a socket.
func newSinkWriter(w io.Writer) *sinkWriter {
	rc := syscallConn(w)
	if rc == nil {
		return nil
	}
	sw := &sinkWriter{}
	sw.init(rc)
	return sw
}

func (w *sinkWriter) init(rc syscall.RawConn) {
	w.rc = rc
	w.writeFn = w.writeFD
}
