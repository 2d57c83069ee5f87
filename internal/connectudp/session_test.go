package connectudp

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
)

func pipeSessions(t *testing.T) (*Session, *Session) {
	a, b := net.Pipe()
	sa, sb := NewStreamSession(a), NewStreamSession(b)
	t.Cleanup(func() { sa.Close(); sb.Close() })
	return sa, sb
}

func datagram(i int) []byte {
	size := 1 + (i*7919)%1400
	if i%100 == 99 {
		size = 0 // empty UDP datagrams exist too
	}
	p := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{byte(i), byte(i >> 8)})
	rng.Read(p)
	return p
}

// TestSession_RoundTripKeepsBoundaries: 1,000 datagrams of 0-1,400 bytes
// through net.Pipe arrive one per read, intact, in order.
func TestSession_RoundTripKeepsBoundaries(t *testing.T) {
	sa, sb := pipeSessions(t)
	const n = 1000
	errc := make(chan error, 1)
	go func() {
		for i := range n {
			if err := sa.WriteDatagram(datagram(i)); err != nil {
				errc <- err
				return
			}
		}
		errc <- sa.Close()
	}()
	buf := make([]byte, MaxUDPPayload)
	for i := range n {
		m, err := sb.ReadDatagram(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if want := datagram(i); !bytes.Equal(buf[:m], want) {
			t.Fatalf("datagram %d: got %d bytes, want %d", i, m, len(want))
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if _, err := sb.ReadDatagram(buf); err != io.EOF {
		t.Fatalf("after the writer closed: %v, want EOF", err)
	}
}

// TestSession_ConcurrentWritersNeverInterleave: capsules written by many
// goroutines at once each arrive whole.
func TestSession_ConcurrentWritersNeverInterleave(t *testing.T) {
	sa, sb := pipeSessions(t)
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(w)}, 300+w*100)
			for range each {
				if err := sa.WriteDatagram(p); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	buf := make([]byte, 2000)
	for range writers * each {
		m, err := sb.ReadDatagram(buf)
		if err != nil {
			t.Fatal(err)
		}
		w := int(buf[0])
		if m != 300+w*100 || !bytes.Equal(buf[:m], bytes.Repeat([]byte{byte(w)}, m)) {
			t.Fatalf("mixed datagram of %d bytes from writer %d", m, w)
		}
	}
	wg.Wait()
}

// TestSession_ShortBufferDropsTheDatagram: a datagram too big for the
// buffer is dropped whole; the next one reads normally.
func TestSession_ShortBufferDropsTheDatagram(t *testing.T) {
	sa, sb := pipeSessions(t)
	go func() {
		sa.WriteDatagram(bytes.Repeat([]byte("a"), 100))
		sa.WriteDatagram([]byte("next"))
	}()
	buf := make([]byte, 10)
	if n, err := sb.ReadDatagram(buf); !errors.Is(err, io.ErrShortBuffer) || n != 0 {
		t.Fatalf("ReadDatagram = %d, %v; want 0, short buffer", n, err)
	}
	n, err := sb.ReadDatagram(buf)
	if err != nil || string(buf[:n]) != "next" {
		t.Fatalf("ReadDatagram = %q, %v; want \"next\"", buf[:n], err)
	}
}

func TestSession_RefusesOversizedWrite(t *testing.T) {
	sa, _ := pipeSessions(t)
	if err := sa.WriteDatagram(make([]byte, MaxUDPPayload+1)); !errors.Is(err, ErrDatagramTooLarge) {
		t.Fatalf("error = %v, want ErrDatagramTooLarge", err)
	}
}

// TestSession_LargestDatagram: a MaxUDPPayload datagram fits the reader's
// bound.
func TestSession_LargestDatagram(t *testing.T) {
	sa, sb := pipeSessions(t)
	p := bytes.Repeat([]byte("m"), MaxUDPPayload)
	go sa.WriteDatagram(p)
	buf := make([]byte, MaxUDPPayload)
	n, err := sb.ReadDatagram(buf)
	if err != nil || n != len(p) {
		t.Fatalf("ReadDatagram = %d, %v", n, err)
	}
}

// countWriter records how many Write calls a session makes.
type countWriter struct {
	bytes.Buffer
	writes int
}

func (w *countWriter) Write(p []byte) (int, error) { w.writes++; return w.Buffer.Write(p) }
func (w *countWriter) Close() error                { return nil }

// TestSession_SteadyStateAllocatesNothing: after warm-up, neither writing
// nor reading a datagram allocates, and each datagram is one Write.
func TestSession_SteadyStateAllocatesNothing(t *testing.T) {
	w := &countWriter{}
	s := NewStreamSession(w)
	p := make([]byte, 1200)
	s.WriteDatagram(p)
	w.Reset()
	w.writes = 0
	if a := testing.AllocsPerRun(100, func() { w.Reset(); s.WriteDatagram(p) }); a != 0 {
		t.Errorf("WriteDatagram allocates %v times", a)
	}
	if w.writes != 101 {
		t.Errorf("%d Write calls for 101 datagrams", w.writes)
	}

	var stream bytes.Buffer
	for range 300 {
		stream.Write(AppendDatagramCapsule(nil, p))
	}
	r := NewStreamSession(struct {
		io.Reader
		io.WriteCloser
	}{&stream, w})
	buf := make([]byte, 1500)
	r.ReadDatagram(buf)
	if a := testing.AllocsPerRun(100, func() { r.ReadDatagram(buf) }); a != 0 {
		t.Errorf("ReadDatagram allocates %v times", a)
	}
}
