package hbone

import (
	"io"
	"os"
	"syscall"
)

// pooledReader reads a source into pooled buffers behind frame-header room.
// For a socket it takes the buffer only when the socket is readable, so a
// reader blocked on an idle connection holds none. One pooledReader serves a
// whole copy, so a read allocates nothing.
type pooledReader struct {
	r      io.Reader
	rc     syscall.RawConn // nil unless r is a socket
	readFn func(fd uintptr) bool

	// Results of the last readFn call.
	bp  *[]byte
	n   int
	err error
}

func newPooledReader(r io.Reader) *pooledReader {
	pr := &pooledReader{}
	pr.init(r, syscallConn(r))
	return pr
}

// init prepares pr to read r; rc is r's raw socket, or nil.
func (pr *pooledReader) init(r io.Reader, rc syscall.RawConn) {
	pr.r, pr.rc = r, rc
	if rc != nil {
		pr.readFn = pr.readFD
	}
}

// read returns a pooled buffer whose [frameHeaderLen:frameHeaderLen+n]
// holds the data read; the caller returns the buffer with putBuf.
func (pr *pooledReader) read() (*[]byte, int, error) {
	if pr.rc == nil {
		bp := getBuf(frameHeaderLen + sendChunk)
		n, err := pr.r.Read((*bp)[frameHeaderLen : frameHeaderLen+sendChunk])
		return bp, n, err
	}
	pr.bp, pr.n, pr.err = nil, 0, nil
	if err := pr.rc.Read(pr.readFn); err != nil {
		return pr.bp, 0, err
	}
	switch {
	case pr.err != nil:
		return pr.bp, 0, os.NewSyscallError("read", pr.err)
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
	if errno != 0 {
		pr.err = errno
	}
	return true
}
