// Package h1client is a synchronous HTTP/1.1 client for the waypoint's
// upstream requests: [Client.RoundTrip] writes the request and reads the
// response on the caller's goroutine, over keep-alive connections pooled
// per address. Unlike [net/http.Transport] it runs no read or write loop
// per connection, so a request costs no goroutine hand-offs. It keeps no
// goroutine running: idle connections expire through [time.AfterFunc] and
// the request's context interrupts I/O through [context.AfterFunc].
//
// It handles what the waypoint sends it and no more: plain "http" URLs,
// requests whose body can be replayed (nil, [http.NoBody], or with
// GetBody set), no protocol upgrades (a 101 response is an error), no
// proxies, no compression, no TLS. The waypoint keeps http.Transport for
// streaming bodies and HTTP/2.
//
// # Connection life
//
// A connection serves one request at a time. The request is written with
// [http.Request.Write] into a 4 KiB bufio.Writer and flushed, so headers
// and a small body leave in one write; the response is read with
// [http.ReadResponse], skipping informational (1xx) responses. While
// headers are read the bytes pulled from the connection are bounded by
// MaxResponseHeaderBytes plus one read buffer; the body is unbounded.
//
// The connection goes back to the pool when the response body reaches
// io.EOF (at once when the response has no body), unless the request or
// the response asked to close it (Connection: close, HTTP/1.0, a body
// delimited by the connection's end) or the server sent bytes beyond the
// response. A body closed before EOF closes the connection: it is not
// drained. The pool is LIFO per address, at most MaxIdlePerHost deep, and
// closes a connection left idle for IdleTimeout (never, when it is negative).
//
// # Context
//
// The request's context bounds the whole exchange, up to the end of the
// body: when it is done the connection's deadline is set in the past,
// which interrupts a blocked write, the wait for the response and body
// reads alike. Such errors wrap ctx.Err(). A connection whose context
// fired is closed, never reused; one whose context did not fire never had
// a deadline set, so none needs clearing before reuse.
//
// # Stale connections
//
// With no read loop, a server closing an idle connection is noticed only
// by the next request on it. So when a request on a reused connection
// fails to be written, or its response fails before its first byte
// (EOF, connection reset, closed connection), the request is sent again,
// once, on a newly dialled connection, provided its body is replayable
// and its context has not fired. This holds for every method, POST
// included: the failure is almost always a server that closed the idle
// connection before our request reached it, which net/http.Transport's
// idle read loop would have noticed earlier. (A server that read the
// request and died before answering a byte sees it twice.) Errors on a
// new connection are never retried.
//
// Before writing, the trace's GotConn hook ([httptrace.ClientTrace]) is
// called with the connection as Dial returned it; the hook may set
// "Connection: close" in the request header, and the connection is then
// closed after the response.
package h1client
