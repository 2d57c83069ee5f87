package load

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Protocol is what the connections of a Latency or Throughput run speak.
type Protocol int

// The protocols of a request/response run.
const (
	// ProtoEcho is the 'E' op of the wire format above, against Backend.
	ProtoEcho Protocol = iota
	// ProtoHTTP1 is HTTP/1.1 with keep-alive against HTTPBackend: each
	// request is a POST with a Size-byte body, each response a 200 with the
	// same body back.
	ProtoHTTP1
)

// String names p for messages.
func (p Protocol) String() string {
	switch p {
	case ProtoEcho:
		return "echo"
	case ProtoHTTP1:
		return "http/1.1"
	}
	return "protocol(" + strconv.Itoa(int(p)) + ")"
}

// HTTPPath is the request path the HTTP/1.1 load client uses.
const HTTPPath = "/echo"

// maxHTTPBody bounds the body the HTTP backend echoes.
const maxHTTPBody = maxEchoLen

// HTTPBackendConfig configures an HTTPBackend.
type HTTPBackendConfig struct {
	// Listener accepts the connections; the backend closes it.
	Listener net.Listener
	// Logger receives server errors (default: discard).
	Logger *slog.Logger
}

// HTTPBackend is the server end of the HTTP/1.1 paths: for any request it
// answers 200 with the request's body (at most 1 MiB) as the response body,
// with a Content-Length. A larger body is answered 413.
type HTTPBackend struct {
	cfg  HTTPBackendConfig
	srv  *http.Server
	bufs sync.Pool // *bytes.Buffer, one per request in flight
}

// NewHTTPBackend validates cfg.
func NewHTTPBackend(cfg HTTPBackendConfig) (*HTTPBackend, error) {
	if cfg.Listener == nil {
		return nil, errors.New("load: HTTP backend needs a listener")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b := &HTTPBackend{cfg: cfg}
	b.bufs.New = func() any { return new(bytes.Buffer) }
	b.srv = &http.Server{
		Handler:           http.HandlerFunc(b.serveEcho),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       10 * time.Minute,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return b, nil
}

// Addr is the address clients dial.
func (b *HTTPBackend) Addr() string { return b.cfg.Listener.Addr().String() }

// Run serves until ctx is done, then closes the listener and every
// connection.
func (b *HTTPBackend) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { b.srv.Close() })
	defer stop()
	err := b.srv.Serve(b.cfg.Listener)
	if errors.Is(err, http.ErrServerClosed) && ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("load: HTTP backend: %w", err)
}

func (b *HTTPBackend) serveEcho(w http.ResponseWriter, r *http.Request) {
	buf := b.bufs.Get().(*bytes.Buffer)
	defer b.bufs.Put(buf)
	buf.Reset()
	n, err := buf.ReadFrom(io.LimitReader(r.Body, maxHTTPBody+1))
	if err != nil {
		b.cfg.Logger.Debug("HTTP backend: read body", "remote", r.RemoteAddr, "err", err)
		return
	}
	if n > maxHTTPBody {
		http.Error(w, fmt.Sprintf("request body over %d bytes", maxHTTPBody), http.StatusRequestEntityTooLarge)
		return
	}
	h := w.Header()
	h["Content-Type"] = []string{"application/octet-stream"}
	h["Content-Length"] = []string{strconv.Itoa(buf.Len())}
	w.Write(buf.Bytes())
}

// exchanger is one open connection of a request/response run.
type exchanger interface {
	// roundTrip sends one request and reads its whole response.
	roundTrip(deadline time.Time) error
}

// echoConn speaks ProtoEcho.
type echoConn struct {
	c   net.Conn
	buf []byte
}

func (e *echoConn) roundTrip(deadline time.Time) error { return roundTrip(e.c, e.buf, deadline) }

// httpConn speaks ProtoHTTP1 over one keep-alive connection.
type httpConn struct {
	c   net.Conn
	br  *bufio.Reader
	req []byte // the whole request, headers and body
	buf []byte // the expected response body's size
}

// HTTPRequest renders the request the HTTP/1.1 load client sends: a POST
// of HTTPPath to host with a body of size bytes.
func HTTPRequest(host string, size int) []byte {
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", HTTPPath, host, size)
	req := make([]byte, len(head)+size)
	copy(req, head)
	for i := len(head); i < len(req); i++ {
		req[i] = 'x'
	}
	return req
}

func (h *httpConn) roundTrip(deadline time.Time) error {
	h.c.SetDeadline(deadline)
	if _, err := h.c.Write(h.req); err != nil {
		return err
	}
	return readHTTPResponse(h.br, h.buf)
}

// readHTTPResponse reads one response from br and checks that it is a 200
// with a body of exactly len(buf) bytes on a connection that stays open.
func readHTTPResponse(br *bufio.Reader, buf []byte) error {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return fmt.Errorf("load: HTTP status %s: %q", resp.Status, snippet)
	}
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return fmt.Errorf("load: HTTP response body shorter than %d bytes: %w", len(buf), err)
	}
	var one [1]byte
	if n, _ := resp.Body.Read(one[:]); n > 0 {
		return fmt.Errorf("load: HTTP response body longer than %d bytes", len(buf))
	}
	if resp.Close {
		return errors.New("load: the server closed the keep-alive connection (Connection: close)")
	}
	return nil
}

// openConn opens one connection of a request/response run and returns it
// with its closer. An HTTP connection is not used before it is returned.
func openConn(ctx context.Context, proto Protocol, df DialFunc, addr, host string, size int) (exchanger, func(), error) {
	switch proto {
	case ProtoEcho:
		c, closeConn, err := dialBench(ctx, df, addr, Header{Op: OpEcho, Length: uint64(size)})
		if err != nil {
			return nil, nil, err
		}
		return &echoConn{c: c, buf: make([]byte, size)}, closeConn, nil
	case ProtoHTTP1:
		c, err := df.dial(ctx, addr)
		if err != nil {
			return nil, nil, fmt.Errorf("load: dial %s: %w", addr, err)
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
		if host == "" {
			host = addr
		}
		return &httpConn{c: c, br: bufio.NewReaderSize(c, 16<<10), req: HTTPRequest(host, size), buf: make([]byte, size)},
			func() { stop(); c.Close() }, nil
	}
	return nil, nil, fmt.Errorf("load: unknown protocol %v", proto)
}

// ThroughputConfig describes a closed-loop run: every connection sends its
// next request as soon as the previous response is in.
type ThroughputConfig struct {
	Addr     string
	Protocol Protocol
	Host     string        // HTTP Host header (default Addr)
	Conns    int           // connections, each with one request in flight
	Duration time.Duration // measured period
	Size     int           // request and response size in bytes
	Warmup   int           // unmeasured round trips per connection before the run
	// Timeout bounds a single round trip (default 5 s); a connection whose
	// request fails or takes longer stops, and the failure is counted.
	Timeout time.Duration
	Dial    DialFunc // nil: a net.Dialer in this namespace
	// Started, if set, is called once every connection is open and warm,
	// just before the measured period.
	Started func()
}

// ThroughputResult is the outcome of a closed-loop run.
type ThroughputResult struct {
	Requests int           // completed in the measured period
	Errors   int           // connections that failed
	Elapsed  time.Duration // from the start until the last connection stopped
	// FirstErr is the first failure, if any.
	FirstErr error
}

// RPS is completed requests per second.
func (r ThroughputResult) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Throughput runs cfg: it opens cfg.Conns connections through cfg.Addr,
// warms them up, then on every connection at once sends requests back to
// back for Duration and counts the responses. A connection that fails
// stops; the run fails only if every connection did.
func Throughput(ctx context.Context, cfg ThroughputConfig) (ThroughputResult, error) {
	if cfg.Conns <= 0 || cfg.Size <= 0 || cfg.Duration <= 0 {
		return ThroughputResult{}, fmt.Errorf("load: invalid throughput config %+v", cfg)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	conns := make([]exchanger, 0, cfg.Conns)
	for range cfg.Conns {
		ex, closeConn, err := openConn(ctx, cfg.Protocol, cfg.Dial, cfg.Addr, cfg.Host, cfg.Size)
		if err != nil {
			return ThroughputResult{}, err
		}
		defer closeConn()
		conns = append(conns, ex)
		for range cfg.Warmup {
			if err := ex.roundTrip(time.Now().Add(cfg.Timeout)); err != nil {
				return ThroughputResult{}, fmt.Errorf("load: warm-up via %s: %w", cfg.Addr, ctxErr(ctx, err))
			}
		}
	}
	if cfg.Started != nil {
		cfg.Started()
	}
	start := time.Now()
	end := start.Add(cfg.Duration)
	counts := make([]int, len(conns))
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, ex := range conns {
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				if err := ex.roundTrip(time.Now().Add(cfg.Timeout)); err != nil {
					errs[i] = err
					return
				}
				counts[i]++
			}
		})
	}
	wg.Wait()
	res := ThroughputResult{Elapsed: time.Since(start)}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	for i := range conns {
		res.Requests += counts[i]
		if errs[i] != nil {
			res.Errors++
			if res.FirstErr == nil {
				res.FirstErr = errs[i]
			}
		}
	}
	if res.Errors == len(conns) {
		return res, fmt.Errorf("load: throughput via %s: every connection failed: %w", cfg.Addr, res.FirstErr)
	}
	return res, nil
}
