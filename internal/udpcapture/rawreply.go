package udpcapture

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/redirect"
)

// rawReply sends replies through a raw UDP socket, writing the UDP header
// itself: the fallback of ListenReply when an app of the pod holds the
// original destination's port (a wildcard bind on it, e.g. a server that
// also calls peers on its own port), so no UDP socket can be bound to
// that address and port. A raw socket claims no port. It is bound
// transparently to the original destination's address (the IP header's
// source) and marked like ztunnel's other sockets; a filter drops
// everything it would receive.
type rawReply struct {
	fd   int
	from netip.AddrPort
	v6   bool

	mu  sync.Mutex // guards buf and sa
	buf []byte
	sa4 unix.SockaddrInet4
	sa6 unix.SockaddrInet6
}

// udpHeaderLen is the UDP header's size; maxDatagram the largest payload.
const (
	udpHeaderLen = 8
	maxDatagram  = 65535 - udpHeaderLen
)

func listenRawReply(nsPath string, from netip.AddrPort) (*rawReply, error) {
	v6 := from.Addr().Is6()
	family, level, transparent := unix.AF_INET, unix.SOL_IP, unix.IP_TRANSPARENT
	if v6 {
		family, level, transparent = unix.AF_INET6, unix.SOL_IPV6, unix.IPV6_TRANSPARENT
	}
	var fd int
	err := netns.Do(nsPath, func() error {
		var err error
		if fd, err = unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP); err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
		steps := []struct {
			what string
			do   func() error
		}{
			{"SO_ATTACH_FILTER", func() error {
				return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &drop[0]})
			}},
			{"SO_MARK", func() error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, redirect.ZtunnelMark) }},
			{"transparent", func() error { return unix.SetsockoptInt(fd, level, transparent, 1) }},
			{"IPV6_CHECKSUM", func() error {
				if !v6 {
					return nil // IPv4: a zero UDP checksum means none
				}
				return unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_CHECKSUM, 6) // the kernel fills it in
			}},
			{"bind", func() error {
				if v6 {
					return unix.Bind(fd, &unix.SockaddrInet6{Addr: from.Addr().As16()})
				}
				return unix.Bind(fd, &unix.SockaddrInet4{Addr: from.Addr().As4()})
			}},
		}
		for _, s := range steps {
			if err := s.do(); err != nil {
				unix.Close(fd)
				return fmt.Errorf("raw socket %s: %w", s.what, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &rawReply{fd: fd, from: from, v6: v6, buf: make([]byte, udpHeaderLen+maxDatagram)}, nil
}

// writeTo sends b to the app at to, from r.from.
func (r *rawReply) writeTo(b []byte, to netip.AddrPort) (int, error) {
	if len(b) > maxDatagram {
		return 0, fmt.Errorf("udpcapture: reply of %d bytes, over %d", len(b), maxDatagram)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.buf[:udpHeaderLen+len(b)]
	binary.BigEndian.PutUint16(p[0:], r.from.Port())
	binary.BigEndian.PutUint16(p[2:], to.Port())
	binary.BigEndian.PutUint16(p[4:], uint16(len(p)))
	p[6], p[7] = 0, 0
	copy(p[udpHeaderLen:], b)
	var err error
	if r.v6 {
		r.sa6.Addr = to.Addr().As16()
		err = unix.Sendto(r.fd, p, 0, &r.sa6)
	} else {
		r.sa4.Addr = to.Addr().Unmap().As4()
		err = unix.Sendto(r.fd, p, 0, &r.sa4)
	}
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

func (r *rawReply) close() error { return unix.Close(r.fd) }
