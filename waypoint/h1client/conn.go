package h1client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"time"
)

const (
	bufSize = 4 << 10       // per connection, for reading and for writing
	noLimit = math.MaxInt64 // readLimit while a body is read
)

var errReadLimit = errors.New("h1client: response header read limit reached")

// conn is one upstream connection. br and bw read and write through its
// Read and Write methods, which bound and observe the traffic.
type conn struct {
	c         *Client
	nc        net.Conn // as Dial returned it
	addr      string
	br        *bufio.Reader
	bw        *bufio.Writer
	interrupt func() // sets a past deadline on nc, for context.AfterFunc

	// Used by the goroutine that owns the connection for an exchange.
	readLimit int64 // bytes Read may still pull from nc
	gotByte   bool  // a byte of the response arrived
	writeErr  error // the error of a failed write to nc

	// Client.mu guards the fields below.
	host      *host
	idleSince time.Duration // monoNow when last pooled
	// idleTimer closes the connection once idle too long; nil without
	// IdleTimeout. It is armed lazily: taking the connection leaves it
	// running and pooling it again arms it only when it is not, so a busy
	// connection costs no timer operation per request. When it fires on a
	// connection in use, or idle for less than IdleTimeout, it stops, or
	// is armed again for the rest (expire).
	idleTimer *time.Timer
	timerOn   bool // idleTimer is armed
}

// epoch is the origin of monoNow.
var epoch = time.Now()

// monoNow reads the monotonic clock alone: one clock read where
// time.Now takes two (the wall clock too).
func monoNow() time.Duration { return time.Since(epoch) }

// host is an address's connections. It is in Client.hosts while it has
// any, so that addresses no longer used take no room.
type host struct {
	idle  []*conn // the most recently used last
	conns int     // open connections, idle or in use
}

func (c *Client) dial(ctx context.Context, addr string) (*conn, error) {
	nc, err := c.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	pc := &conn{c: c, nc: nc, addr: addr, readLimit: noLimit}
	pc.br = bufio.NewReaderSize(pc, bufSize)
	pc.bw = bufio.NewWriterSize(pc, bufSize)
	pc.interrupt = func() { nc.SetDeadline(time.Unix(1, 0)) }

	c.mu.Lock()
	h := c.hosts[addr]
	if h == nil {
		if c.hosts == nil {
			c.hosts = make(map[string]*host)
		}
		h = &host{}
		c.hosts[addr] = h
	}
	h.conns++
	pc.host = h
	c.mu.Unlock()
	return pc, nil
}

// close closes pc, which must not be idle.
func (pc *conn) close() {
	c := pc.c
	c.mu.Lock()
	if pc.host.conns--; pc.host.conns == 0 {
		delete(c.hosts, pc.addr)
	}
	if pc.timerOn {
		pc.idleTimer.Stop()
		pc.timerOn = false
	}
	c.mu.Unlock()
	pc.nc.Close()
}

func (pc *conn) Read(p []byte) (int, error) {
	if pc.readLimit <= 0 {
		return 0, errReadLimit
	}
	if int64(len(p)) > pc.readLimit {
		p = p[:pc.readLimit]
	}
	n, err := pc.nc.Read(p)
	pc.readLimit -= int64(n)
	if n > 0 {
		pc.gotByte = true
	}
	return n, err
}

func (pc *conn) Write(p []byte) (int, error) {
	n, err := pc.nc.Write(p)
	if err != nil {
		pc.writeErr = err
	}
	return n, err
}

// abort ends a failed exchange: it stops the context's hook and closes
// the connection.
func (pc *conn) abort(stop func() bool) {
	if stop != nil {
		stop()
	}
	pc.close()
}

// errorf describes a failure of op on pc, as the context's error when the
// context is done, since the failure is then most likely its doing.
func (pc *conn) errorf(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		err = ctxErr
	}
	return fmt.Errorf("h1client: %s %s: %w", op, pc.addr, err)
}

// takeIdle takes addr's most recently used idle connection, and when it
// became idle (monoNow); nil when there is none. Its idle timer keeps
// running: should it fire, expire will not find pc idle.
func (c *Client) takeIdle(addr string) (*conn, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.hosts[addr]
	if h == nil || len(h.idle) == 0 {
		return nil, 0
	}
	n := len(h.idle) - 1
	pc := h.idle[n]
	h.idle[n] = nil
	h.idle = h.idle[:n]
	return pc, pc.idleSince
}

// putIdle pools pc, or closes it when its address has enough idle ones.
func (c *Client) putIdle(pc *conn) {
	c.mu.Lock()
	h := pc.host
	if len(h.idle) >= c.maxIdlePerHost() {
		c.mu.Unlock()
		pc.close()
		return
	}
	h.idle = append(h.idle, pc)
	pc.idleSince = monoNow()
	switch d := c.idleTimeout(); {
	case d == 0: // never expires
	case pc.idleTimer == nil:
		pc.idleTimer = time.AfterFunc(d, func() { c.expire(pc) })
		pc.timerOn = true
	case !pc.timerOn:
		pc.idleTimer.Reset(d)
		pc.timerOn = true
	}
	c.mu.Unlock()
}

// expire runs from pc's idle timer. It closes pc if it is idle and has
// been for IdleTimeout; if it is idle for less (it was taken and pooled
// again since the timer was armed), it arms the timer for the rest; if
// it is in use, it leaves the timer stopped for putIdle to arm.
func (c *Client) expire(pc *conn) {
	c.mu.Lock()
	h := pc.host
	i := slices.Index(h.idle, pc)
	if i < 0 {
		pc.timerOn = false
		c.mu.Unlock()
		return
	}
	if rest := c.idleTimeout() - (monoNow() - pc.idleSince); rest > 0 {
		pc.idleTimer.Reset(rest)
		c.mu.Unlock()
		return
	}
	pc.timerOn = false
	h.idle = slices.Delete(h.idle, i, i+1)
	c.mu.Unlock()
	pc.close()
}

// CloseIdleConnections closes the idle connections. Connections in use
// are not affected and are pooled again when their exchange ends.
func (c *Client) CloseIdleConnections() {
	var idle []*conn
	c.mu.Lock()
	for _, h := range c.hosts {
		for i, pc := range h.idle {
			if pc.timerOn {
				pc.idleTimer.Stop()
				pc.timerOn = false
			}
			idle = append(idle, pc)
			h.idle[i] = nil
		}
		h.idle = h.idle[:0]
	}
	c.mu.Unlock()
	for _, pc := range idle {
		pc.close()
	}
}
