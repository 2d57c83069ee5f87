package redirect

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// OriginalDst returns the destination a redirected TCP connection was
// addressed to before REDIRECT rewrote it, from conntrack via
// SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6). For a connection
// conntrack tracks but did not translate it is the connection's own local
// address; where conntrack has no entry (no NAT rules in the namespace) it
// fails.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("redirect: original dst: no local address")
	}
	v6 := local.IP.To4() == nil
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: original dst: %w", err)
	}
	var sa []byte
	var serr error
	if err := raw.Control(func(fd uintptr) {
		if v6 {
			// struct ip6_mtuinfo begins with a struct sockaddr_in6 and is
			// larger than one, so it holds the kernel's answer.
			var info *unix.IPv6MTUInfo
			info, serr = unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, unix.SO_ORIGINAL_DST)
			if serr == nil {
				sa = rawInet6Bytes(&info.Addr)
			}
			return
		}
		// struct ipv6_mreq (20 bytes) holds a struct sockaddr_in (16).
		var mreq *unix.IPv6Mreq
		mreq, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if serr == nil {
			sa = mreq.Multiaddr[:]
		}
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: original dst: %w", err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: original dst of %s: %w (was the connection redirected?)", c.LocalAddr(), serr)
	}
	return parseSockaddr(sa)
}

// rawInet6Bytes returns the kernel's bytes of r.
func rawInet6Bytes(r *unix.RawSockaddrInet6) []byte {
	b := make([]byte, 24)
	binary.NativeEndian.PutUint16(b[0:2], r.Family)
	binary.NativeEndian.PutUint16(b[2:4], r.Port) // already network order in memory
	binary.NativeEndian.PutUint32(b[4:8], r.Flowinfo)
	copy(b[8:24], r.Addr[:])
	return b
}

// parseSockaddr decodes a struct sockaddr_in or sockaddr_in6 as the kernel
// lays it out: family in host order, port in network order.
func parseSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 {
		return netip.AddrPort{}, fmt.Errorf("redirect: sockaddr of %d bytes", len(b))
	}
	switch fam := binary.NativeEndian.Uint16(b[0:2]); fam {
	case unix.AF_INET:
		if len(b) < 8 {
			return netip.AddrPort{}, fmt.Errorf("redirect: sockaddr_in of %d bytes", len(b))
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4])), nil
	case unix.AF_INET6:
		if len(b) < 24 {
			return netip.AddrPort{}, fmt.Errorf("redirect: sockaddr_in6 of %d bytes", len(b))
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), binary.BigEndian.Uint16(b[2:4])), nil
	default:
		return netip.AddrPort{}, fmt.Errorf("redirect: sockaddr family %d, want AF_INET or AF_INET6", fam)
	}
}
