package connectudp

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzCapsuleReader: any byte stream yields capsules within the bound and
// then an error; the same stream read a byte at a time yields the same.
// Re-encoding the capsules decodes to the same capsules.
func FuzzCapsuleReader(f *testing.F) {
	f.Add(capsules(uint64(0), []byte("\x00hi"), uint64(77), []byte("x")))
	f.Add([]byte{0x40, 0x00, 0x80, 0, 0, 2, 'h', 'i'})
	f.Add([]byte{0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x00, 0x05, 'a'})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 512 {
			return // enough capsules over a 32-byte buffer; bigger inputs only slow minimization
		}
		const limit = 16
		whole, err1 := readAll(NewCapsuleReader(bytes.NewReader(in), limit))
		bytewise, err2 := readAll(NewCapsuleReader(iotest.OneByteReader(bytes.NewReader(in)), limit))
		if err1 == nil || !errors.Is(err1, err2) && err1.Error() != err2.Error() {
			t.Fatalf("errors differ: %v vs %v", err1, err2)
		}
		if len(whole) != len(bytewise) {
			t.Fatalf("%d capsules whole, %d bytewise", len(whole), len(bytewise))
		}
		var re []byte
		for i, c := range whole {
			if c != bytewise[i] || len(c.value) > limit {
				t.Fatalf("capsule %d: %v vs %v", i, c, bytewise[i])
			}
			re = AppendCapsule(re, c.typ, []byte(c.value))
		}
		again, err := readAll(NewCapsuleReader(bytes.NewReader(re), limit))
		if err != io.EOF || len(again) != len(whole) {
			t.Fatalf("re-encoded: %d capsules, %v", len(again), err)
		}
		cr := NewCapsuleReader(bytes.NewReader(in), limit)
		for {
			udp, err := cr.NextDatagram()
			if err != nil {
				break
			}
			if len(udp) > limit {
				t.Fatalf("datagram of %d bytes over the %d limit", len(udp), limit)
			}
		}
	})
}

// FuzzParsePath: whatever ParsePath accepts is a literal IP and a non-zero
// port, and Path of it parses back to the same.
func FuzzParsePath(f *testing.F) {
	f.Add("/.well-known/masque/udp/10.0.0.1/53/")
	f.Add("/.well-known/masque/udp/fd00%3A%3A1/443/")
	f.Add("/.well-known/masque/udp/fe80::1%eth0/53/")
	f.Add("/.well-known/masque/udp/example.com/053/x")
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := ParsePath(s)
		if err != nil {
			if !errors.Is(err, ErrBadPath) {
				t.Fatalf("error %v does not wrap ErrBadPath", err)
			}
			return
		}
		if !ap.IsValid() || ap.Port() == 0 || ap.Addr().Zone() != "" {
			t.Fatalf("accepted %q as %v", s, ap)
		}
		back, err := ParsePath(Path(ap))
		if err != nil || back != ap {
			t.Fatalf("Path(%v) = %q parses to %v, %v", ap, Path(ap), back, err)
		}
	})
}
