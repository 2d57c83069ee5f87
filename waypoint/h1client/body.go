package h1client

import (
	"context"
	"io"
	"sync"
)

// body is a response body. Its exchange ends, releasing the connection,
// at io.EOF (the connection may be pooled), on a read error or on Close
// before EOF (the connection is closed). Close may be called while a Read
// is blocked: closing the connection unblocks it.
type body struct {
	c    *Client
	pc   *conn
	rc   io.ReadCloser // from http.ReadResponse; never closed, since that would drain it
	ctx  context.Context
	stop func() bool // stops the context's hook; nil without one
	keep bool        // neither side asked to close the connection

	// mu guards the fields below.
	mu     sync.Mutex
	done   bool  // the exchange has ended
	closed bool  // Close was called
	err    error // what Read returns once done: io.EOF or the failure
}

func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	closed, done, doneErr := b.closed, b.done, b.err
	b.mu.Unlock()
	switch {
	case closed:
		return 0, errBodyClosed
	case done:
		return 0, doneErr
	}

	n, err := b.rc.Read(p)
	if err == nil {
		return n, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.done: // closed meanwhile
		return n, errBodyClosed
	case err == io.EOF:
		b.c.release(b.pc, b.stop, b.keep)
	default:
		b.pc.abort(b.stop)
		err = b.pc.errorf(b.ctx, "read response body from", err)
	}
	b.done, b.err = true, err
	return n, err
}

func (b *body) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if !b.done {
		b.done = true
		b.pc.abort(b.stop)
	}
	return nil
}
