package h1server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Server serves HTTP/1.x connections with Handler. Its zero value is not
// usable: Handler is required.
type Server struct {
	Handler http.Handler
	// MaxHeaderBytes bounds a request's line and headers; default 1 MiB.
	MaxHeaderBytes int
	// ReadHeaderTimeout bounds reading a request's header once its first
	// bytes arrived; IdleTimeout the wait for the next request. Zero: none.
	ReadHeaderTimeout, IdleTimeout time.Duration
	// Logger receives handler panics; default slog.Default().
	Logger *slog.Logger

	mu       sync.Mutex
	conns    map[*Conn]struct{}
	shutdown atomic.Bool
}

// The states of a connection, for Shutdown.
const (
	stateActive int32 = iota // reading or serving a request
	stateIdle                // waiting for the next request
	stateClosed              // closed by Shutdown or Close
)

// Conn is a connection to serve. Reads go through its buffered reader, so
// bytes peeked to choose a protocol ([Conn.Reader]) are not lost when the
// connection is served by something else.
type Conn struct {
	net.Conn
	lim   limitReader
	br    *bufio.Reader
	state atomic.Int32
}

// NewConn wraps c for serving.
func NewConn(c net.Conn) *Conn {
	hc := &Conn{Conn: c}
	hc.lim = limitReader{r: c, n: noLimit}
	hc.br = bufio.NewReaderSize(&hc.lim, bufSize)
	return hc
}

// Reader is the connection's buffered reader: peek through it to decide
// how to serve the connection.
func (c *Conn) Reader() *bufio.Reader { return c.br }

// Read reads through the buffered reader.
func (c *Conn) Read(p []byte) (int, error) { return c.br.Read(p) }

// CloseWrite half-closes the connection, or closes it when it cannot.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

const (
	bufSize = 4 << 10
	noLimit = 1<<63 - 1
	// maxPostHandlerReadBytes is how much unread request body is read
	// and discarded after the handler to keep the connection (net/http's).
	maxPostHandlerReadBytes = 256 << 10
)

// limitReader bounds the bytes read while a request header is read.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// ServeConn serves c's requests in turn until it closes, the client or a
// response asks to, or the server shuts down; then it closes c (unless a
// handler hijacked it). ctx is the base of the requests' contexts: its
// values reach the handler, and its end cancels them.
func (s *Server) ServeConn(ctx context.Context, c *Conn) {
	if !s.track(c) {
		c.Close()
		return
	}
	defer s.untrack(c)
	sc := &serverConn{srv: s, c: c, ctx: ctx, remote: c.RemoteAddr().String()}
	sc.watch.sc = sc
	if !sc.serve() {
		return // hijacked
	}
	if sc.unread {
		lingeringClose(c)
	}
	c.Close()
}

// watchDelay is how long a request runs before its connection is watched
// for the client going away (a variable for tests).
var watchDelay = 50 * time.Millisecond

// lingerTimeout bounds lingeringClose.
const lingerTimeout = 500 * time.Millisecond

// lingeringClose half-closes c and reads what the client still sends,
// until it closes too or lingerTimeout passes: closing a socket with
// unread bytes resets the connection, and the reset can destroy the
// response before the client reads it (net/http's closeWriteAndWait).
func lingeringClose(c *Conn) {
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, c.Conn)
}

func (s *Server) track(c *Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown.Load() {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*Conn]struct{})
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Shutdown stops taking connections and requests: idle connections are
// closed now, and the others after their current response (which carries
// "Connection: close"). It returns when all are closed, or with ctx's
// error when ctx ends first (Close then ends the rest).
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdown.Store(true)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.closeIdle() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Close closes every connection now.
func (s *Server) Close() {
	s.shutdown.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.state.Store(stateClosed)
		c.Close()
	}
}

// closeIdle closes the idle connections and reports how many are left.
func (s *Server) closeIdle() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	left := 0
	for c := range s.conns {
		if c.state.CompareAndSwap(stateIdle, stateClosed) {
			c.Close()
			continue
		}
		if c.state.Load() != stateClosed {
			left++
		}
	}
	return left
}

func (s *Server) maxHeaderBytes() int64 {
	if s.MaxHeaderBytes > 0 {
		return int64(s.MaxHeaderBytes)
	}
	return http.DefaultMaxHeaderBytes
}

// serverConn is one connection being served.
type serverConn struct {
	srv    *Server
	c      *Conn
	ctx    context.Context
	remote string
	bw     *bufio.Writer
	watch  watcher

	lastMethod string
	hijacked   bool
	dead       bool // the watcher saw the client go; nothing more to read
	unread     bool // closing with the client's bytes unread: linger
	scratch    [16]byte
}

var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}

// serve runs the request loop; false when a handler hijacked the
// connection.
func (sc *serverConn) serve() bool {
	c := sc.c
	sc.bw = writers.Get().(*bufio.Writer)
	sc.bw.Reset(c.Conn)
	defer func() {
		if !sc.hijacked {
			sc.bw.Reset(nil)
			writers.Put(sc.bw)
		}
	}()
	for first := true; ; first = false {
		if !sc.waitForRequest(first) {
			return true
		}
		if !first {
			sc.limitHeader()
		}
		req, err := sc.readRequest()
		if sc.srv.shutdown.Load() {
			return true
		}
		if err != nil {
			sc.replyError(err)
			return true
		}
		if !sc.serveRequest(req) {
			return !sc.hijacked
		}
	}
}

// waitForRequest waits for a request's first bytes, as an idle
// connection Shutdown may close: up to ReadHeaderTimeout for the first
// request, whose header it also bounds (from the connection's start, as
// net/http), else up to IdleTimeout.
func (sc *serverConn) waitForRequest(first bool) bool {
	c, wait, peek := sc.c, sc.srv.IdleTimeout, 4
	if first {
		// One byte: a connection that ends within its first request is
		// answered 400. Later, as net/http, one that ends with fewer than
		// four bytes is closed without an answer.
		wait, peek = sc.srv.ReadHeaderTimeout, 1
	}
	if wait > 0 {
		c.SetReadDeadline(time.Now().Add(wait))
	} else {
		c.SetReadDeadline(time.Time{})
	}
	if !c.state.CompareAndSwap(stateActive, stateIdle) || sc.srv.shutdown.Load() {
		return false
	}
	if first {
		sc.limitHeader() // the first peek reads into the header already
	}
	if _, err := c.br.Peek(peek); err != nil {
		return false
	}
	if !c.state.CompareAndSwap(stateIdle, stateActive) {
		return false // closed by Shutdown meanwhile
	}
	if !first {
		if d := sc.srv.ReadHeaderTimeout; d > 0 {
			c.SetReadDeadline(time.Now().Add(d))
		} else {
			c.SetReadDeadline(time.Time{})
		}
	}
	return true
}

// statusError is a request refused before its handler, with its answer.
type statusError struct {
	code int
	text string
}

func (e statusError) Error() string { return e.text }

var errTooLarge = statusError{http.StatusRequestHeaderFieldsTooLarge, ""}

// limitHeader bounds what is read from the connection until the request
// header is read: MaxHeaderBytes and one buffer, as net/http.
func (sc *serverConn) limitHeader() {
	sc.c.lim.n = sc.srv.maxHeaderBytes() + bufSize
}

// readRequest reads and checks one request header, as net/http's server
// does (conn.readRequest).
func (sc *serverConn) readRequest() (*http.Request, error) {
	c := sc.c
	if sc.lastMethod == "POST" {
		// RFC 9112 §2.2: tolerate a CRLF an old client sent after a body.
		peek, _ := c.br.Peek(4)
		c.br.Discard(leadingCRLF(peek))
	}
	req, err := http.ReadRequest(c.br)
	// As net/http, any error once the whole limit has been read is 431,
	// even one in what was read before it.
	hit := c.lim.n <= 0
	c.lim.n = noLimit
	if err != nil {
		if hit {
			return nil, errTooLarge
		}
		return nil, err
	}
	c.SetReadDeadline(time.Time{})
	sc.lastMethod = req.Method
	switch {
	case req.ProtoMajor != 1:
		return nil, statusError{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
	case req.ProtoAtLeast(1, 1) && req.Host == "" && req.Method != "CONNECT":
		return nil, statusError{http.StatusBadRequest, "missing required Host header"}
	case req.URL.Host == "" && !httpguts.ValidHostHeader(req.Host):
		// The Host header's; an absolute-form target's authority is not
		// checked, as in net/http.
		return nil, statusError{http.StatusBadRequest, "malformed Host header"}
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, statusError{http.StatusBadRequest, "invalid header name"}
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, statusError{http.StatusBadRequest, "invalid header value"}
			}
		}
	}
	req.RemoteAddr = sc.remote
	return req, nil
}

func leadingCRLF(b []byte) int {
	n := 0
	for _, c := range b {
		if c != '\r' && c != '\n' {
			break
		}
		n++
	}
	return n
}

// replyError answers a request that could not be read, as net/http does,
// or nothing when the connection failed or ended.
func (sc *serverConn) replyError(err error) {
	const headers = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	var se statusError
	switch {
	case errors.Is(err, errTooLarge):
		const msg = "431 Request Header Fields Too Large"
		io.WriteString(sc.c.Conn, "HTTP/1.1 "+msg+headers+msg)
		sc.unread = true
	case isUnsupportedTE(err):
		// RFC 9112 §6.1: a coding the server does not understand is 501.
		// Its name is not echoed.
		io.WriteString(sc.c.Conn, "HTTP/1.1 501 Not Implemented"+headers+"Unsupported transfer encoding")
	case isNetReadError(err):
	case errors.As(err, &se):
		status := fmt.Sprintf("%d %s: %s", se.code, http.StatusText(se.code), se.text)
		io.WriteString(sc.c.Conn, "HTTP/1.1 "+status+headers+status)
	default:
		const msg = "400 Bad Request"
		io.WriteString(sc.c.Conn, "HTTP/1.1 "+msg+headers+msg)
	}
}

// isUnsupportedTE reports whether err is http.ReadRequest's refusal of a
// Transfer-Encoding (its type is unexported; these are its two texts).
func isUnsupportedTE(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "unsupported transfer encoding") || strings.HasPrefix(msg, "too many transfer encodings")
}

// isNetReadError: the connection ended or failed before a request began
// (net/http's isCommonNetReadError), answered with nothing. A request cut
// short (io.ErrUnexpectedEOF) is answered 400.
func isNetReadError(err error) bool {
	if err == io.EOF {
		return true
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return true
	}
	oe, ok := err.(*net.OpError)
	return ok && oe.Op == "read"
}

// serveRequest runs the handler for req and finishes its response; false
// when the connection is not to be reused.
func (sc *serverConn) serveRequest(req *http.Request) bool {
	w := &response{sc: sc, req: req, contentLength: -1, header: make(http.Header)}
	conn := req.Header.Get("Connection")
	w.wantsClose = req.Close || hasToken(conn, "close")
	w.wants10KeepAlive = req.ProtoMajor == 1 && req.ProtoMinor == 0 && hasToken(conn, "keep-alive")

	w.body.rc, w.body.w, w.body.parsed = req.Body, w, req
	w.body.done.Store(req.Body == http.NoBody)
	if expect := req.Header.Get("Expect"); expect != "" {
		if !hasToken(expect, "100-continue") {
			w.header.Set("Connection", "close")
			w.WriteHeader(http.StatusExpectationFailed)
			w.finish()
			return false
		}
		if req.ProtoAtLeast(1, 1) && req.ContentLength != 0 {
			w.expectContinue = true
		}
	}
	req.Body = &w.body

	ctx, cancel := context.WithCancelCause(sc.ctx)
	defer cancel(nil)
	req = req.WithContext(ctx)
	w.req = req
	sc.watch.arm(cancel, &w.body)
	ok := sc.runHandler(w, req)
	sc.watch.stop()
	if sc.hijacked {
		return false
	}
	if !ok {
		return false
	}
	w.finish()
	return w.keepConn() && !sc.dead
}

// hasToken reports whether v holds token, case-insensitively, between
// the ends of v, spaces, tabs or commas: net/http's looser reading of the
// first Connection header, which decides keep-alive there and so here.
func hasToken(v, token string) bool {
	for i := 0; i+len(token) <= len(v); i++ {
		end := i + len(token)
		if (i == 0 || isTokenBoundary(v[i-1])) && (end == len(v) || isTokenBoundary(v[end])) &&
			strings.EqualFold(v[i:end], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }

// runHandler calls the handler; false when it panicked.
func (sc *serverConn) runHandler(w *response, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			if v == http.ErrAbortHandler {
				return
			}
			buf := make([]byte, 64<<10)
			buf = buf[:runtime.Stack(buf, false)]
			sc.srv.logger().Error("http: panic serving request", "remote", sc.remote, "panic", v, "stack", string(buf))
		}
	}()
	sc.srv.Handler.ServeHTTP(w, req)
	return true
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// requestBody is a request's body as the handler sees it. Close does not
// drain what is left (finish decides that), and reading first sends
// "100 Continue" to a client that waits for it.
type requestBody struct {
	rc io.ReadCloser
	w  *response
	// parsed is the request as http.ReadRequest returned it, before
	// WithContext: at the end of a chunked body rc sets its Trailer when
	// the header declared none.
	parsed *http.Request

	mu     sync.Mutex  // serializes reads
	done   atomic.Bool // io.EOF seen: the connection's next bytes are the next request's
	closed atomic.Bool
}

func (b *requestBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done.Load() {
		return 0, io.EOF
	}
	if b.w.expectContinue {
		if err := b.w.writeContinue(); err != nil {
			return 0, err
		}
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.sawEOF()
	}
	return n, err
}

// sawEOF marks the body read and hands the handler's request the
// trailers that arrived undeclared (a declared Trailer map is shared).
func (b *requestBody) sawEOF() {
	if b.w.req.Trailer == nil {
		b.w.req.Trailer = b.parsed.Trailer
	}
	b.done.Store(true)
}

func (b *requestBody) Close() error {
	b.closed.Store(true)
	return nil
}

// discard reads what the handler left of the body, up to
// maxPostHandlerReadBytes; false when the connection cannot be kept for
// the next request (too much left, or a read failed).
func (b *requestBody) discard() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done.Load() {
		return true
	}
	if _, err := io.CopyN(io.Discard, b.rc, maxPostHandlerReadBytes+1); err == io.EOF {
		b.sawEOF()
	}
	return b.done.Load()
}

// watcher cancels a running request's context when its client goes away,
// watching the connection only once the request has run for watchDelay
// with its body read (package doc).
type watcher struct {
	sc     *serverConn
	timer  *time.Timer
	mu     sync.Mutex
	cancel context.CancelCauseFunc
	body   *requestBody
	armed  bool
	read   chan struct{} // closed when a background read returns; nil if none
}

// errClientGone is the cause of a request's context cancelled because its
// client went away.
var errClientGone = errors.New("client disconnected")

// aLongTimeAgo is a deadline that interrupts a blocked read now.
var aLongTimeAgo = time.Unix(1, 0)

func (w *watcher) arm(cancel context.CancelCauseFunc, body *requestBody) {
	w.mu.Lock()
	w.cancel, w.body, w.armed = cancel, body, true
	w.mu.Unlock()
	if w.timer == nil {
		w.timer = time.AfterFunc(watchDelay, w.fire)
	} else {
		w.timer.Reset(watchDelay)
	}
}

// fire starts the background read. The timer may fire late, for a
// request already finished: it then finds the watch unarmed, or armed for
// the next request, which it then watches early. One read at a time: a
// second one on the same reader would race it.
func (w *watcher) fire() {
	w.mu.Lock()
	if !w.armed || w.read != nil {
		w.mu.Unlock()
		return
	}
	if !w.body.done.Load() {
		w.timer.Reset(watchDelay) // the handler is still reading the body
		w.mu.Unlock()
		return
	}
	read := make(chan struct{})
	w.read = read
	cancel := w.cancel
	w.mu.Unlock()
	defer close(read)
	// Bytes are a pipelined request, kept in the reader; a timeout is
	// stop's; anything else is the client gone.
	_, err := w.sc.c.br.Peek(1)
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		w.sc.dead = true
		cancel(errClientGone)
	}
}

// stop ends the watch of the request that finished, waiting for a
// background read to return.
func (w *watcher) stop() {
	w.mu.Lock()
	w.armed = false
	read := w.read
	w.read = nil
	w.mu.Unlock()
	w.timer.Stop()
	if read == nil {
		return
	}
	w.sc.c.SetReadDeadline(aLongTimeAgo)
	<-read
	w.sc.c.SetReadDeadline(time.Time{})
}
