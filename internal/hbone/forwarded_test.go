package hbone

import (
	"net/netip"
	"testing"
)

func TestParseForwardedFor(t *testing.T) {
	type addrPort struct {
		addr string
		port uint16
	}
	for in, want := range map[string]addrPort{
		// As ztunnel writes it for a TCP connection (Istio's form)...
		"for=10.0.0.1":    {"10.0.0.1", 0},
		"for=10.244.1.2":  {"10.244.1.2", 0},
		`for="[fd00::1]"`: {"fd00::1", 0},
		// ...and for a UDP flow, with the app's port.
		`for="10.244.1.2:5353"`:       {"10.244.1.2", 5353},
		`for="[fd00:10:244::2]:5353"`: {"fd00:10:244::2", 5353},
		`for="[fd00::1]:4000"`:        {"fd00::1", 4000},
		// Other writers.
		"for=10.0.0.1:3000;proto=http":  {"10.0.0.1", 3000},
		"proto=http;for=10.0.0.2":       {"10.0.0.2", 0},
		`proto=udp; For="10.0.0.1:53"`:  {"10.0.0.1", 53},
		`for="[::ffff:10.0.0.4]:7"`:     {"10.0.0.4", 7},
		"for=unknown":                   {"invalid IP", 0},
		"":                              {"invalid IP", 0},
		`by="10.0.0.9:1";for=garbage:1`: {"invalid IP", 0},
		`for=_hidden, for="10.0.0.3"`:   {"invalid IP", 0}, // the first for= counts
	} {
		if a, port := ParseForwardedFor(in); a.String() != want.addr || port != want.port {
			t.Errorf("ParseForwardedFor(%q) = %s, %d; want %s, %d", in, a, port, want.addr, want.port)
		}
	}
}

func TestForwardedFor_RoundTrips(t *testing.T) {
	for _, tc := range []struct {
		ap       netip.AddrPort
		withPort bool
		want     string
	}{
		{netip.MustParseAddrPort("10.244.1.2:5353"), false, "for=10.244.1.2"},
		{netip.MustParseAddrPort("10.244.1.2:5353"), true, `for="10.244.1.2:5353"`},
		{netip.MustParseAddrPort("[::ffff:10.244.1.2]:5353"), true, `for="10.244.1.2:5353"`},
		{netip.MustParseAddrPort("[fd00::2]:5353"), false, `for="[fd00::2]"`},
		{netip.MustParseAddrPort("[fd00::2]:5353"), true, `for="[fd00::2]:5353"`},
		{netip.AddrPort{}, true, "for=unknown"},
	} {
		got := ForwardedFor(tc.ap, tc.withPort)
		if got != tc.want {
			t.Errorf("ForwardedFor(%s, %t) = %s, want %s", tc.ap, tc.withPort, got, tc.want)
			continue
		}
		if !tc.ap.IsValid() {
			continue
		}
		a, port := ParseForwardedFor(got)
		if wantPort := map[bool]uint16{true: tc.ap.Port()}[tc.withPort]; a != tc.ap.Addr().Unmap() || port != wantPort {
			t.Errorf("ParseForwardedFor(%s) = %s, %d; want %s, %d", got, a, port, tc.ap.Addr().Unmap(), wantPort)
		}
	}
}
