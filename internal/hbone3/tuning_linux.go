package hbone3

import (
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

func getBuffer(rc syscall.RawConn, k bufferKind) (int, error) {
	opt := unix.SO_RCVBUF
	if k == sendBuffer {
		opt = unix.SO_SNDBUF
	}
	var size int
	var serr error
	if err := rc.Control(func(fd uintptr) { size, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, opt) }); err != nil {
		return 0, err
	}
	return size, serr
}

func setBuffer(rc syscall.RawConn, k bufferKind, size int, force bool) error {
	var opt int
	switch {
	case k == recvBuffer && force:
		opt = unix.SO_RCVBUFFORCE
	case k == recvBuffer:
		opt = unix.SO_RCVBUF
	case force:
		opt = unix.SO_SNDBUFFORCE
	default:
		opt = unix.SO_SNDBUF
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, size) }); err != nil {
		return err
	}
	return serr
}

// gsoAvailable probes UDP_SEGMENT as quic-go does (kernel 5 or later, not
// disabled by QUIC_GO_DISABLE_GSO).
func gsoAvailable(rc syscall.RawConn) bool {
	if off, err := strconv.ParseBool(os.Getenv("QUIC_GO_DISABLE_GSO")); err == nil && off {
		return false
	}
	var u unix.Utsname
	if unix.Uname(&u) != nil || kernelMajor(unix.ByteSliceToString(u.Release[:])) < 5 {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { _, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT) }); err != nil {
		return false
	}
	return serr == nil
}

func kernelMajor(release string) int {
	end := 0
	for end < len(release) && release[end] >= '0' && release[end] <= '9' {
		end++
	}
	n, _ := strconv.Atoi(release[:end])
	return n
}
