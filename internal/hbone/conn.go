package hbone

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Settings this implementation advertises (see the package doc).
const (
	initialStreamWindow = 4 << 20
	initialConnWindow   = 16 << 20
	maxFrameSize        = 1 << 20
	maxHeaderListSize   = 16 << 10
	maxConcurrentStream = 100

	// defaultPeerWindow and defaultPeerFrame are RFC 9113 defaults, in force
	// until the peer's SETTINGS arrive.
	defaultPeerWindow = 65535
	defaultPeerFrame  = 16384

	// creditThreshold: receive credit is returned once this fraction of a
	// window has been consumed, so a fast sender never stalls on updates.
	creditDivisor = 4

	maxWindow = 1<<31 - 1
)

// Abuse limits per connection; exceeding one ends the connection with
// ENHANCE_YOUR_CALM.
const (
	limitWindow     = time.Second
	maxPeerResets   = 200 // client resets of open streams (rapid reset)
	maxPeerPings    = 100
	maxPeerSettings = 100

	// After a protocol error, how long and how much we read before closing.
	lingerTime  = time.Second
	lingerBytes = 1 << 20
)

var clientPreface = []byte(http2.ClientPreface)

// role says which end of the HTTP/2 connection a conn is.
type role uint8

const (
	roleClient role = iota
	roleServer
)

// handler receives new streams opened by the peer (server side only).
type handler interface {
	// handleStream is called on the read loop; it must not block.
	handleStream(c *conn, s *stream, fields []hpack.HeaderField, endStream bool)
}

// connError is a connection-level protocol error: GOAWAY with code, then close.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string {
	return fmt.Sprintf("hbone: connection error %v: %s", e.code, e.reason)
}

// errConnClosed is returned for streams of a connection that closed cleanly.
var errConnClosed = errors.New("hbone: tunnel connection closed")

// conn is one HTTP/2 connection carrying CONNECT streams. One goroutine
// (readLoop) reads frames; stream goroutines write frames under wmu.
type conn struct {
	nc      net.Conn
	batch   *batchConn // under nc when nc is TLS; nil otherwise
	role    role
	handler handler
	br      io.Reader     // nc, buffered unless nc buffers itself (see newConn)
	fr      *http2.Framer // read side; used only by readLoop

	idleTimeout time.Duration
	retireAt    time.Time   // client: open no streams after this (certificate half-life)
	onIdle      func(*conn) // called when idle for idleTimeout; nil closes
	onClose     func(*conn)

	wmu  sync.Mutex // guards writes to nc and the fields below
	wfr  *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu             sync.Mutex // guards the fields below
	sendCond       sync.Cond  // signalled when send windows grow or state changes
	streams        map[uint32]*stream
	sendWindow     int64 // connection-level send window
	recvWindow     int64 // what the peer may still send on the connection
	recvUnacked    int64 // consumed, not yet returned with WINDOW_UPDATE
	peerWindow     int64 // peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame   int
	peerMaxStreams int
	nextStreamID   uint32 // client: next id to open
	maxPeerID      uint32 // server: highest stream id the peer opened
	active         int    // streams counted against the concurrency limit
	goingAway      bool   // no new streams (GOAWAY sent or received)
	lastGoodID     uint32 // client: streams above this were refused by GOAWAY
	err            error  // set once the connection is dead
	idleTimer      *time.Timer
	lastIdle       time.Time
	resets         rateCounter
	pings          rateCounter
	settings       rateCounter
	// peerConnectProtocol: the peer's SETTINGS_ENABLE_CONNECT_PROTOCOL is
	// 1 (RFC 8441 §3); once on it stays on.
	peerConnectProtocol bool
	peerSettingsApplied bool // peerSettings is closed

	peerSettings chan struct{} // closed when the peer's first SETTINGS is applied
	done         chan struct{} // closed when readLoop exits
}

// readBufSize is the read buffer of a connection that is not TLS (tests,
// ServeConn). A TLS connection gets none: it holds the current record's
// plaintext itself and hands it out without a system call, so frames are
// read from it directly and an idle tunnel connection keeps no read buffer
// of ours (a bufio.Reader would hold 17 KiB on each, idle or not).
const readBufSize = 16<<10 + 1<<10

func newConn(nc net.Conn, batch *batchConn, r role, h handler, idle time.Duration) *conn {
	var br io.Reader = nc
	if _, ok := nc.(*tls.Conn); !ok {
		br = bufio.NewReaderSize(nc, readBufSize)
	}
	c := &conn{
		nc:             nc,
		batch:          batch,
		role:           r,
		handler:        h,
		br:             br,
		idleTimeout:    idle,
		streams:        make(map[uint32]*stream),
		sendWindow:     defaultPeerWindow,
		recvWindow:     initialConnWindow,
		peerWindow:     defaultPeerWindow,
		peerMaxFrame:   defaultPeerFrame,
		peerMaxStreams: maxConcurrentStream,
		nextStreamID:   1,
		peerSettings:   make(chan struct{}),
		done:           make(chan struct{}),
	}
	c.sendCond.L = &c.mu
	c.fr = http2.NewFramer(nil, c.br)
	c.fr.SetMaxReadFrameSize(maxFrameSize)
	c.fr.MaxHeaderListSize = maxHeaderListSize
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.wfr = http2.NewFramer(nc, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// start writes our preface and settings. The server reads the client preface
// first (within the handshake deadline set by the caller).
func (c *conn) start() error {
	if c.role == roleServer {
		buf := make([]byte, len(clientPreface))
		if _, err := io.ReadFull(c.br, buf); err != nil {
			return fmt.Errorf("hbone: read client preface: %w", err)
		}
		if !bytes.Equal(buf, clientPreface) {
			return errors.New("hbone: bad client preface")
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.role == roleClient {
		if _, err := c.nc.Write(clientPreface); err != nil {
			return fmt.Errorf("hbone: write preface: %w", err)
		}
	}
	settings := []http2.Setting{
		{ID: http2.SettingEnablePush, Val: 0},
		{ID: http2.SettingInitialWindowSize, Val: initialStreamWindow},
		{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
	}
	if c.role == roleServer {
		settings = append(settings,
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: maxConcurrentStream},
			http2.Setting{ID: http2.SettingEnableConnectProtocol, Val: 1})
	}
	if err := c.wfr.WriteSettings(settings...); err != nil {
		return fmt.Errorf("hbone: write settings: %w", err)
	}
	if err := c.wfr.WriteWindowUpdate(0, initialConnWindow-defaultPeerWindow); err != nil {
		return fmt.Errorf("hbone: write window update: %w", err)
	}
	return nil
}

// newStreamLocked registers a stream. c.mu must be held.
func (c *conn) newStreamLocked(id uint32) *stream {
	s := &stream{c: c, id: id, sendWindow: c.peerWindow, recvWindow: initialStreamWindow}
	s.cond.L = &s.mu
	if c.role == roleClient {
		s.resp = &reply{ready: make(chan struct{})}
	}
	c.streams[id] = s
	return s
}

// maybeRetire removes s once both directions have ended.
func (c *conn) maybeRetire(s *stream) {
	if s.finished() {
		c.retire(s)
	}
}

// retire forgets a stream. On the client it also frees its concurrency slot;
// the server frees slots when the handler returns (see release).
func (c *conn) retire(s *stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.streams[s.id] != s {
		return
	}
	delete(c.streams, s.id)
	if c.role == roleClient {
		c.releaseLocked()
	}
}

// release frees one concurrency slot.
func (c *conn) release() {
	c.mu.Lock()
	c.releaseLocked()
	c.mu.Unlock()
}

func (c *conn) releaseLocked() {
	c.active--
	if c.active == 0 && c.err == nil && c.idleTimeout > 0 {
		c.lastIdle = time.Now()
		if c.idleTimer == nil {
			c.idleTimer = time.AfterFunc(c.idleTimeout, c.checkIdle)
		} else {
			c.idleTimer.Reset(c.idleTimeout)
		}
	}
}

// tryReserve takes a stream slot if the connection can open another stream.
func (c *conn) tryReserve(limit int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || c.goingAway || c.active >= min(limit, c.peerMaxStreams) {
		return false
	}
	if !c.retireAt.IsZero() && time.Now().After(c.retireAt) {
		c.goingAway = true
		if c.active == 0 {
			go c.Close()
		}
		return false
	}
	c.active++
	c.stopIdleLocked()
	return true
}

// armIdle starts the idle clock of a connection that has no streams yet.
func (c *conn) armIdle() {
	c.mu.Lock()
	c.active++
	c.releaseLocked()
	c.mu.Unlock()
}

func (c *conn) stopIdleLocked() {
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
}

func (c *conn) checkIdle() {
	c.mu.Lock()
	idle := c.active == 0 && c.err == nil && time.Since(c.lastIdle) >= c.idleTimeout
	if idle {
		c.goingAway = true
	}
	c.mu.Unlock()
	if !idle {
		return
	}
	if c.onIdle != nil {
		c.onIdle(c)
	}
	c.writeGoAway(http2.ErrCodeNo, "idle")
	c.fail(errConnClosed)
}

// reserveSend blocks until s may send at least one byte and returns how many
// (at most want), debiting both windows.
func (c *conn) reserveSend(s *stream, want int) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.err != nil {
			return 0, c.err
		}
		if err := s.sendErrLocked(); err != nil {
			return 0, err
		}
		n := int64(min(want, c.peerMaxFrame))
		n = min(n, s.sendWindow, c.sendWindow)
		if n > 0 {
			s.sendWindow -= n
			c.sendWindow -= n
			return int(n), nil
		}
		c.sendCond.Wait()
	}
}

// returnCredit gives n consumed bytes back to the peer's windows, sending
// WINDOW_UPDATE frames once enough has accumulated. s may be nil.
func (c *conn) returnCredit(s *stream, n int) {
	var streamInc int64
	if s != nil {
		streamInc = s.addCredit(n)
	}
	c.mu.Lock()
	c.recvUnacked += int64(n)
	var connInc int64
	if c.recvUnacked >= initialConnWindow/creditDivisor {
		connInc, c.recvUnacked = c.recvUnacked, 0
		c.recvWindow += connInc
	}
	c.mu.Unlock()
	if streamInc == 0 && connInc == 0 {
		return
	}
	c.writeControl(func(fr *http2.Framer) error {
		if streamInc > 0 {
			if err := fr.WriteWindowUpdate(s.id, uint32(streamInc)); err != nil {
				return err
			}
		}
		if connInc > 0 {
			return fr.WriteWindowUpdate(0, uint32(connInc))
		}
		return nil
	})
}

// writeControl writes small frames under the write lock.
func (c *conn) writeControl(write func(*http2.Framer) error) error {
	c.wmu.Lock()
	err := write(c.wfr)
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("hbone: write: %w", err))
	}
	return err
}

// writeHeaders encodes and writes one HEADERS frame.
func (c *conn) writeHeaders(id uint32, fields []hpack.HeaderField, endStream bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeHeadersLocked(id, fields, endStream)
}

// writeHeadersLocked writes a header block; c.wmu must be held.
func (c *conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, endStream bool) error {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	if c.hbuf.Len() > defaultPeerFrame {
		// The encoder's table already changed: the connection can't go on.
		err := errors.New("hbone: header block too large")
		c.fail(err)
		return err
	}
	err := c.wfr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: c.hbuf.Bytes(), EndStream: endStream, EndHeaders: true,
	})
	if err != nil {
		c.fail(fmt.Errorf("hbone: write: %w", err))
	}
	return err
}

// writeDataFrame writes one DATA frame whose 9-byte header goes in
// frame[:9] and whose payload is frame[9:].
func (c *conn) writeDataFrame(id uint32, frame []byte, endStream bool) error {
	n := len(frame) - frameHeaderLen
	frame[0], frame[1], frame[2] = byte(n>>16), byte(n>>8), byte(n)
	frame[3] = byte(http2.FrameData)
	frame[4] = 0
	if endStream {
		frame[4] = byte(http2.FlagDataEndStream)
	}
	frame[5], frame[6], frame[7], frame[8] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
	c.wmu.Lock()
	var err error
	if c.batch != nil && len(frame) > 16<<10 {
		c.batch.begin()
		_, err = c.nc.Write(frame)
		if ferr := c.batch.flush(); err == nil {
			err = ferr
		}
	} else {
		_, err = c.nc.Write(frame)
	}
	c.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("hbone: write: %w", err)
		c.fail(err)
	}
	return err
}

func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	if s, ok := c.streamByID(id); ok {
		s.abort(fmt.Errorf("hbone: stream reset: %v", code))
		c.retire(s)
	}
	c.writeControl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
}

func (c *conn) writeGoAway(code http2.ErrCode, reason string) {
	c.mu.Lock()
	c.goingAway = true
	last := c.maxPeerID
	c.mu.Unlock()
	c.wmu.Lock()
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.wfr.WriteGoAway(last, code, []byte(reason))
	c.nc.SetWriteDeadline(time.Time{})
	c.wmu.Unlock()
}

// fail marks the connection dead, closes the socket and wakes every stream.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	streams := make([]*stream, 0, len(c.streams))
	for _, s := range c.streams {
		streams = append(streams, s)
	}
	c.stopIdleLocked()
	c.sendCond.Broadcast()
	c.mu.Unlock()
	c.nc.Close()
	for _, s := range streams {
		s.abort(err)
	}
	if c.onClose != nil {
		c.onClose(c)
	}
}

// Close ends the connection at once.
func (c *conn) Close() error {
	c.fail(errConnClosed)
	return nil
}

// retireWhenIdle stops new streams and closes the connection once its open
// streams have ended.
func (c *conn) retireWhenIdle() {
	c.mu.Lock()
	c.goingAway = true
	idle := c.active == 0
	if !idle {
		c.idleTimeout = time.Millisecond // checkIdle closes it when the last stream ends
	}
	c.mu.Unlock()
	if idle {
		c.Close()
	}
}

// shutdown stops new streams with GOAWAY; existing streams carry on.
func (c *conn) shutdown() {
	c.writeGoAway(http2.ErrCodeNo, "shutting down")
}

// idleNow reports whether the connection has no streams.
func (c *conn) idleNow() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active == 0
}

// rateCounter counts events in fixed one-second windows.
type rateCounter struct {
	start time.Time
	n     int
}

// allow counts one event and reports whether the window's budget still holds.
func (r *rateCounter) allow(budget int) bool {
	now := time.Now()
	if now.Sub(r.start) > limitWindow {
		r.start, r.n = now, 0
	}
	r.n++
	return r.n <= budget
}
