package h1client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Defaults for the zero values of the Client's fields.
const (
	DefaultIdleTimeout            = 90 * time.Second
	DefaultMaxIdlePerHost         = 100
	DefaultMaxResponseHeaderBytes = 64 << 10
)

// Client is an http.RoundTripper for HTTP/1.1 over pooled keep-alive
// connections. A Client with Dial set is ready to use; set its fields
// before the first request and leave them alone afterwards. It is safe
// for concurrent use and must not be copied after first use.
type Client struct {
	// Dial opens a connection to addr, "host:port" from the request URL
	// (port 80 when the URL has none). Required. Its errors are returned
	// by RoundTrip unchanged.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// IdleTimeout closes a pooled connection left idle this long; zero
	// means DefaultIdleTimeout, a negative value never (an idle
	// connection then stays until the server closes it, MaxIdlePerHost
	// or CloseIdleConnections).
	IdleTimeout time.Duration
	// MaxIdlePerHost bounds the idle connections kept per address; zero
	// or less means DefaultMaxIdlePerHost.
	MaxIdlePerHost int
	// MaxResponseHeaderBytes bounds the response headers (1xx responses
	// included); zero or less means DefaultMaxResponseHeaderBytes. A
	// response over it fails and its connection is closed.
	MaxResponseHeaderBytes int64

	// mu guards hosts and the pool fields of its conns.
	mu    sync.Mutex
	hosts map[string]*host // by address, those with open connections
}

var (
	errUpgrade    = errors.New("h1client: 101 Switching Protocols: upgrades are not supported")
	errBodyClosed = errors.New("h1client: read on closed response body")
)

// RoundTrip sends req and returns its response, whose Body the caller
// must read to EOF or close to release the connection. req's body must be
// replayable for the request to be retried on a stale connection; it is
// closed in every case.
//
// req's context is the only time bound, up to the end of the body: give
// it a deadline.
func (c *Client) RoundTrip(req *http.Request) (*http.Response, error) {
	addr, err := targetAddr(req)
	if err == nil && c.Dial == nil {
		err = errors.New("h1client: Client.Dial is nil")
	}
	ctx := req.Context()
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("h1client: %w", ctx.Err())
	}
	if err != nil {
		closeRequestBody(req)
		return nil, err
	}

	pc, idleSince := c.takeIdle(addr)
	reused := pc != nil
	if !reused {
		if pc, err = c.dial(ctx, addr); err != nil {
			closeRequestBody(req)
			return nil, err
		}
	}
	resp, stale, err := c.send(ctx, req, pc, reused, idleSince)
	if !stale || ctx.Err() != nil {
		return resp, err
	}
	// The pooled connection was dead: once more on a fresh one.
	retry, ok := rewind(req)
	if !ok {
		return nil, err
	}
	if pc, err = c.dial(ctx, addr); err != nil {
		closeRequestBody(retry)
		return nil, err
	}
	resp, _, err = c.send(ctx, retry, pc, false, 0)
	if resp != nil {
		resp.Request = req
	}
	return resp, err
}

// send makes one exchange of req on pc, pooled since idleSince (monoNow)
// if reused. On failure pc is closed and stale reports whether pc, if
// reused, looked closed by the server before our request reached it.
func (c *Client) send(ctx context.Context, req *http.Request, pc *conn, reused bool, idleSince time.Duration) (resp *http.Response, stale bool, err error) {
	if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.GotConn != nil {
		var idle time.Duration
		if reused {
			idle = monoNow() - idleSince
		}
		trace.GotConn(httptrace.GotConnInfo{Conn: pc.nc, Reused: reused, WasIdle: reused, IdleTime: idle})
	}
	// After GotConn: its hook may ask for the connection to be closed.
	keep := !req.Close && !httpguts.HeaderValuesContainsToken(req.Header["Connection"], "close")
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, pc.interrupt)
	}

	pc.writeErr, pc.gotByte = nil, false
	err = req.Write(pc.bw)
	if err == nil {
		err = pc.bw.Flush()
	}
	if err != nil {
		pc.abort(stop)
		stale = reused && pc.writeErr != nil
		return nil, stale, pc.errorf(ctx, "write request to", err)
	}

	resp, err = c.readResponse(pc, req)
	if err != nil {
		pc.abort(stop)
		stale = reused && !pc.gotByte && connLost(err)
		return nil, stale, pc.errorf(ctx, "read response from", err)
	}
	keep = keep && !resp.Close
	if resp.Body == http.NoBody {
		c.release(pc, stop, keep)
		return resp, false, nil
	}
	resp.Body = &body{c: c, pc: pc, rc: resp.Body, ctx: ctx, stop: stop, keep: keep}
	return resp, false, nil
}

// readResponse reads the final response to req from pc, its headers
// within the limit.
func (c *Client) readResponse(pc *conn, req *http.Request) (*http.Response, error) {
	limit := c.maxResponseHeaderBytes()
	pc.readLimit = limit + bufSize // slack: the reader may pull part of the body with the headers
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			if pc.readLimit <= 0 {
				err = fmt.Errorf("response headers exceed %d bytes", limit)
			}
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errUpgrade
		case resp.StatusCode >= 100 && resp.StatusCode < 200:
			continue // 100 Continue, 103 Early Hints: the final response follows
		}
		pc.readLimit = noLimit
		return resp, nil
	}
}

// release ends pc's exchange: it stops the context's hook and pools pc
// if keep holds, the context did not fire and no stray bytes follow the
// response; otherwise it closes pc.
func (c *Client) release(pc *conn, stop func() bool, keep bool) {
	if stop != nil && !stop() {
		keep = false // the context fired: the connection has a past deadline
	}
	if keep && pc.br.Buffered() == 0 {
		c.putIdle(pc)
		return
	}
	pc.close()
}

// idleTimeout is how long a connection may stay idle; 0: forever.
func (c *Client) idleTimeout() time.Duration {
	switch {
	case c.IdleTimeout > 0:
		return c.IdleTimeout
	case c.IdleTimeout < 0:
		return 0
	}
	return DefaultIdleTimeout
}

func (c *Client) maxIdlePerHost() int {
	if c.MaxIdlePerHost > 0 {
		return c.MaxIdlePerHost
	}
	return DefaultMaxIdlePerHost
}

func (c *Client) maxResponseHeaderBytes() int64 {
	if c.MaxResponseHeaderBytes > 0 {
		return c.MaxResponseHeaderBytes
	}
	return DefaultMaxResponseHeaderBytes
}

// targetAddr is the address to dial for req.
func targetAddr(req *http.Request) (string, error) {
	u := req.URL
	switch {
	case u == nil:
		return "", errors.New("h1client: request has no URL")
	case u.Scheme != "http":
		return "", fmt.Errorf("h1client: unsupported URL scheme %q: only http", u.Scheme)
	case u.Host == "":
		return "", errors.New("h1client: request URL has no host")
	case u.Port() == "":
		return net.JoinHostPort(u.Hostname(), "80"), nil
	}
	return u.Host, nil
}

// rewind returns req with a fresh body to send it again, or false when
// its body cannot be replayed.
func rewind(req *http.Request) (*http.Request, bool) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, true
	}
	if req.GetBody == nil {
		return nil, false
	}
	b, err := req.GetBody()
	if err != nil {
		return nil, false
	}
	r := *req
	r.Body = b
	return &r, true
}

func closeRequestBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// connLost reports whether err says the connection was closed under us.
func connLost(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, net.ErrClosed)
}
