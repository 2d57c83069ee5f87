package connectudp

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
)

func TestVarint_EncodesShortestForm(t *testing.T) {
	for _, tc := range []struct {
		v    uint64
		want []byte
	}{
		{0, []byte{0x00}},
		{37, []byte{0x25}},
		{63, []byte{0x3f}},
		{64, []byte{0x40, 0x40}},
		{15293, []byte{0x7b, 0xbd}}, // RFC 9000 §A.1 example
		{16383, []byte{0x7f, 0xff}},
		{16384, []byte{0x80, 0x00, 0x40, 0x00}},
		{494878333, []byte{0x9d, 0x7f, 0x3e, 0x7d}}, // RFC 9000 §A.1
		{1<<30 - 1, []byte{0xbf, 0xff, 0xff, 0xff}},
		{1 << 30, []byte{0xc0, 0, 0, 0, 0x40, 0, 0, 0}},
		{151288809941952652, []byte{0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c}}, // RFC 9000 §A.1
		{MaxVarint, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
	} {
		got := AppendVarint([]byte{0xaa}, tc.v)
		if !bytes.Equal(got[1:], tc.want) || got[0] != 0xaa {
			t.Errorf("AppendVarint(%d) = %x, want aa%x", tc.v, got, tc.want)
		}
		if n := VarintLen(tc.v); n != len(tc.want) {
			t.Errorf("VarintLen(%d) = %d, want %d", tc.v, n, len(tc.want))
		}
		v, n, err := ConsumeVarint(append(tc.want, 0x99))
		if err != nil || v != tc.v || n != len(tc.want) {
			t.Errorf("ConsumeVarint(%x) = %d, %d, %v; want %d, %d", tc.want, v, n, err, tc.v, len(tc.want))
		}
	}
}

func TestVarint_PanicsOverMax(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("AppendVarint(2^62) did not panic")
		}
	}()
	AppendVarint(nil, MaxVarint+1)
}

func TestConsumeVarint_AcceptsNonMinimalRefusesTruncated(t *testing.T) {
	for _, tc := range []struct {
		in      []byte
		v       uint64
		n       int
		wantErr bool
	}{
		{in: []byte{0x40, 0x25}, v: 37, n: 2}, // RFC 9000 §A.1: 37 in two bytes
		{in: []byte{0x80, 0, 0, 0x25}, v: 37, n: 4},
		{in: []byte{0xc0, 0, 0, 0, 0, 0, 0, 0}, v: 0, n: 8},
		{in: nil, wantErr: true},
		{in: []byte{0x40}, wantErr: true},
		{in: []byte{0x80, 1, 2}, wantErr: true},
		{in: []byte{0xc0, 1, 2, 3, 4, 5, 6}, wantErr: true},
	} {
		v, n, err := ConsumeVarint(tc.in)
		if tc.wantErr {
			if !errors.Is(err, ErrTruncated) {
				t.Errorf("ConsumeVarint(%x) error = %v, want ErrTruncated", tc.in, err)
			}
			continue
		}
		if err != nil || v != tc.v || n != tc.n {
			t.Errorf("ConsumeVarint(%x) = %d, %d, %v; want %d, %d", tc.in, v, n, err, tc.v, tc.n)
		}
	}
}

func TestPath_TemplateWithEscapedIPv6(t *testing.T) {
	for _, tc := range []struct {
		target netip.AddrPort
		want   string
	}{
		{netip.MustParseAddrPort("10.0.0.1:53"), "/.well-known/masque/udp/10.0.0.1/53/"},
		{netip.MustParseAddrPort("[fd00::1]:443"), "/.well-known/masque/udp/fd00%3A%3A1/443/"},
		{netip.MustParseAddrPort("[fe80::1%eth0]:9"), "/.well-known/masque/udp/fe80%3A%3A1/9/"},
		{netip.MustParseAddrPort("[::ffff:1.2.3.4]:65535"), "/.well-known/masque/udp/%3A%3Affff%3A1.2.3.4/65535/"},
	} {
		if got := Path(tc.target); got != tc.want {
			t.Errorf("Path(%v) = %q, want %q", tc.target, got, tc.want)
		}
	}
}

func TestParsePath(t *testing.T) {
	for _, tc := range []struct {
		path string
		want string // "" means an error
	}{
		{"/.well-known/masque/udp/10.0.0.1/53/", "10.0.0.1:53"},
		{"/.well-known/masque/udp/fd00%3A%3A1/443/", "[fd00::1]:443"},
		{"/.well-known/masque/udp/fd00%3a%3a1/443/", "[fd00::1]:443"},
		{"/.well-known/masque/udp/fd00::1/443/", "[fd00::1]:443"},
		{"/.well-known/masque/udp/%3A%3Affff%3A1.2.3.4/1/", "[::ffff:1.2.3.4]:1"},
		{"/.well-known/masque/udp/192.0.2.1/65535/", "192.0.2.1:65535"},
		{"/.well-known/masque/udp/example.com/53/", ""},        // names are never resolved here
		{"/.well-known/masque/udp/10.0.0.1/0/", ""},            // port 0
		{"/.well-known/masque/udp/10.0.0.1/65536/", ""},        // port over 16 bits
		{"/.well-known/masque/udp/10.0.0.1/053/", ""},          // leading zero
		{"/.well-known/masque/udp/10.0.0.1/+53/", ""},          // sign
		{"/.well-known/masque/udp/10.0.0.1/53", ""},            // no trailing slash
		{"/.well-known/masque/udp/10.0.0.1/53/x/", ""},         // extra segment
		{"/.well-known/masque/udp/10.0.0.1/53//", ""},          // extra empty segment
		{"/.well-known/masque/udp/10.0.0.1/53/?q=1", ""},       // query
		{"/.well-known/masque/udp/10.0.0.1/", ""},              // no port
		{"/.well-known/masque/udp//53/", ""},                   // no host
		{"/.well-known/masque/udp/fe80%3A%3A1%25eth0/53/", ""}, // zone
		{"/.well-known/masque/udp/fe80::1%eth0/53/", ""},       // raw zone
		{"/.well-known/masque/udp/10.0.0.1%2F/53/", ""},        // other escape
		{"/.well-known/masque/udp/fd00%3/53/", ""},             // cut escape
		{"/.well-known/masque/tcp/10.0.0.1/53/", ""},
		{"/.well-known/masque/udp/10.0.0.1/53/ ", ""},
		{"/", ""},
		{"", ""},
	} {
		got, err := ParsePath(tc.path)
		if tc.want == "" {
			if err == nil || !errors.Is(err, ErrBadPath) {
				t.Errorf("ParsePath(%q) = %v, %v; want ErrBadPath", tc.path, got, err)
			}
			continue
		}
		if err != nil || got != netip.MustParseAddrPort(tc.want) {
			t.Errorf("ParsePath(%q) = %v, %v; want %s", tc.path, got, err, tc.want)
		}
	}
}

func TestParsePath_RoundTripsPath(t *testing.T) {
	for _, s := range []string{"10.0.0.1:53", "[fd00::1]:443", "[::]:1", "[2001:db8::8:800:200c:417a]:8080", "[::ffff:10.1.2.3]:7"} {
		ap := netip.MustParseAddrPort(s)
		got, err := ParsePath(Path(ap))
		if err != nil || got != ap {
			t.Errorf("ParsePath(Path(%v)) = %v, %v", ap, got, err)
		}
	}
}

func TestParsePath_ErrorSaysWhy(t *testing.T) {
	_, err := ParsePath("/.well-known/masque/udp/example.com/53/")
	if err == nil || !strings.Contains(err.Error(), "not a literal IP address") {
		t.Fatalf("error = %v, want it to say the host is not an IP literal", err)
	}
}

func capsules(cs ...any) []byte {
	var b []byte
	for i := 0; i < len(cs); i += 2 {
		b = AppendCapsule(b, cs[i].(uint64), cs[i+1].([]byte))
	}
	return b
}

type capsule struct {
	typ   uint64
	value string
}

func readAll(cr *CapsuleReader) ([]capsule, error) {
	var out []capsule
	for {
		typ, v, err := cr.Next()
		if err != nil {
			return out, err
		}
		out = append(out, capsule{typ, string(v)})
	}
}

func TestCapsuleReader(t *testing.T) {
	big := strings.Repeat("x", 100)
	for _, tc := range []struct {
		name    string
		in      []byte
		max     int
		want    []capsule
		wantErr error
	}{
		{"empty stream", nil, 100, nil, io.EOF},
		{"several capsules", capsules(uint64(0), []byte("ab"), uint64(0x1234), []byte{}, uint64(MaxVarint), []byte("z")), 100,
			[]capsule{{0, "ab"}, {0x1234, ""}, {MaxVarint, "z"}}, io.EOF},
		{"value exactly the limit", capsules(uint64(0), []byte(big)), 100, []capsule{{0, big}}, io.EOF},
		{"value over the limit", capsules(uint64(0), []byte("a"), uint64(0), []byte(big+"x")), 100, []capsule{{0, "a"}}, ErrCapsuleTooLarge},
		{"huge announced length", []byte{0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 100, nil, ErrCapsuleTooLarge},
		{"non-minimal header", []byte{0x40, 0x00, 0x80, 0, 0, 2, 'h', 'i'}, 100, []capsule{{0, "hi"}}, io.EOF},
		{"truncated type", []byte{0x40}, 100, nil, io.ErrUnexpectedEOF},
		{"truncated length", []byte{0x00, 0x80, 0}, 100, nil, io.ErrUnexpectedEOF},
		{"truncated value", []byte{0x00, 0x05, 'a', 'b'}, 100, nil, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []struct {
				name string
				r    io.Reader
			}{
				{"whole", bytes.NewReader(tc.in)},
				{"byte at a time", iotest.OneByteReader(bytes.NewReader(tc.in))},
				{"with data and EOF together", iotest.DataErrReader(bytes.NewReader(tc.in))},
			} {
				got, err := readAll(NewCapsuleReader(r.r, tc.max))
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("%s: error = %v, want %v", r.name, err, tc.wantErr)
				}
				if len(got) != len(tc.want) {
					t.Fatalf("%s: capsules = %v, want %v", r.name, got, tc.want)
				}
				for i := range got {
					if got[i] != tc.want[i] {
						t.Errorf("%s: capsule %d = %v, want %v", r.name, i, got[i], tc.want[i])
					}
				}
			}
		})
	}
}

func TestCapsuleReader_ErrorIsSticky(t *testing.T) {
	cr := NewCapsuleReader(bytes.NewReader([]byte{0x00, 0x05, 'a'}), 10)
	for range 2 {
		if _, _, err := cr.Next(); err != io.ErrUnexpectedEOF {
			t.Fatalf("error = %v, want io.ErrUnexpectedEOF", err)
		}
	}
}

func TestCapsuleReader_CompactsAcrossManySmallReads(t *testing.T) {
	// Many capsules straddling buffer ends: the reader moves partial
	// capsules to the front of its fixed buffer instead of growing it.
	var in []byte
	var want []capsule
	for i := range 2000 {
		v := bytes.Repeat([]byte{byte(i)}, i%37)
		in = AppendCapsule(in, uint64(i), v)
		want = append(want, capsule{uint64(i), string(v)})
	}
	cr := NewCapsuleReader(iotest.HalfReader(bytes.NewReader(in)), 40)
	got, err := readAll(cr)
	if err != io.EOF || len(got) != len(want) {
		t.Fatalf("read %d capsules, %v; want %d, EOF", len(got), err, len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("capsule %d = %v, want %v", i, got[i], want[i])
		}
	}
	if cap(cr.buf) != maxHeaderLen+40 {
		t.Fatalf("buffer grew to %d", cap(cr.buf))
	}
}

func TestDatagram(t *testing.T) {
	c := AppendDatagramCapsule(nil, []byte("udp!"))
	if want := []byte{0x00, 0x05, 0x00, 'u', 'd', 'p', '!'}; !bytes.Equal(c, want) {
		t.Fatalf("AppendDatagramCapsule = %x, want %x", c, want)
	}
	for _, tc := range []struct {
		name    string
		in      []byte
		udp     string
		ok      bool
		wantErr bool
	}{
		{"context 0", []byte{0x00, 'h', 'i'}, "hi", true, false},
		{"context 0, empty payload", []byte{0x00}, "", true, false},
		{"context 0, non-minimal", []byte{0x40, 0x00, 'h', 'i'}, "hi", true, false},
		{"context 2 is dropped", []byte{0x02, 'h', 'i'}, "", false, false},
		{"empty", nil, "", false, true},
		{"truncated context", []byte{0x80, 0}, "", false, true},
	} {
		udp, ok, err := ParseDatagram(tc.in)
		if (err != nil) != tc.wantErr || ok != tc.ok || string(udp) != tc.udp {
			t.Errorf("%s: ParseDatagram(%x) = %q, %v, %v", tc.name, tc.in, udp, ok, err)
		}
	}
}

func TestNextDatagram_SkipsOtherTypesAndContexts(t *testing.T) {
	in := capsules(
		uint64(0x2028d7ee), []byte("unknown capsule type"),
		uint64(0), []byte("\x00first"),
		uint64(0), []byte("\x04other context"),
		uint64(0xff), []byte{},
		uint64(0), []byte("\x00second"),
	)
	cr := NewCapsuleReader(bytes.NewReader(in), 100)
	for _, want := range []string{"first", "second"} {
		got, err := cr.NextDatagram()
		if err != nil || string(got) != want {
			t.Fatalf("NextDatagram = %q, %v; want %q", got, err, want)
		}
	}
	if _, err := cr.NextDatagram(); err != io.EOF {
		t.Fatalf("at end: %v, want EOF", err)
	}
}

func TestNextDatagram_EmptyDatagramCapsuleIsAnError(t *testing.T) {
	cr := NewCapsuleReader(bytes.NewReader(capsules(uint64(0), []byte{}, uint64(0), []byte("\x00x"))), 100)
	if _, err := cr.NextDatagram(); !errors.Is(err, ErrEmptyDatagram) {
		t.Fatalf("error = %v, want ErrEmptyDatagram", err)
	}
	if _, err := cr.NextDatagram(); !errors.Is(err, ErrEmptyDatagram) {
		t.Fatalf("second read: %v, want the error again", err)
	}
}
