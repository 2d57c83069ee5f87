package hbone

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

// Socket reads and writes on the data path use raw system calls on the
// non-blocking socket, waiting for readiness through the runtime poller
// (syscall.RawConn). net.Conn's own Read and Write enter the scheduler's
// system-call state instead, and the first such call after the process was
// idle wakes the runtime's monitor thread, which then ticks every 20 µs for
// about a millisecond: at a steady request rate that costs more CPU than the
// proxying itself. A non-blocking socket call never blocks, so it needs none
// of that bookkeeping.

// rawRead reads once from fd; EINTR is retried, EAGAIN returned.
func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	if len(p) == 0 {
		return 0, 0
	}
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e != syscall.EINTR {
			return int(n), e
		}
	}
}

// rawWrite writes once to fd; EINTR is retried, EAGAIN returned.
func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	if len(p) == 0 {
		return 0, 0
	}
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e != syscall.EINTR {
			return int(n), e
		}
	}
}

// rawSocket is a socket's Read and Write through raw system calls. One
// reader and one writer may use it at the same time.
type rawSocket struct {
	rc              syscall.RawConn
	readFn, writeFn func(fd uintptr) bool

	// Read's argument and results, used by readFD.
	rbuf []byte
	rn   int
	rerr syscall.Errno
	// Write's argument and results, used by writeFD.
	wbuf []byte
	wn   int
	werr syscall.Errno
}

// syscallConn returns c's raw socket, or nil when it has none.
func syscallConn(c any) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// newRawSocket returns nil when c has no raw socket.
func newRawSocket(c any) *rawSocket {
	rc := syscallConn(c)
	if rc == nil {
		return nil
	}
	s := &rawSocket{}
	s.init(rc)
	return s
}

func (s *rawSocket) init(rc syscall.RawConn) {
	s.rc = rc
	s.readFn, s.writeFn = s.readFD, s.writeFD
}

func (s *rawSocket) readFD(fd uintptr) bool {
	s.rn, s.rerr = rawRead(fd, s.rbuf)
	return s.rerr != syscall.EAGAIN // false: wait until readable, then again
}

func (s *rawSocket) writeFD(fd uintptr) bool {
	s.wn, s.werr = rawWrite(fd, s.wbuf)
	return s.werr != syscall.EAGAIN
}

// Read reads like net.Conn.Read, honouring the connection's deadlines.
func (s *rawSocket) Read(p []byte) (int, error) {
	s.rbuf, s.rn, s.rerr = p, 0, 0
	err := s.rc.Read(s.readFn)
	s.rbuf = nil
	switch {
	case err != nil:
		return 0, err
	case s.rerr != 0:
		return 0, os.NewSyscallError("read", s.rerr)
	case s.rn <= 0 && len(p) > 0:
		return 0, io.EOF
	}
	return s.rn, nil
}

// Write writes all of p like net.Conn.Write, honouring the deadlines.
func (s *rawSocket) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		s.wbuf, s.wn, s.werr = p[written:], 0, 0
		err := s.rc.Write(s.writeFn)
		s.wbuf = nil
		if err != nil {
			return written, err
		}
		if s.werr != 0 {
			return written, os.NewSyscallError("write", s.werr)
		}
		written += max(s.wn, 0)
	}
	return written, nil
}
