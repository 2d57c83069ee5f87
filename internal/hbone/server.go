package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// ErrBadDestination, returned (wrapped) by an Authorize or Dial function,
// answers 400: the :authority is not a destination this server serves.
var ErrBadDestination = errors.New("hbone: destination not served here")

// ErrEmptyConnect: a CONNECT whose HEADERS already ended the stream.
var ErrEmptyConnect = errors.New("CONNECT request ended the stream")

// Stream describes one tunnelled connection for authorization, dialing and
// telemetry.
type Stream struct {
	Request
	// Peer is the verified SPIFFE identity of the tunnel's client.
	Peer spiffeid.ID
	// PeerAddr is the tunnel connection's remote address.
	PeerAddr netip.AddrPort
	// PeerCertificate is the leaf certificate the peer presented.
	PeerCertificate *x509.Certificate

	s *stream
}

// Abort resets the tunnel stream: its splice ends and closes the upstream
// connection. Use it, not the upstream's Close, to end an open stream early
// (e.g. when policy no longer allows it). Safe to call more than once.
func (st *Stream) Abort() {
	if st.s != nil {
		st.s.Close()
	}
}

// StreamResult reports a finished stream (for flow logs and metrics).
type StreamResult struct {
	Stream
	Status   int           // the reply sent: 200, 400, 401, 501 or 503
	Err      error         // why it was refused or how it ended, if not cleanly
	BytesIn  int64         // bytes received from the client through the tunnel (connect-udp with Dial: UDP payload bytes)
	BytesOut int64         // bytes sent to the client through the tunnel (likewise)
	Start    time.Time     // when the request arrived
	Duration time.Duration // until both directions closed
	// Upstream is what Dial returned (closed by now), so the caller can
	// recognize its own wrapper; nil when the stream was refused.
	Upstream net.Conn
}

// ServerConfig configures a Server.
type ServerConfig struct {
	// TLSConfig is the mTLS server configuration (identity.ServerConfig).
	// Connections whose client presents no verified SPIFFE ID are closed.
	TLSConfig *tls.Config
	// Authorize decides whether a stream may proceed (st.Protocol tells a
	// UDP tunnel from a TCP one); an error refuses it with 401, or 400
	// when it wraps ErrBadDestination. Required.
	Authorize func(ctx context.Context, st *Stream) error
	// Dial connects to the stream's destination. An error answers 503, or
	// 400 when it wraps ErrBadDestination. Defaults to TCP to Authority,
	// or UDP when st.Protocol is ProtocolConnectUDP. For connect-udp the
	// conn must keep datagram boundaries (a connected *net.UDPConn: each
	// Read one datagram, each Write one); the server relays capsules to
	// and from it with BridgeDatagrams.
	Dial func(ctx context.Context, st *Stream) (net.Conn, error)
	// Serve, if set, takes the place of Dial and the splice: an authorized
	// stream is answered 200 and handed over as a net.Conn (reads drain the
	// client's DATA, writes send DATA, CloseWrite sends END_STREAM, Close
	// resets a stream not finished both ways), for a proxy that serves the
	// tunnelled bytes in-process. The stream ends, for OnStreamEnd and the
	// concurrency limit, when that conn is closed: Serve (or whatever it
	// hands the conn to) must close it. Serve runs on the stream's own
	// goroutine and may block. For st.Protocol ProtocolConnectUDP the
	// conn carries capsules: wrap it with connectudp.NewStreamSession, or
	// hand it to BridgeDatagrams.
	Serve func(ctx context.Context, st *Stream, tunnel net.Conn)
	// OnStreamEnd, if set, is called once per stream when it ends.
	OnStreamEnd func(StreamResult)
	// OnConnRefused, if set, is called when a connection is refused before
	// any stream: failed TLS handshake (foreign CA, expired or wrong trust
	// domain certificate), no h2, or a bad preface.
	OnConnRefused func(remote net.Addr, err error)
	// Logger receives connection-level events (never per read).
	Logger *slog.Logger

	HandshakeTimeout time.Duration // TLS + preface; default 10s
	DialTimeout      time.Duration // upstream connect; default 5s
	IdleTimeout      time.Duration // close connections with no streams; default 5m
	DrainTimeout     time.Duration // on shutdown, how long streams may finish; default 30s
	// UDPIdleTimeout ends a connect-udp flow relayed by the server (Serve
	// nil) once no datagram crossed it either way for this long: the
	// stream gets a clean END_STREAM, the socket closes, StreamResult.Err
	// wraps ErrUDPIdle. Default DefaultUDPIdleTimeout (60s); negative
	// disables it.
	UDPIdleTimeout time.Duration
}

// Server terminates HBONE tunnels.
type Server struct {
	cfg ServerConfig

	mu    sync.Mutex // guards conns
	conns map[*conn]struct{}
	wg    sync.WaitGroup // serving goroutines
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("hbone: server needs a TLS config")
	}
	if cfg.Authorize == nil {
		return nil, errors.New("hbone: server needs an Authorize function")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.HandshakeTimeout = cmpOr(cfg.HandshakeTimeout, 10*time.Second)
	cfg.DialTimeout = cmpOr(cfg.DialTimeout, 5*time.Second)
	cfg.IdleTimeout = cmpOr(cfg.IdleTimeout, 5*time.Minute)
	cfg.DrainTimeout = cmpOr(cfg.DrainTimeout, 30*time.Second)
	cfg.UDPIdleTimeout = cmpOr(cfg.UDPIdleTimeout, DefaultUDPIdleTimeout)
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context, st *Stream) (net.Conn, error) {
			network := "tcp"
			if st.Protocol == ProtocolConnectUDP {
				network = "udp"
			}
			var d net.Dialer
			return d.DialContext(ctx, network, st.Authority.String())
		}
	}
	return &Server{cfg: cfg, conns: make(map[*conn]struct{})}, nil
}

// Serve accepts tunnel connections on ln until ctx ends, then stops
// accepting, sends GOAWAY, lets open streams drain (up to DrainTimeout) and
// closes everything. It returns nil after a shutdown by ctx.
func (srv *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				srv.drain()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			srv.drain()
			return fmt.Errorf("hbone: accept: %w", err)
		}
		srv.wg.Add(1)
		go func() {
			defer srv.wg.Done()
			srv.serveTLS(ctx, nc)
		}()
	}
}

// serveTLS runs the TLS handshake and then the HTTP/2 connection.
func (srv *Server) serveTLS(ctx context.Context, nc net.Conn) {
	batch := newBatchConn(nc)
	tc := tls.Server(batch, srv.cfg.TLSConfig)
	hctx, cancel := context.WithTimeout(ctx, srv.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		srv.refused(nc, fmt.Errorf("hbone: TLS handshake: %w", err))
		return
	}
	state := tc.ConnectionState()
	if state.NegotiatedProtocol != http2.NextProtoTLS || len(state.PeerCertificates) == 0 {
		srv.refused(tc, errors.New("hbone: client negotiated no h2 or sent no certificate"))
		return
	}
	peer, err := x509svid.IDFromCert(state.PeerCertificates[0])
	if err != nil {
		srv.refused(tc, fmt.Errorf("hbone: client certificate has no SPIFFE ID: %w", err))
		return
	}
	srv.serveConn(ctx, tc, batch, peer, state.PeerCertificates[0])
}

// ServeConn serves HBONE on an already authenticated connection whose peer
// is the given identity, until the connection ends.
func (srv *Server) ServeConn(ctx context.Context, nc net.Conn, peer spiffeid.ID) {
	srv.serveConn(ctx, nc, nil, peer, nil)
}

func (srv *Server) serveConn(ctx context.Context, nc net.Conn, batch *batchConn, peer spiffeid.ID, cert *x509.Certificate) {
	h := &serverHandler{srv: srv, ctx: ctx, peer: peer, peerCert: cert}
	if ap, err := netip.ParseAddrPort(nc.RemoteAddr().String()); err == nil {
		h.peerAddr = ap
	}
	c := newConn(nc, batch, roleServer, h, srv.cfg.IdleTimeout)
	nc.SetDeadline(time.Now().Add(srv.cfg.HandshakeTimeout))
	if err := c.start(); err != nil {
		srv.refused(nc, err)
		return
	}
	nc.SetDeadline(time.Time{})
	if !srv.track(c) {
		c.shutdown()
		c.Close()
		return
	}
	defer srv.untrack(c)
	c.armIdle()
	c.readLoop()
	h.wg.Wait()
}

func (srv *Server) refused(nc net.Conn, err error) {
	srv.cfg.Logger.Debug("hbone: connection refused", "remote", nc.RemoteAddr(), "err", err)
	nc.Close()
	if srv.cfg.OnConnRefused != nil {
		srv.cfg.OnConnRefused(nc.RemoteAddr(), err)
	}
}

func (srv *Server) track(c *conn) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.conns == nil {
		return false
	}
	srv.conns[c] = struct{}{}
	return true
}

func (srv *Server) untrack(c *conn) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	delete(srv.conns, c)
}

// drain sends GOAWAY on every connection, waits for their streams to end or
// DrainTimeout, then closes what is left.
func (srv *Server) drain() {
	srv.mu.Lock()
	conns := srv.conns
	srv.conns = nil
	srv.mu.Unlock()
	for c := range conns {
		c.shutdown()
	}
	deadline := time.Now().Add(srv.cfg.DrainTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for c := range conns {
		for !c.idleNow() && time.Now().Before(deadline) {
			<-tick.C
		}
		c.Close()
	}
	srv.wg.Wait()
}

// serverHandler runs the streams of one server connection.
type serverHandler struct {
	srv      *Server
	ctx      context.Context
	peer     spiffeid.ID
	peerAddr netip.AddrPort
	peerCert *x509.Certificate
	wg       sync.WaitGroup
}

func (h *serverHandler) handleStream(c *conn, s *stream, fields []hpack.HeaderField, endStream bool) {
	h.wg.Add(1)
	go h.serveStream(c, s, fields, endStream)
}

// serveStream answers one CONNECT and proxies it. Its concurrency slot is
// held until the stream has ended, whatever the client does meanwhile; the
// goroutine itself returns once the splice runs.
func (h *serverHandler) serveStream(c *conn, s *stream, fields []hpack.HeaderField, endStream bool) {
	ss := &serverStream{h: h, start: time.Now()}
	ss.Peer, ss.PeerAddr, ss.PeerCertificate = h.peer, h.peerAddr, h.peerCert
	ss.s = s
	status, up, err := h.open(c, s, fields, endStream, &ss.Stream)
	switch {
	case err != nil:
		ss.end(StreamResult{Status: status, Err: err})
	case up == nil:
		h.srv.cfg.Serve(h.ctx, &ss.Stream, &servedConn{stream: s, ss: ss})
	case ss.Protocol == ProtocolConnectUDP:
		ss.up = up
		go ss.bridge()
	default:
		ss.up = up
		SpliceAsync(s, up, ss.spliced)
	}
}

// serverStream is what a server keeps of a stream while it is open (for
// as long as the tunnelled connection lives); the StreamResult is built
// only at the end.
type serverStream struct {
	Stream // handed to Authorize and Dial, which may keep it
	h      *serverHandler
	start  time.Time
	up     net.Conn // what Dial returned
}

// spliced reports the end of an accepted stream's splice.
func (ss *serverStream) spliced(in, out int64, err error) {
	ss.end(StreamResult{Status: 200, Err: err, BytesIn: in, BytesOut: out, Upstream: ss.up})
}

// bridge relays an accepted connect-udp stream's datagrams to and from
// its upstream socket until either ends.
func (ss *serverStream) bridge() {
	ss.spliced(BridgeDatagrams(ss.s, ss.up, BridgeOptions{IdleTimeout: ss.h.srv.cfg.UDPIdleTimeout}))
}

// end reports the stream and frees its concurrency slot.
func (ss *serverStream) end(res StreamResult) {
	res.Stream, res.Start, res.Duration = ss.Stream, ss.start, time.Since(ss.start)
	if ss.h.srv.cfg.OnStreamEnd != nil {
		ss.h.srv.cfg.OnStreamEnd(res)
	}
	ss.s.c.release()
	ss.h.wg.Done()
}

// open validates, authorizes and dials; it replies and returns the status
// and, for 200, the upstream connection (none with Serve). A non-nil error
// means the stream is over.
func (h *serverHandler) open(c *conn, s *stream, fields []hpack.HeaderField, endStream bool, st *Stream) (int, net.Conn, error) {
	req, err := ParseRequest(fields)
	if err == nil && endStream {
		err = ErrEmptyConnect
	}
	if errors.Is(err, ErrUnknownProtocol) {
		return h.refuse(c, s, 501, fmt.Errorf("hbone: bad request: %w", err))
	}
	if err != nil {
		return h.refuse(c, s, 400, fmt.Errorf("hbone: bad request: %w", err))
	}
	st.Request = req
	if err := h.srv.cfg.Authorize(h.ctx, st); err != nil {
		if errors.Is(err, ErrBadDestination) {
			return h.refuse(c, s, 400, err)
		}
		return h.refuse(c, s, 401, err)
	}
	var up net.Conn
	if h.srv.cfg.Serve == nil {
		dctx, cancel := context.WithTimeout(h.ctx, h.srv.cfg.DialTimeout)
		up, err = h.srv.cfg.Dial(dctx, st)
		cancel()
		if err != nil {
			if errors.Is(err, ErrBadDestination) {
				return h.refuse(c, s, 400, err)
			}
			return h.refuse(c, s, 503, fmt.Errorf("hbone: dial %s: %w", req.Authority, err))
		}
	}
	s.answered.Store(true)
	if err := c.writeHeaders(s.id, responseFields(200, req.Protocol), false); err != nil {
		if up != nil {
			up.Close()
		}
		s.Close()
		return 200, nil, err
	}
	return 200, up, nil
}

// refuse answers a final status and ends the stream.
func (h *serverHandler) refuse(c *conn, s *stream, status int, err error) (int, net.Conn, error) {
	s.answered.Store(true)
	if werr := c.writeHeaders(s.id, statusFields(status), true); werr == nil {
		s.markSentEnd()
	}
	s.Close()
	return status, nil, err
}

func statusFields(code int) []hpack.HeaderField {
	return []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(code)}}
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// servedConn is a stream handed to ServerConfig.Serve: it counts the bytes
// each way and ends the stream when closed.
type servedConn struct {
	*stream
	ss      *serverStream
	in, out atomic.Int64
	closed  atomic.Bool
}

func (c *servedConn) Read(p []byte) (int, error) {
	n, err := c.stream.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *servedConn) Write(p []byte) (int, error) {
	n, err := c.stream.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// ReadFrom and WriteTo keep the stream's copy-saving paths, counted.
func (c *servedConn) ReadFrom(r io.Reader) (int64, error) {
	n, err := c.stream.ReadFrom(r)
	c.out.Add(n)
	return n, err
}

func (c *servedConn) WriteTo(w io.Writer) (int64, error) {
	n, err := c.stream.WriteTo(w)
	c.in.Add(n)
	return n, err
}

// Close ends the stream as closing a TCP socket ends a connection: with
// END_STREAM when nothing received is unread, then waiting (up to
// closeLinger, discarding what arrives) for the client's end of the stream;
// with a reset when data is unread. The stream's end is reported once.
func (c *servedConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	s := c.stream
	s.mu.Lock()
	cause, unread, eof := s.err, s.head < len(s.recv), s.recvEOF
	s.mu.Unlock()
	if cause == nil && !unread {
		if err := s.CloseWrite(); err != nil {
			cause = err
		} else if !eof {
			s.SetReadDeadline(time.Now().Add(closeLinger))
			go func() {
				io.Copy(io.Discard, s)
				c.finish(nil)
			}()
			return nil
		}
	}
	c.finish(cause)
	return nil
}

// closeLinger bounds how long a closed served stream waits for the
// client's END_STREAM before it is reset.
const closeLinger = 5 * time.Second

func (c *servedConn) finish(cause error) {
	c.stream.Close()
	c.ss.end(StreamResult{Status: 200, Err: cause, BytesIn: c.in.Load(), BytesOut: c.out.Load()})
}
