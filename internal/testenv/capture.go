package testenv

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Packet is one captured TCP or UDP packet, IPv4 or IPv6.
type Packet struct {
	Proto    uint8 // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	Src, Dst netip.AddrPort
	Payload  []byte
}

// Capture records the TCP and UDP packets crossing a node's link, as
// tcpdump on that interface would (both directions), until Stop.
type Capture struct {
	fd   int           // owned by loop, which closes it
	stop chan struct{} // closed by Stop
	done chan struct{} // closed when loop has closed fd
	once sync.Once

	mu      sync.Mutex // guards packets
	packets []Packet
}

// Capture starts capturing on the node's link interface; the test's
// cleanup stops it.
func (n *Node) Capture(t testing.TB) *Capture {
	t.Helper()
	return CaptureOn(t, n.NS, n.LinkIf)
}

// CaptureOn starts capturing on interface ifname of namespace ns (such as
// a pod's eth0); the test's cleanup stops it.
func CaptureOn(t testing.TB, ns NS, ifname string) *Capture {
	t.Helper()
	c := &Capture{stop: make(chan struct{}), done: make(chan struct{})}
	err := ns.Exec(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		t.Fatalf("testenv: capture on %s in %s: %v", ifname, ns.Path, err)
	}
	tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
	unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	go c.loop()
	t.Cleanup(func() { c.Stop() })
	return c
}

func (c *Capture) loop() {
	defer close(c.done)
	defer unix.Close(c.fd)
	buf := make([]byte, 65536)
	stopping := false
	for {
		if !stopping {
			select {
			case <-c.stop:
				stopping = true // read what is already queued, then end
			default:
			}
		}
		flags := 0
		if stopping {
			flags = unix.MSG_DONTWAIT
		}
		n, _, err := unix.Recvfrom(c.fd, buf, flags) // wakes every 50 ms to check stop
		if err != nil {
			if stopping {
				return
			}
			continue
		}
		if p, ok := parseFrame(buf[:n]); ok {
			c.mu.Lock()
			c.packets = append(c.packets, p)
			c.mu.Unlock()
		}
	}
}

// parseFrame decodes an Ethernet frame carrying TCP or UDP over IPv4, or
// over IPv6 without extension headers (the only IPv6 TCP and UDP these
// topologies carry).
func parseFrame(f []byte) (Packet, bool) {
	if len(f) < 14+20 {
		return Packet{}, false
	}
	var p Packet
	var src, dst netip.Addr
	var l4 []byte
	switch ip := f[14:]; binary.BigEndian.Uint16(f[12:14]) {
	case unix.ETH_P_IP:
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:4]))
		if ihl < 20 || total > len(ip) || total < ihl+8 {
			return Packet{}, false
		}
		src, _ = netip.AddrFromSlice(ip[12:16])
		dst, _ = netip.AddrFromSlice(ip[16:20])
		p.Proto, l4 = ip[9], ip[ihl:total]
	case unix.ETH_P_IPV6:
		if len(ip) < 40+8 {
			return Packet{}, false
		}
		total := 40 + int(binary.BigEndian.Uint16(ip[4:6]))
		if total > len(ip) {
			return Packet{}, false
		}
		src, _ = netip.AddrFromSlice(ip[8:24])
		dst, _ = netip.AddrFromSlice(ip[24:40])
		p.Proto, l4 = ip[6], ip[40:total]
	default:
		return Packet{}, false
	}
	if len(l4) < 8 {
		return Packet{}, false
	}
	sport, dport := binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	p.Src, p.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	switch p.Proto {
	case unix.IPPROTO_TCP:
		if len(l4) < 20 {
			return Packet{}, false
		}
		off := int(l4[12]>>4) * 4
		if off < 20 || off > len(l4) {
			return Packet{}, false
		}
		p.Payload = append([]byte(nil), l4[off:]...)
	case unix.IPPROTO_UDP:
		p.Payload = append([]byte(nil), l4[8:]...)
	default:
		return Packet{}, false
	}
	return p, true
}

// Packets returns what has been captured so far.
func (c *Capture) Packets() []Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Packet(nil), c.packets...)
}

// Stop ends the capture; Packets stays readable.
func (c *Capture) Stop() {
	c.once.Do(func() { close(c.stop) })
	<-c.done
}

// htons converts to network byte order.
func htons(v uint16) uint16 { return v<<8 | v>>8 }
