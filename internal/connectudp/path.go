package connectudp

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Protocol is the :protocol value of an extended CONNECT for UDP
// (RFC 9298 §3).
const Protocol = "connect-udp"

// pathPrefix is the RFC 9298 default URI template up to {target_host}.
const pathPrefix = "/.well-known/masque/udp/"

// ErrBadPath reports a :path that is not the default template naming a
// literal IP address and port.
var ErrBadPath = errors.New("connectudp: bad connect-udp path")

// Path returns the RFC 9298 default template path for target:
// "/.well-known/masque/udp/{host}/{port}/", the host a literal IP address
// with each ':' of an IPv6 address as "%3A". A zone is dropped: zones mean
// nothing off the host.
func Path(target netip.AddrPort) string {
	host := target.Addr().WithZone("").String()
	host = strings.ReplaceAll(host, ":", "%3A")
	return pathPrefix + host + "/" + strconv.Itoa(int(target.Port())) + "/"
}

// ParsePath parses a path made by Path. It accepts exactly
// "/.well-known/masque/udp/{host}/{port}/" where host is a literal IPv4 or
// IPv6 address (":" written as "%3A", "%3a" or a bare ':'; no zone, no
// other escape) and port is a decimal 1-65535 without leading zeros. Host
// names, queries and extra segments are refused. The address is returned
// as written (an IPv4-mapped IPv6 address stays so).
func ParsePath(s string) (netip.AddrPort, error) {
	rest, ok := strings.CutPrefix(s, pathPrefix)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%w: %q does not start with %s", ErrBadPath, s, pathPrefix)
	}
	host, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%w: %q has no port segment", ErrBadPath, s)
	}
	port, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%w: %q lacks the trailing slash", ErrBadPath, s)
	}
	if rest != "" {
		return netip.AddrPort{}, fmt.Errorf("%w: %q has more after {host}/{port}/", ErrBadPath, s)
	}
	addr, err := parseHost(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %q: %v", ErrBadPath, s, err)
	}
	p, err := parsePort(port)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %q: %v", ErrBadPath, s, err)
	}
	return netip.AddrPortFrom(addr, p), nil
}

func parseHost(h string) (netip.Addr, error) {
	if h == "" {
		return netip.Addr{}, errors.New("empty host")
	}
	if strings.IndexByte(h, '%') >= 0 {
		var b strings.Builder
		b.Grow(len(h))
		for i := 0; i < len(h); i++ {
			if h[i] != '%' {
				b.WriteByte(h[i])
				continue
			}
			if i+2 >= len(h) || h[i+1] != '3' || (h[i+2] != 'A' && h[i+2] != 'a') {
				return netip.Addr{}, errors.New("host has an escape other than %3A")
			}
			b.WriteByte(':')
			i += 2
		}
		h = b.String()
	}
	addr, err := netip.ParseAddr(h)
	if err != nil || addr.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("host %q is not a literal IP address", h)
	}
	return addr, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || s[0] == '0' {
		return 0, fmt.Errorf("port %q is not a decimal 1-65535", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("port %q is not a decimal 1-65535", s)
		}
	}
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q is not a decimal 1-65535", s)
	}
	return uint16(p), nil
}
