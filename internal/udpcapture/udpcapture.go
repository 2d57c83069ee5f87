// Package udpcapture is ztunnel's end of in-pod UDP capture: the sockets
// that receive an enrolled pod's outbound UDP and answer it.
//
// internal/redirect (Config.CaptureUDP) steers every outbound UDP datagram
// of the pod, DNS excepted unless configured, to port 15001 with TPROXY:
// the datagram keeps its real destination, and the Listener, a transparent
// socket in the pod's network namespace, reads it with that destination
// attached (IP_ORIGDSTADDR / IPV6_ORIGDSTADDR control messages).
//
// Replies must look as if they came from that destination: an app's
// connected UDP socket drops anything else. A Reply is a transparent socket
// bound to the original destination (a non-local address) and marked
// 0x539, so the capture rules let it through; it sends to the app's
// address. Keep one per original destination (it may answer any number of
// app sockets) and close it when its flows go idle.
//
// The destination side is DialApp: a socket bound transparently to a
// remote workload's address and connected to an app of the pod, so the app
// sees the remote source and its replies come back to that socket.
//
// Sockets live here rather than in internal/redirect because they are
// ztunnel's data path, while redirect only writes the pod's rules and
// routes; this package depends on redirect for the well-known port and
// marks, not the other way round.
//
// Creating these sockets needs CAP_NET_ADMIN (IP_TRANSPARENT, SO_MARK) and
// CAP_SYS_ADMIN (setns).
package udpcapture

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/redirect"
)

// Listener receives a pod's captured outbound UDP.
type Listener struct {
	c *net.UDPConn

	mu  sync.Mutex // guards oob, used by one ReadFrom at a time
	oob []byte
}

// oobSize holds one IP_ORIGDSTADDR or IPV6_ORIGDSTADDR message.
var oobSize = unix.CmsgSpace(unix.SizeofSockaddrInet6)

// Listen opens the capture socket on port (redirect.OutboundPort when 0)
// inside the network namespace at nsPath: dual-stack where the namespace
// has IPv6, transparent, asking for original destinations, and marked
// redirect.ZtunnelMark.
func Listen(nsPath string, port uint16) (*Listener, error) {
	if port == 0 {
		port = redirect.OutboundPort
	}
	lc := net.ListenConfig{Control: func(network, _ string, rc syscall.RawConn) error {
		return setOpts(rc, network == "udp6", true)
	}}
	var pc net.PacketConn
	err := netns.Do(nsPath, func() error {
		var err error
		// "udp" on the wildcard address is an IPv6 socket accepting IPv4
		// too when the namespace has IPv6, an IPv4 one otherwise.
		pc, err = lc.ListenPacket(context.Background(), "udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("udpcapture: listen on %d in %s: %w", port, nsPath, err)
	}
	return &Listener{c: pc.(*net.UDPConn), oob: make([]byte, oobSize)}, nil
}

// ReadFrom reads one captured datagram into b: its length, the app's
// address (src) and the address the app sent it to (origDst). It does not
// allocate. A datagram without an original destination (one sent straight
// to the port rather than captured) is returned with an error wrapping
// ErrNotCaptured; reading may go on.
func (l *Listener) ReadFrom(b []byte) (n int, src, origDst netip.AddrPort, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, oobn, _, src, err := l.c.ReadMsgUDPAddrPort(b, l.oob)
	if err != nil {
		return 0, netip.AddrPort{}, netip.AddrPort{}, err
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	origDst, ok := parseOrigDst(l.oob[:oobn])
	if !ok {
		return n, src, netip.AddrPort{}, errNotCaptured
	}
	return n, src, origDst, nil
}

// ErrNotCaptured: a datagram reached the listener without an original
// destination.
var ErrNotCaptured = errors.New("udpcapture: datagram without original destination")

var errNotCaptured error = ErrNotCaptured // preallocated: ReadFrom does not allocate

// SetReadDeadline bounds ReadFrom.
func (l *Listener) SetReadDeadline(t time.Time) error { return l.c.SetReadDeadline(t) }

// LocalAddr is the listening address.
func (l *Listener) LocalAddr() net.Addr { return l.c.LocalAddr() }

// Close closes the socket; a blocked ReadFrom returns.
func (l *Listener) Close() error { return l.c.Close() }

// parseOrigDst finds IP_ORIGDSTADDR or IPV6_ORIGDSTADDR in control
// messages, without allocating.
func parseOrigDst(oob []byte) (netip.AddrPort, bool) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0])) // oob is aligned: make, then CmsgSpace steps
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return netip.AddrPort{}, false
		}
		data := oob[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.SOL_IP && h.Type == unix.IP_ORIGDSTADDR && len(data) >= 8:
			// struct sockaddr_in: family, port (network order), address.
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(data[4:8])), binary.BigEndian.Uint16(data[2:4])), true
		case h.Level == unix.SOL_IPV6 && h.Type == unix.IPV6_ORIGDSTADDR && len(data) >= 24:
			a := netip.AddrFrom16([16]byte(data[8:24])).Unmap()
			return netip.AddrPortFrom(a, binary.BigEndian.Uint16(data[2:4])), true
		}
		oob = oob[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(oob)):]
	}
	return netip.AddrPort{}, false
}

// Reply sends datagrams to a pod's apps from one original destination.
type Reply struct {
	c    *net.UDPConn
	raw  *rawReply // instead of c when an app holds from's port
	from netip.AddrPort
}

// ListenReply opens, inside the network namespace at nsPath, a socket
// (a raw one when an app of the pod holds from's port: see rawReply)
// bound transparently to from (normally a captured datagram's original
// destination, an address the pod does not have) and marked
// redirect.ZtunnelMark so capture skips it. SO_REUSEADDR lets a new Reply
// for the same address replace one being closed.
//
// It receives nothing from the apps: their datagrams are captured to the
// Listener (TPROXY gives a transparent socket a captured datagram only when
// it is connected).
func ListenReply(nsPath string, from netip.AddrPort) (*Reply, error) {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	network := "udp4"
	if from.Addr().Is6() {
		network = "udp6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return setOpts(rc, network == "udp6", false)
	}}
	var pc net.PacketConn
	err := netns.Do(nsPath, func() error {
		var err error
		pc, err = lc.ListenPacket(context.Background(), network, from.String())
		return err
	})
	if errors.Is(err, syscall.EADDRINUSE) {
		// An app of the pod holds the port (a wildcard bind): reply
		// through a raw socket, which claims none.
		raw, rerr := listenRawReply(nsPath, from)
		if rerr == nil {
			return &Reply{raw: raw, from: from}, nil
		}
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return nil, fmt.Errorf("udpcapture: reply socket from %s in %s: %w", from, nsPath, err)
	}
	return &Reply{c: pc.(*net.UDPConn), from: from}, nil
}

// From is the address replies come from.
func (r *Reply) From() netip.AddrPort { return r.from }

// WriteTo sends b to the app at to. It does not allocate.
func (r *Reply) WriteTo(b []byte, to netip.AddrPort) (int, error) {
	if r.raw != nil {
		return r.raw.writeTo(b, to)
	}
	return r.c.WriteToUDPAddrPort(b, to)
}

// Close closes the socket.
func (r *Reply) Close() error {
	if r.raw != nil {
		return r.raw.close()
	}
	return r.c.Close()
}

// DialApp opens, inside the network namespace at nsPath, a socket bound
// transparently to from (a remote workload's address, not the pod's) and
// connected to app (an address of the pod): the destination side of a UDP
// flow. Write delivers to the app, which sees from as the source; Read
// returns the app's replies to from, which the pod's capture rules
// (redirect.Config.CaptureUDP) steer to this socket: the conntrack entry of
// the flow carries ct mark 0x539, and TPROXY prefers a connected socket
// that exactly matches the reply over the listener.
//
// The pod must be enrolled with CaptureUDP, or the app's replies leave the
// pod by its routes for from.
func DialApp(nsPath string, from, app netip.AddrPort) (*net.UDPConn, error) {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	app = netip.AddrPortFrom(app.Addr().Unmap(), app.Port())
	network := "udp4"
	if from.Addr().Is6() {
		network = "udp6"
	}
	d := net.Dialer{
		LocalAddr: net.UDPAddrFromAddrPort(from),
		// Control runs before bind, so the non-local bind is allowed.
		Control: func(_, _ string, rc syscall.RawConn) error { return setOpts(rc, network == "udp6", false) },
	}
	var c net.Conn
	err := netns.Do(nsPath, func() error {
		var err error
		c, err = d.Dial(network, app.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("udpcapture: dial app %s from %s in %s: %w", app, from, nsPath, err)
	}
	return c.(*net.UDPConn), nil
}

// setOpts makes a socket transparent, marked, reusable and, for the
// listener, reporting original destinations (for IPv4 datagrams on an IPv6
// socket too).
func setOpts(rc syscall.RawConn, v6, origDst bool) error {
	var serr error
	set := func(fd, level, opt, v int, name string) {
		if serr == nil {
			if err := unix.SetsockoptInt(fd, level, opt, v); err != nil {
				serr = fmt.Errorf("set %s: %w", name, err)
			}
		}
	}
	err := rc.Control(func(fd uintptr) {
		s := int(fd)
		set(s, unix.SOL_SOCKET, unix.SO_MARK, redirect.ZtunnelMark, "SO_MARK")
		set(s, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR")
		set(s, unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT")
		if origDst {
			set(s, unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1, "IP_RECVORIGDSTADDR")
		}
		if v6 {
			set(s, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT")
			if origDst {
				set(s, unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1, "IPV6_RECVORIGDSTADDR")
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}
