package hbone

import (
	"net"
	"sync"
)

// batchConn sits under a tls.Conn and, while a batch is open, gathers the
// TLS records of one large write into a single pooled buffer so they reach
// the socket in one system call instead of one per 16 KiB record.
type batchConn struct {
	net.Conn
	raw *rawSocket // nil when Conn is not a socket

	mu       sync.Mutex // guards the fields below
	batching bool
	bp       *[]byte
	n        int
}

func newBatchConn(c net.Conn) *batchConn {
	return &batchConn{Conn: c, raw: newRawSocket(c)}
}

// Read implements net.Conn.
func (b *batchConn) Read(p []byte) (int, error) {
	if b.raw != nil {
		return b.raw.Read(p)
	}
	return b.Conn.Read(p)
}

func (b *batchConn) write(p []byte) (int, error) {
	if b.raw != nil {
		return b.raw.Write(p)
	}
	return b.Conn.Write(p)
}

// begin opens a batch. Writes go to the buffer until flush.
func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// Write implements net.Conn.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		return b.write(p)
	}
	if b.bp == nil {
		b.bp = getBuf(batchSize)
	}
	if b.n+len(p) > len(*b.bp) {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > len(*b.bp) {
			return b.write(p)
		}
	}
	b.n += copy((*b.bp)[b.n:], p)
	return len(p), nil
}

// flush writes what the batch gathered and closes the batch.
func (b *batchConn) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	err := b.flushLocked()
	if b.bp != nil {
		putBuf(b.bp)
		b.bp = nil
	}
	return err
}

func (b *batchConn) flushLocked() error {
	if b.n == 0 {
		return nil
	}
	_, err := b.write((*b.bp)[:b.n])
	b.n = 0
	return err
}

// batchSize holds the records of one full send chunk (256 KiB of payload
// in 16 KiB records, 22 bytes of overhead each).
const batchSize = 512 << 10
