package connectudp

import (
	"io"
	"sync"
)

// Session carries UDP payloads as DATAGRAM capsules over a stream (the
// body of a CONNECT-UDP tunnel), one capsule per datagram, keeping
// datagram boundaries. Reads and writes may run concurrently with each
// other; concurrent writers never interleave capsules.
type Session struct {
	rw io.ReadWriteCloser

	rmu sync.Mutex // guards cr
	cr  *CapsuleReader

	wmu  sync.Mutex // guards wbuf and writes to rw
	wbuf []byte
}

// NewStreamSession returns a Session over rw. Closing the Session closes
// rw.
func NewStreamSession(rw io.ReadWriteCloser) *Session {
	return &Session{rw: rw, cr: NewCapsuleReader(rw, maxDatagramCapsule)}
}

// ReadDatagram reads the next UDP payload into p and returns its length.
// A payload longer than p is dropped whole with ErrShortBuffer (never
// truncated), and the Session stays usable. The stream's clean end is
// io.EOF; other errors end the Session.
func (s *Session) ReadDatagram(p []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	udp, err := s.cr.NextDatagram()
	if err != nil {
		return 0, err
	}
	if len(udp) > len(p) {
		return 0, ErrShortBuffer
	}
	return copy(p, udp), nil
}

// WriteDatagram sends p as one DATAGRAM capsule, in a single Write to the
// stream. An empty p is a valid (empty) UDP datagram.
func (s *Session) WriteDatagram(p []byte) error {
	if len(p) > MaxUDPPayload {
		return ErrDatagramTooLarge
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wbuf = AppendDatagramCapsule(s.wbuf[:0], p)
	_, err := s.rw.Write(s.wbuf)
	return err
}

// Close closes the underlying stream; blocked reads and writes return.
func (s *Session) Close() error {
	return s.rw.Close()
}

// Stream returns the stream the Session runs on, for deadlines and
// addresses when it is a net.Conn.
func (s *Session) Stream() io.ReadWriteCloser { return s.rw }
