package hbone3

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// WantedBufferSize is the UDP socket buffer size quic-go asks for (its
// documented recommendation for throughput; see its wiki page
// "UDP Buffer Sizes"): both the receive and the send buffer.
const WantedBufferSize = 7 << 20

// Tuning reports what the kernel granted a tunnel socket. quic-go tunes
// sockets itself and only prints to the process-wide log when it cannot;
// this package applies the same tuning first, so the outcome is known, and
// logs it through the configured logger.
type Tuning struct {
	// RecvBuffer and SendBuffer are SO_RCVBUF and SO_SNDBUF as the kernel
	// reports them (Linux reports twice the size asked for, its bookkeeping
	// included), or 0 when they could not be read.
	RecvBuffer, SendBuffer int
	// Forced is set when the size was reached only with SO_RCVBUFFORCE /
	// SO_SNDBUFFORCE (CAP_NET_ADMIN), beyond net.core.rmem_max / wmem_max.
	Forced bool
	// GSO reports whether UDP generic segmentation offload (UDP_SEGMENT) is
	// available on the socket, so quic-go sends batches of packets with one
	// system call. quic-go may still turn it off after a send the device
	// refuses.
	GSO bool
	// Err says why a buffer is smaller than WantedBufferSize; nil when the
	// tuning took.
	Err error
}

// OK reports whether both buffers reached WantedBufferSize.
func (t Tuning) OK() bool { return t.Err == nil }

func (t Tuning) String() string {
	s := fmt.Sprintf("recv buffer %d KiB, send buffer %d KiB (want %d KiB), GSO %v",
		t.RecvBuffer>>10, t.SendBuffer>>10, WantedBufferSize>>10, t.GSO)
	if t.Forced {
		s += ", forced past the sysctl limit"
	}
	if t.Err != nil {
		s += ": " + t.Err.Error()
	}
	return s
}

// errNoSocket: the PacketConn is not a socket whose options can be set.
var errNoSocket = errors.New("hbone3: packet connection is not a UDP socket; buffer sizes cannot be set")

// tuneUDP raises pc's socket buffers to WantedBufferSize the way quic-go
// does (setsockopt, then the FORCE variants past the sysctl limits when
// privileged), reads back what the kernel granted and probes GSO.
func tuneUDP(pc net.PacketConn) Tuning {
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return Tuning{Err: errNoSocket}
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return Tuning{Err: fmt.Errorf("hbone3: socket: %w", err)}
	}
	var t Tuning
	var errs []error
	var forced bool
	t.RecvBuffer, forced, err = raiseBuffer(rc, recvBuffer)
	t.Forced = t.Forced || forced
	errs = append(errs, err)
	t.SendBuffer, forced, err = raiseBuffer(rc, sendBuffer)
	t.Forced = t.Forced || forced
	errs = append(errs, err)
	t.Err = errors.Join(errs...)
	// quic-go uses GSO only on sockets it can send control messages on.
	if _, isUDP := pc.(*net.UDPConn); isUDP {
		t.GSO = gsoAvailable(rc)
	}
	return t
}

type bufferKind int

const (
	recvBuffer bufferKind = iota
	sendBuffer
)

func (k bufferKind) String() string {
	if k == recvBuffer {
		return "receive"
	}
	return "send"
}

// raiseBuffer sets one buffer to WantedBufferSize and returns the size the
// kernel reports afterwards.
func raiseBuffer(rc syscall.RawConn, k bufferKind) (size int, forced bool, err error) {
	size, err = getBuffer(rc, k)
	if err != nil {
		return 0, false, fmt.Errorf("hbone3: reading the %s buffer size: %w", k, err)
	}
	if size >= WantedBufferSize {
		return size, false, nil
	}
	was := size
	_ = setBuffer(rc, k, WantedBufferSize, false) // judged by reading back
	if size, err = getBuffer(rc, k); err == nil && size < WantedBufferSize {
		_ = setBuffer(rc, k, WantedBufferSize, true)
		size, err = getBuffer(rc, k)
		forced = err == nil && size >= WantedBufferSize
	}
	if err != nil {
		return 0, false, fmt.Errorf("hbone3: reading the %s buffer size: %w", k, err)
	}
	if size < WantedBufferSize {
		return size, false, fmt.Errorf("hbone3: the system refused a %d KiB UDP %s buffer (was %d KiB, got %d KiB): raise net.core.%s or grant CAP_NET_ADMIN",
			WantedBufferSize>>10, k, was>>10, size>>10, map[bufferKind]string{recvBuffer: "rmem_max", sendBuffer: "wmem_max"}[k])
	}
	return size, forced, nil
}
