package udpcapture

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmsg lays out one control message as the kernel does.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func sockaddr4(ap netip.AddrPort) []byte {
	b := make([]byte, unix.SizeofSockaddrInet4)
	binary.NativeEndian.PutUint16(b, unix.AF_INET)
	binary.BigEndian.PutUint16(b[2:], ap.Port())
	a := ap.Addr().As4()
	copy(b[4:], a[:])
	return b
}

func sockaddr6(ap netip.AddrPort) []byte {
	b := make([]byte, unix.SizeofSockaddrInet6)
	binary.NativeEndian.PutUint16(b, unix.AF_INET6)
	binary.BigEndian.PutUint16(b[2:], ap.Port())
	a := ap.Addr().As16()
	copy(b[8:], a[:])
	return b
}

func TestParseOrigDst(t *testing.T) {
	v4 := netip.MustParseAddrPort("10.244.2.2:9999")
	v6 := netip.MustParseAddrPort("[fd00::3]:53")
	other := cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMP, make([]byte, 16))
	for _, tc := range []struct {
		name string
		oob  []byte
		want netip.AddrPort
	}{
		{"ipv4", cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(v4)), v4},
		{"ipv6", cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(v6)), v6},
		{"v4-mapped on an ipv6 socket", cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR,
			sockaddr6(netip.AddrPortFrom(netip.AddrFrom16(v4.Addr().As16()), v4.Port()))), v4},
		{"after another message", append(append([]byte{}, other...), cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(v4))...), v4},
		{"none", other, netip.AddrPort{}},
		{"empty", nil, netip.AddrPort{}},
		{"truncated", cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(v4))[:unix.CmsgLen(4)], netip.AddrPort{}},
	} {
		got, ok := parseOrigDst(tc.oob)
		if ok != tc.want.IsValid() || got != tc.want {
			t.Errorf("%s: got %v, %v; want %v", tc.name, got, ok, tc.want)
		}
	}
}

func TestParseOrigDst_DoesNotAllocate(t *testing.T) {
	oob := cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(netip.MustParseAddrPort("[fd00::3]:53")))
	if n := testing.AllocsPerRun(100, func() { parseOrigDst(oob) }); n != 0 {
		t.Errorf("%v allocations", n)
	}
}
