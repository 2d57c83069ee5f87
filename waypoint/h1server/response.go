package h1server

import (
	"bufio"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// response is the http.ResponseWriter of one request.
type response struct {
	sc     *serverConn
	req    *http.Request
	body   requestBody
	header http.Header

	status        int   // the final status; 0 until WriteHeader
	contentLength int64 // from the handler's Content-Length; -1 without one
	written       int64 // body bytes written
	err           error // the first write error

	// cmu orders "100 Continue", sent by whoever reads the body first,
	// before the headers; it guards the two fields below.
	cmu           sync.Mutex
	headerSent    bool // status line and headers are in the buffer
	wroteContinue bool

	chunked        bool
	noBody         bool // HEAD, 1xx, 204, 304: writes are dropped or refused
	closeAfter     bool
	expectContinue bool // the client waits for 100 Continue before its body

	wantsClose, wants10KeepAlive bool
}

func (w *response) Header() http.Header { return w.header }

// WriteHeader records the status. An informational status (1xx but 101)
// is sent at once with the current headers.
func (w *response) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic("h1server: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if w.status != 0 || w.sc.hijacked {
		return
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		w.writeInformational(code)
		return
	}
	w.status = code
}

// writeContinue sends "100 Continue" unless it or the headers went out.
func (w *response) writeContinue() error {
	w.cmu.Lock()
	defer w.cmu.Unlock()
	if w.headerSent || w.wroteContinue {
		return nil
	}
	w.wroteContinue = true
	w.sc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	return w.sc.bw.Flush()
}

func (w *response) writeInformational(code int) {
	if code == http.StatusContinue {
		w.fail(w.writeContinue())
		return
	}
	bw := w.sc.bw
	writeStatusLine(bw, true, code)
	writeFields(bw, w.header, nil)
	bw.WriteString("\r\n")
	w.fail(bw.Flush())
}

func (w *response) Write(p []byte) (int, error) {
	if w.sc.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, w.err // the headers wait: an empty body may still get its length
	}
	if !w.headerSent {
		w.sendHeader(false)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.contentLength >= 0 && w.written+int64(len(p)) > w.contentLength {
		return 0, http.ErrContentLength
	}
	bw := w.sc.bw
	if w.chunked {
		bw.Write(strconv.AppendInt(w.sc.scratch[:0], int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if w.chunked && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	w.written += int64(n)
	w.fail(err)
	return n, err
}

// FlushError sends what is buffered, headers included.
func (w *response) FlushError() error {
	if w.sc.hijacked {
		return http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headerSent {
		w.sendHeader(false)
	}
	if w.err == nil {
		w.fail(w.sc.bw.Flush())
	}
	return w.err
}

func (w *response) Flush() { w.FlushError() }

// Hijack hands the connection to the handler: the reader holds what the
// client sent beyond the request header, the writer what was written
// (flushed first).
func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	sc := w.sc
	if sc.hijacked {
		return nil, nil, http.ErrHijacked
	}
	sc.watch.stop()
	if err := sc.bw.Flush(); err != nil {
		return nil, nil, err
	}
	sc.hijacked = true
	sc.c.SetDeadline(time.Time{})
	return sc.c, bufio.NewReadWriter(sc.c.br, sc.bw), nil
}

func (w *response) fail(err error) {
	if err != nil && w.err == nil {
		w.err = err
	}
}

// sendHeader writes the status line and headers into the buffer and
// settles the body's framing (net/http's chunkWriter.writeHeader). done:
// the handler returned without writing a body.
func (w *response) sendHeader(done bool) {
	w.cmu.Lock()
	defer w.cmu.Unlock()
	w.headerSent = true
	h, req, code := w.header, w.req, w.status
	isHEAD := req.Method == http.MethodHead
	bodyAllowed := code != http.StatusNoContent && code != http.StatusNotModified && code >= 200
	w.noBody = isHEAD || !bodyAllowed

	if cl := h.Get("Content-Length"); cl != "" {
		if v, err := strconv.ParseInt(cl, 10, 64); err == nil && v >= 0 {
			w.contentLength = v
		} else {
			delete(h, "Content-Length")
		}
	}
	te := h.Get("Transfer-Encoding")
	trailers := len(h["Trailer"]) > 0
	var extra [3]string // Content-Length, Transfer-Encoding, Connection as the server sets them
	if done && bodyAllowed && !isHEAD && te == "" && !trailers && w.contentLength < 0 {
		w.contentLength = 0
		extra[0] = "Content-Length: 0\r\n"
	}
	if te != "" && w.contentLength >= 0 && te != "identity" {
		delete(h, "Content-Length") // both: the transfer coding wins
		w.contentLength = -1
	}
	switch {
	case w.noBody:
	case w.contentLength >= 0:
	case req.ProtoAtLeast(1, 1) && te != "identity":
		w.chunked = true
		extra[1] = "Transfer-Encoding: chunked\r\n"
	default:
		w.closeAfter = true // the body ends with the connection
	}

	keepAlive10 := w.wants10KeepAlive && (isHEAD || w.contentLength >= 0 || !bodyAllowed)
	if !keepAlive10 && (!req.ProtoAtLeast(1, 1) || w.wantsClose) {
		w.closeAfter = true
	}
	handlerClose := hasToken(h.Get("Connection"), "close")
	if handlerClose || w.sc.srv.shutdown.Load() {
		w.closeAfter = true
	}
	if w.expectContinue && !w.wroteContinue {
		w.closeAfter = true // its body may or may not follow
	}
	skipConnection := false
	switch {
	case w.closeAfter && !handlerClose:
		skipConnection = true
		if req.ProtoAtLeast(1, 1) {
			extra[2] = "Connection: close\r\n"
		}
	case keepAlive10:
		if _, ok := h["Connection"]; !ok {
			extra[2] = "Connection: keep-alive\r\n"
		}
	}
	bw := w.sc.bw
	writeStatusLine(bw, req.ProtoAtLeast(1, 1), code)
	writeFields(bw, h, func(k string) bool {
		switch k {
		case "Transfer-Encoding":
			return true
		case "Content-Length":
			return w.chunked || code == http.StatusNoContent || code < 200 || code == http.StatusNotModified
		case "Connection":
			return skipConnection
		case "Content-Type":
			return code == http.StatusNotModified
		}
		return strings.HasPrefix(k, http.TrailerPrefix)
	})
	for _, f := range extra {
		bw.WriteString(f)
	}
	if _, ok := h["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.WriteString(date())
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
}

// finish completes the response after the handler: headers if none went
// out, the last chunk and trailers, the flush; then what the handler left
// of the request body is discarded when the connection is to be kept.
func (w *response) finish() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headerSent {
		w.sendHeader(true)
	}
	bw := w.sc.bw
	if w.chunked {
		bw.WriteString("0\r\n")
		w.writeTrailers()
		bw.WriteString("\r\n")
	}
	w.fail(bw.Flush())
	if !w.closeAfter && !w.body.discard() {
		w.closeAfter = true
	}
	if !w.body.done.Load() {
		w.sc.unread = true
	}
}

// writeTrailers writes the declared trailers and those set with
// http.TrailerPrefix.
func (w *response) writeTrailers() {
	bw := w.sc.bw
	for _, v := range w.header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			k = http.CanonicalHeaderKey(textproto.TrimString(k))
			writeField(bw, k, w.header[k])
		}
	}
	for k, vv := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			writeField(bw, name, vv)
		}
	}
}

// keepConn reports whether the connection may serve another request.
func (w *response) keepConn() bool {
	switch {
	case w.closeAfter, w.err != nil:
		return false
	case !w.noBody && w.contentLength >= 0 && w.written != w.contentLength:
		return false // the body fell short: the client would be out of step
	}
	return true
}

// statusLines holds "NNN Reason\r\n" for the codes net/http names.
var statusLines = func() (lines [600]string) {
	for code := 100; code < len(lines); code++ {
		if text := http.StatusText(code); text != "" {
			lines[code] = strconv.Itoa(code) + " " + text + "\r\n"
		}
	}
	return lines
}()

func writeStatusLine(bw *bufio.Writer, is11 bool, code int) {
	if is11 {
		bw.WriteString("HTTP/1.1 ")
	} else {
		bw.WriteString("HTTP/1.0 ")
	}
	if code < len(statusLines) && statusLines[code] != "" {
		bw.WriteString(statusLines[code])
		return
	}
	c := strconv.Itoa(code)
	bw.WriteString(c + " status code " + c + "\r\n")
}

// writeFields writes h's fields but those skip names, in map order.
func writeFields(bw *bufio.Writer, h http.Header, skip func(string) bool) {
	for k, vv := range h {
		if skip != nil && skip(k) {
			continue
		}
		writeField(bw, k, vv)
	}
}

// newlines are what a field value must not carry into the response.
var newlines = strings.NewReplacer("\r", " ", "\n", " ")

// writeField writes one field line per value; a name that is not a token
// is dropped, and CR or LF in a value become spaces, so no value can
// start a field or a body of its own.
func writeField(bw *bufio.Writer, k string, vv []string) {
	if len(vv) == 0 || !httpguts.ValidHeaderFieldName(k) {
		return
	}
	for _, v := range vv {
		if strings.ContainsAny(v, "\r\n") {
			v = newlines.Replace(v)
		}
		bw.WriteString(k)
		bw.WriteString(": ")
		bw.WriteString(textproto.TrimString(v))
		bw.WriteString("\r\n")
	}
}

// dateNow caches the Date value for the current second.
var dateNow atomic.Pointer[dateValue]

type dateValue struct {
	sec int64
	s   string
}

func date() string {
	now := time.Now()
	if d := dateNow.Load(); d != nil && d.sec == now.Unix() {
		return d.s
	}
	d := &dateValue{sec: now.Unix(), s: now.UTC().Format(http.TimeFormat)}
	dateNow.Store(d)
	return d.s
}

var _ interface {
	http.ResponseWriter
	http.Flusher
	http.Hijacker
	FlushError() error
} = (*response)(nil)
