package hbone

import (
	"net/netip"
	"strings"
)

// The Forwarded header (RFC 7239) a ztunnel puts on its CONNECT names the
// connection's client: for=<ip> as Istio's ztunnel writes it (an IPv6
// address quoted in brackets) or, for a UDP flow, for="<ip>:<port>", the
// client app's own socket.

// ForwardedFor is the Forwarded header value naming ap's address, with its
// port when withPort holds; "for=unknown" for an invalid ap.
func ForwardedFor(ap netip.AddrPort, withPort bool) string {
	a := ap.Addr().Unmap()
	switch {
	case !a.IsValid():
		return "for=unknown"
	case withPort:
		return `for="` + netip.AddrPortFrom(a, ap.Port()).String() + `"`
	case a.Is6():
		return `for="[` + a.String() + `]"`
	}
	return "for=" + a.String()
}

// ParseForwardedFor reads the first for= of a Forwarded header: the
// client's address, unmapped, and its port when the value names one (0
// otherwise). An obfuscated, unknown or malformed value, or none, is the
// zero Addr.
func ParseForwardedFor(h string) (netip.Addr, uint16) {
	for _, pair := range strings.FieldsFunc(h, func(r rune) bool { return r == ';' || r == ',' }) {
		k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		v = strings.Trim(v, `"`)
		if ap, err := netip.ParseAddrPort(v); err == nil {
			return ap.Addr().Unmap(), ap.Port()
		}
		if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(v, "["), "]")); err == nil {
			return a.Unmap(), 0
		}
		return netip.Addr{}, 0
	}
	return netip.Addr{}, 0
}
