// Package h1server serves HTTP/1.x on connections handed to it one by one,
// each on the caller's goroutine: the waypoint's tunnels, which arrive as
// net.Conns already accepted and authorized. It is the server-side
// counterpart of waypoint/h1client and exists for the same reason: a
// request through [net/http.Server] costs a background read goroutine,
// three deadline changes, a cancellable context, a buffered chunk writer
// and a header clone, which together were an eighth of the waypoint's CPU.
//
// Requests are parsed with [http.ReadRequest] and checked as net/http's
// server checks them, with the same answers: header bytes beyond
// MaxHeaderBytes are 431; a transfer coding other than chunked is 501;
// a protocol other than HTTP/1.x is 505; an HTTP/1.1 request without a
// host, a malformed Host, a header name or value that is not a valid
// token or field value, two Host headers, conflicting Content-Lengths and
// any other parse error are 400 — each with "Connection: close", after
// which the connection is closed. An Expect other than 100-continue is
// 417; "100 Continue" is sent when the handler first reads the body.
// Two differences, because [http.ReadRequest] drops the Host header
// before the checks can see it: with an absolute-form request line (whose
// authority is the request's host anyway, RFC 9112 §3.2.2) the Host
// header is not checked, missing or malformed; and an empty Host header
// is 400 like a missing one (an "http" URI with an empty host is invalid,
// RFC 9110 §4.2.1; net/http serves it).
//
// # Responses
//
// The status line and headers are written when the handler first writes
// the body, flushes, or returns, so header changes made between
// WriteHeader and that point still take effect (net/http ignores them).
// The body's framing follows net/http's rules: a valid Content-Length set
// by the handler is used (writing more is [http.ErrContentLength],
// writing less closes the connection); without one an HTTP/1.1 response is
// chunked, with trailers (the "Trailer" header and [http.TrailerPrefix]),
// and an HTTP/1.0 one ends with the connection; a handler that writes
// nothing gets "Content-Length: 0". HEAD, 1xx, 204 and 304 responses have
// no body. A Date header is added when the handler sets none. Content-Type
// is never sniffed. Header values have CR and LF replaced by spaces, and
// fields whose name is not a token are dropped, so a handler cannot split
// the response.
//
// # Connections
//
// A connection is kept for the next request unless the request or the
// response asked to close it (Connection: close; HTTP/1.0 without
// keep-alive, or whose response has no length), the body could not be
// framed, a write failed, the server is shutting down, or the handler
// left more than 256 KiB of the request body unread (what it left is
// otherwise read and discarded, as net/http does). A request whose client
// still waits for "100 Continue" is answered with "Connection: close".
//
// Waiting for a request is bounded by IdleTimeout, and reading its header
// by ReadHeaderTimeout (connection deadlines, as in net/http).
//
// # Client disconnects
//
// The request's context is cancelled when the client goes away while the
// handler runs. Instead of a read per request, the connection is watched
// only for requests still running after watchDelay whose body has been
// read: a background read then waits for the next bytes, and an end of
// stream or error cancels the context (a pipelined request's bytes are
// kept). So the common short request costs one timer reset.
//
// # Handlers
//
// The ResponseWriter supports [http.Flusher] (and FlushError) and
// [http.Hijacker]; [http.ResponseController] reaches both. A handler
// that panics with [http.ErrAbortHandler] has its connection closed
// quietly; any other panic is logged with its stack, and the connection
// is closed too.
package h1server
