package hbone

import (
	"crypto/tls"
	"testing"
	"time"
	"unsafe"
)

// What an idle tunnelled connection keeps, per side, is its stream and its
// splicer; 10,000 of them must fit a ztunnel in 64 MiB (docs/benchmarks.md,
// the idle benchmark). The budgets are allocation size classes: growing
// past one costs the whole next class on every connection.
func TestIdleState_FitsItsSizeClass(t *testing.T) {
	for _, c := range []struct {
		name         string
		size, budget uintptr
	}{
		{"stream", unsafe.Sizeof(stream{}), 224},
		{"splicer", unsafe.Sizeof(splicer{}), 288},
	} {
		if c.size > c.budget {
			t.Errorf("%s is %d bytes, over its %d-byte budget: move what only some connections need behind a pointer", c.name, c.size, c.budget)
		}
	}
}

// A tunnel connection over TLS reads frames from the TLS connection itself
// (which holds the current record), not through a buffer of ours that an
// idle connection would keep; and once Dial has the reply, the stream keeps
// nothing of the wait for it.
func TestClient_IdleTunnelKeepsNoReadBufferNorReply(t *testing.T) {
	up := startUpstream(t, echo)
	ts, cl := meshPair(t, ServerConfig{})
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := c.(*stream)
	if _, ok := s.c.br.(*tls.Conn); !ok {
		t.Errorf("frames are read through %T, want the *tls.Conn itself", s.c.br)
	}
	s.c.mu.Lock()
	resp := s.resp
	s.c.mu.Unlock()
	if resp != nil {
		t.Error("the stream still holds the reply it waited for")
	}
}

// A socket is parked once it has been quiet for parkAfter since its last
// read, not at the end of the first whole quiet period of a fixed clock
// (which, after a connection's one early request, took nearly twice as
// long and kept its goroutine and stack meanwhile).
func TestPark_AfterQuietPeriodSinceLastRead(t *testing.T) {
	const after = time.Second
	old := parkAfter.Swap(int64(after))
	t.Cleanup(func() { parkAfter.Store(old) })
	base := ParkedConnections()
	sp := newSplicedPair(t)
	time.Sleep(after / 4) // the splice is now into its first period
	sp.roundTrip(t, "once")
	last := time.Now()
	time.Sleep(after * 8 / 10)
	if n := ParkedConnections() - base; n > 0 {
		t.Fatalf("%d sockets parked %v after their last read, before %v of quiet", n, time.Since(last), after)
	}
	waitFor(t, "both ends parked", func() bool { return ParkedConnections() >= base+2 })
	// A fixed clock would park ≥ 1.75 s after the round trip.
	if d := time.Since(last); d > after*150/100 {
		t.Errorf("parked %v after the last read, want about %v", d, after)
	}
}
