package hbone

import (
	"io"
	"os"
	"syscall"
)

// pooledReader reads a source into pooled buffers behind frame-header room.
// For a socket it takes the buffer only when the socket is readable, so a
// reader blocked on an idle connection holds none. One pooledReader serves a
// whole copy, so a read allocates nothing. Every read is from the same
// source, passed again each time (the caller keeps it anyway).
type pooledReader struct {
	rc     syscall.RawConn // nil unless the source is a socket
	readFn func(fd uintptr) bool

	// Results of the last readFn call.
	bp    *[]byte
	n     int
	errno syscall.Errno
}

func newPooledReader(r io.Reader) *pooledReader {
	pr := &pooledReader{}
	pr.init(syscallConn(r))
	return pr
}

// init prepares pr to read a source whose raw socket is rc (nil: none).
func (pr *pooledReader) init(rc syscall.RawConn) {
	pr.rc = rc
	if rc != nil {
		pr.readFn = pr.readFD
	}
}

// read reads from r, the source pr was made for, and returns a pooled
// buffer whose [frameHeaderLen:frameHeaderLen+n] holds the data read; the
// caller returns the buffer with putBuf.
func (pr *pooledReader) read(r io.Reader) (*[]byte, int, error) {
	if pr.rc == nil {
		bp := getBuf(frameHeaderLen + sendChunk)
		n, err := r.Read((*bp)[frameHeaderLen : frameHeaderLen+sendChunk])
		return bp, n, err
	}
	pr.bp, pr.n, pr.errno = nil, 0, 0
	if err := pr.rc.Read(pr.readFn); err != nil {
		return pr.bp, 0, err
	}
	switch {
	case pr.errno != 0:
		return pr.bp, 0, os.NewSyscallError("read", pr.errno)
	case pr.n == 0:
		return pr.bp, 0, io.EOF
	}
	return pr.bp, pr.n, nil
}

// readFD is called by the runtime poller; false means "wait until readable".
func (pr *pooledReader) readFD(fd uintptr) bool {
	pr.bp = getBuf(frameHeaderLen + sendChunk)
	n, errno := rawRead(fd, (*pr.bp)[frameHeaderLen:frameHeaderLen+sendChunk])
	if errno == syscall.EAGAIN {
		putBuf(pr.bp)
		pr.bp = nil
		return false
	}
	pr.n = max(n, 0)
	pr.errno = errno
	return true
}
