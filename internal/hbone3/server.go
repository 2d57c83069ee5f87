package hbone3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2/hpack"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/identity"
)

// Stream describes one tunnelled connection for authorization, dialing and
// telemetry. The embedded hbone.Stream carries the request and the peer as
// HBONE over HTTP/2 does, so policy code can serve both transports; its own
// Abort does nothing here, use this type's.
type Stream struct {
	hbone.Stream

	tunnel atomic.Pointer[tunnelConn] // set once a TCP tunnel is open
	udp    atomic.Pointer[UDPTunnel]  // set once a connect-udp tunnel is open
	abort  atomic.Bool
}

// Abort resets the tunnel stream: its splice ends and closes the upstream
// connection. Use it to end an open stream early (when policy no longer
// allows it). Safe to call more than once, and before the tunnel opened (it
// then ends as soon as it does).
func (st *Stream) Abort() {
	st.abort.Store(true)
	if c := st.tunnel.Load(); c != nil {
		c.Abort()
	}
	if u := st.udp.Load(); u != nil {
		u.Abort()
	}
}

// ServerConfig configures a Server. It has the shape of hbone.ServerConfig.
type ServerConfig struct {
	// TLSConfig is the mTLS server configuration (identity.ServerConfig).
	// Its ALPN protocols are replaced with "h3". Required.
	TLSConfig *tls.Config
	// Authorize decides whether a stream may proceed; an error refuses it
	// with 401, or 400 when it wraps hbone.ErrBadDestination. Required.
	Authorize func(ctx context.Context, st *Stream) error
	// Dial connects to the stream's destination. An error answers 503, or
	// 400 when it wraps hbone.ErrBadDestination. Defaults to TCP to
	// Authority, or UDP when st.Protocol is hbone.ProtocolConnectUDP; for
	// connect-udp the conn must keep datagram boundaries (a connected
	// *net.UDPConn), the server relaying datagrams with
	// hbone.RelayDatagrams.
	Dial func(ctx context.Context, st *Stream) (net.Conn, error)
	// Serve, if set, takes the place of Dial and the splice for CONNECT
	// streams, as hbone.ServerConfig.Serve does: an authorized stream is
	// answered 200 and handed over as a net.Conn (Close ends it with a FIN,
	// and STOP_SENDING if the client's data was not read to its end),
	// for a proxy that serves the tunnelled bytes in-process. The stream
	// ends, for OnStreamEnd, when that conn is closed: Serve (or whatever
	// it hands the conn to) must close it. Serve may return at once or
	// block. A server with Serve refuses connect-udp streams with 501.
	Serve func(ctx context.Context, st *Stream, tunnel net.Conn)
	// OnStreamEnd, if set, is called once per stream when it ends.
	OnStreamEnd func(hbone.StreamResult)
	// OnConnRefused, if set, is called when this server refuses a connection
	// before any stream: the client's certificate failed verification
	// (foreign CA, expired, wrong trust domain), or it negotiated no h3.
	OnConnRefused func(remote net.Addr, err error)
	// Logger receives connection-level events and the socket tuning report.
	Logger *slog.Logger

	HandshakeTimeout time.Duration // QUIC + TLS; default 10s
	DialTimeout      time.Duration // upstream connect; default 5s
	IdleTimeout      time.Duration // close connections with no streams; default 5m
	DrainTimeout     time.Duration // on shutdown, how long streams may finish; default 30s
	// UDPIdleTimeout ends a connect-udp flow once no datagram crossed it
	// either way for this long: a FIN on the stream, the socket closed,
	// StreamResult.Err wrapping hbone.ErrUDPIdle. Default
	// hbone.DefaultUDPIdleTimeout (60s, see there); negative disables it.
	UDPIdleTimeout time.Duration
}

// Server terminates HBONE/3 tunnels.
type Server struct {
	cfg     ServerConfig
	tlsConf *tls.Config

	mu     sync.Mutex // guards the fields below
	conns  map[*quic.Conn]*connInfo
	tuning Tuning
}

// connInfo is what a server keeps of a connection's verified peer.
type connInfo struct {
	peer spiffeid.ID
	addr netip.AddrPort
	cert *x509.Certificate
}

type connInfoKey struct{}

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("hbone3: server needs a TLS config")
	}
	if cfg.Authorize == nil {
		return nil, errors.New("hbone3: server needs an Authorize function")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.HandshakeTimeout = cmpOr(cfg.HandshakeTimeout, 10*time.Second)
	cfg.DialTimeout = cmpOr(cfg.DialTimeout, 5*time.Second)
	cfg.IdleTimeout = cmpOr(cfg.IdleTimeout, 5*time.Minute)
	cfg.DrainTimeout = cmpOr(cfg.DrainTimeout, 30*time.Second)
	cfg.UDPIdleTimeout = cmpOr(cfg.UDPIdleTimeout, hbone.DefaultUDPIdleTimeout)
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context, st *Stream) (net.Conn, error) {
			network := "tcp"
			if st.Protocol == hbone.ProtocolConnectUDP {
				network = "udp"
			}
			var d net.Dialer
			return d.DialContext(ctx, network, st.Authority.String())
		}
	}
	srv := &Server{cfg: cfg}
	srv.tlsConf = srv.serverTLS(cfg.TLSConfig)
	return srv, nil
}

// serverTLS adapts the configuration: ALPN h3 only, and a verification
// failure reported with the client's address.
func (srv *Server) serverTLS(base *tls.Config) *tls.Config {
	base = base.Clone()
	base.NextProtos = []string{http3.NextProtoH3}
	if srv.cfg.OnConnRefused == nil {
		return base
	}
	outer := base.Clone()
	outer.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c := base
		if base.GetConfigForClient != nil {
			if own, err := base.GetConfigForClient(hello); err != nil || own != nil {
				if own == nil {
					return nil, err
				}
				c = own
			}
		}
		c = c.Clone()
		c.NextProtos = []string{http3.NextProtoH3}
		verify := c.VerifyConnection
		var remote net.Addr
		if hello.Conn != nil {
			remote = hello.Conn.RemoteAddr()
		}
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			var err error
			if verify != nil {
				err = verify(cs)
			}
			if err != nil {
				srv.refused(remote, fmt.Errorf("hbone3: TLS handshake: %w", err))
			}
			return err
		}
		return c, nil
	}
	return outer
}

// Tuning reports the socket tuning of the connection Serve was given (the
// zero Tuning before Serve).
func (srv *Server) Tuning() Tuning {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.tuning
}

// quicConfig is the QUIC configuration of both ends: flow-control windows
// sized like the HTTP/2 tunnel's (and able to grow), 0-RTT off (a replayed
// CONNECT would open a second upstream connection), DATAGRAM frames
// (RFC 9221) on for connect-udp.
func quicConfig(handshake time.Duration, incomingStreams int64) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           handshake,
		MaxIdleTimeout:                 60 * time.Second,
		KeepAlivePeriod:                20 * time.Second,
		InitialStreamReceiveWindow:     4 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 16 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
		MaxIncomingStreams:             incomingStreams,
		MaxIncomingUniStreams:          16, // HTTP/3 needs 3 (control, QPACK encoder and decoder)
		EnableDatagrams:                true,
	}
}

// MaxStreamsPerConn is the concurrent stream limit of a tunnel connection,
// the HTTP/2 tunnel's.
const MaxStreamsPerConn = 100

// Serve accepts tunnel connections on pc until ctx ends, then stops
// accepting, sends GOAWAY, lets open streams drain (up to DrainTimeout),
// closes everything and pc. It returns nil after a shutdown by ctx.
func (srv *Server) Serve(ctx context.Context, pc net.PacketConn) error {
	defer pc.Close()
	tuning := tuneUDP(pc)
	srv.mu.Lock()
	if srv.conns != nil {
		srv.mu.Unlock()
		return errors.New("hbone3: Serve called twice")
	}
	srv.conns = make(map[*quic.Conn]*connInfo)
	srv.tuning = tuning
	srv.mu.Unlock()
	logTuning(srv.cfg.Logger, "server", pc.LocalAddr(), tuning)

	tr := &quic.Transport{Conn: pc}
	defer tr.Close()
	ln, err := tr.Listen(srv.tlsConf, quicConfig(srv.cfg.HandshakeTimeout, MaxStreamsPerConn))
	if err != nil {
		return fmt.Errorf("hbone3: listen on %s: %w", pc.LocalAddr(), err)
	}
	h3 := &http3.Server{
		Handler:         http.HandlerFunc(srv.serveStream),
		MaxHeaderBytes:  hbone.MaxHeaderListSize,
		IdleTimeout:     srv.cfg.IdleTimeout,
		EnableDatagrams: true, // SETTINGS_H3_DATAGRAM; extended CONNECT is always on
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			srv.mu.Lock()
			info := srv.conns[c]
			srv.mu.Unlock()
			return context.WithValue(ctx, connInfoKey{}, info)
		},
	}
	var wg sync.WaitGroup
	for {
		qc, err := ln.Accept(ctx)
		if err != nil {
			ln.Close()
			srv.drain(h3)
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("hbone3: accept: %w", err)
		}
		wg.Go(func() { srv.serveConn(h3, qc) })
	}
}

// serveConn checks a handshaken connection's peer and serves HTTP/3 on it
// until it ends.
func (srv *Server) serveConn(h3 *http3.Server, qc *quic.Conn) {
	state := qc.ConnectionState().TLS
	if state.NegotiatedProtocol != http3.NextProtoH3 {
		srv.refuseConn(qc, fmt.Errorf("hbone3: client negotiated %q, want h3", state.NegotiatedProtocol))
		return
	}
	peer, err := identity.PeerID(state)
	if err != nil {
		srv.refuseConn(qc, fmt.Errorf("hbone3: client: %w", err))
		return
	}
	info := &connInfo{peer: peer, cert: state.PeerCertificates[0]}
	if ua, ok := qc.RemoteAddr().(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		info.addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	srv.mu.Lock()
	srv.conns[qc] = info
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(srv.conns, qc)
		srv.mu.Unlock()
	}()
	if err := h3.ServeQUICConn(qc); err != nil && !errors.Is(err, http.ErrServerClosed) {
		srv.cfg.Logger.Debug("hbone3: connection ended", "remote", qc.RemoteAddr(), "peer", peer, "err", err)
	}
	qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
}

func (srv *Server) refuseConn(qc *quic.Conn, err error) {
	qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeConnectError), "")
	srv.refused(qc.RemoteAddr(), err)
}

func (srv *Server) refused(remote net.Addr, err error) {
	srv.cfg.Logger.Debug("hbone3: connection refused", "remote", remote, "err", err)
	if srv.cfg.OnConnRefused != nil {
		srv.cfg.OnConnRefused(remote, err)
	}
}

// drain sends GOAWAY on every connection and waits until their streams
// have ended or DrainTimeout has passed, when it closes what is left.
func (srv *Server) drain(h3 *http3.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.DrainTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		srv.mu.Lock()
		conns := make([]*quic.Conn, 0, len(srv.conns))
		for c := range srv.conns {
			conns = append(conns, c)
		}
		srv.mu.Unlock()
		for _, c := range conns {
			c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "server shutting down")
		}
	})
	defer stop()
	_ = h3.Shutdown(ctx) // returns once every served connection has ended
}

// serveStream answers one CONNECT and, when it opens, proxies it until both
// directions end.
func (srv *Server) serveStream(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := &Stream{}
	if info, ok := r.Context().Value(connInfoKey{}).(*connInfo); ok && info != nil {
		st.Peer, st.PeerAddr, st.PeerCertificate = info.peer, info.addr, info.cert
	}
	status, up, err := srv.open(w, r, st, start)
	if up != nil && srv.cfg.Serve != nil {
		srv.cfg.Serve(r.Context(), st, up)
		return
	}
	if up == nil {
		srv.streamEnd(st, hbone.StreamResult{Status: status, Err: err}, start)
		return
	}
	if t := st.udp.Load(); t != nil {
		toUDP, toTunnel, err := hbone.RelayDatagrams(t, up, hbone.BridgeOptions{IdleTimeout: srv.cfg.UDPIdleTimeout})
		srv.streamEnd(st, hbone.StreamResult{Status: 200, Err: err, BytesIn: toUDP, BytesOut: toTunnel, Upstream: up}, start)
		return
	}
	toConn, toTunnel, err := hbone.Splice(st.tunnel.Load(), up)
	srv.streamEnd(st, hbone.StreamResult{Status: 200, Err: err, BytesIn: toConn, BytesOut: toTunnel, Upstream: up}, start)
}

func (srv *Server) streamEnd(st *Stream, res hbone.StreamResult, start time.Time) {
	if srv.cfg.OnStreamEnd == nil {
		return
	}
	res.Stream, res.Start, res.Duration = st.Stream, start, time.Since(start)
	srv.cfg.OnStreamEnd(res)
}

// open validates, authorizes and dials; it answers and returns the status
// and, for 200, the upstream connection (the tunnel is in st). With
// ServerConfig.Serve it dials nothing and returns the tunnel to serve.
func (srv *Server) open(w http.ResponseWriter, r *http.Request, st *Stream, start time.Time) (int, net.Conn, error) {
	w.Header()["Date"] = nil // nothing but :status
	req, err := hbone.ParseRequest(requestFields(r))
	if errors.Is(err, hbone.ErrUnknownProtocol) {
		return refuse(w, 501, fmt.Errorf("hbone3: bad request: %w", err))
	}
	if err != nil {
		return refuse(w, 400, fmt.Errorf("hbone3: bad request: %w", err))
	}
	st.Request = req
	udp := req.Protocol == hbone.ProtocolConnectUDP
	if udp && srv.cfg.Serve != nil {
		return refuse(w, 501, errors.New("hbone3: this server serves CONNECT tunnels only, not connect-udp"))
	}
	ctx := r.Context()
	if err := srv.cfg.Authorize(ctx, st); err != nil {
		if errors.Is(err, hbone.ErrBadDestination) {
			return refuse(w, 400, err)
		}
		return refuse(w, 401, err)
	}
	var up net.Conn
	if srv.cfg.Serve == nil {
		dctx, cancel := context.WithTimeout(ctx, srv.cfg.DialTimeout)
		up, err = srv.cfg.Dial(dctx, st)
		cancel()
		if err != nil {
			if errors.Is(err, hbone.ErrBadDestination) {
				return refuse(w, 400, err)
			}
			return refuse(w, 503, fmt.Errorf("hbone3: dial %s: %w", req.Authority, err))
		}
	}
	var datagrams bool
	if udp {
		datagrams = peerDatagrams(ctx, w, srv.cfg.DialTimeout)
		w.Header()["Capsule-Protocol"] = []string{"?1"}
	}
	w.WriteHeader(200)
	str, err := w.(http3.HTTPStreamer).HTTPStream() // sends the HEADERS frame
	if err != nil {
		if up != nil {
			up.Close()
		}
		return 200, nil, fmt.Errorf("hbone3: sending 200: %w", err)
	}
	var local, remote net.Addr
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		local = a
	}
	if a, ok := r.Context().Value(http3.RemoteAddrContextKey).(net.Addr); ok {
		remote = a
	}
	if udp {
		t := newUDPTunnel(str, !datagrams, local, remote, nil)
		st.udp.Store(t)
		if st.abort.Load() {
			t.Abort()
		}
		return 200, up, nil
	}
	if srv.cfg.Serve != nil {
		sc := &servedConn{}
		sc.tunnelConn = newTunnelConn(str, local, remote, func() {
			srv.streamEnd(st, hbone.StreamResult{Status: 200, BytesIn: sc.in.Load(), BytesOut: sc.out.Load()}, start)
		})
		st.tunnel.Store(sc.tunnelConn)
		if st.abort.Load() {
			sc.Abort()
		}
		return 200, sc, nil
	}
	c := newTunnelConn(str, local, remote, nil)
	st.tunnel.Store(c)
	if st.abort.Load() {
		c.Abort()
	}
	return 200, up, nil
}

// servedConn is a tunnel handed to ServerConfig.Serve, counting the bytes
// each way for the stream's result.
type servedConn struct {
	*tunnelConn
	in, out atomic.Int64
}

func (c *servedConn) Read(p []byte) (int, error) {
	n, err := c.tunnelConn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *servedConn) Write(p []byte) (int, error) {
	n, err := c.tunnelConn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// ReadFrom and WriteTo keep the large copies, counted.
func (c *servedConn) ReadFrom(r io.Reader) (int64, error) {
	n, err := c.tunnelConn.ReadFrom(r)
	c.out.Add(n)
	return n, err
}

func (c *servedConn) WriteTo(w io.Writer) (int64, error) {
	n, err := c.tunnelConn.WriteTo(w)
	c.in.Add(n)
	return n, err
}

// refuse answers a final status; the HTTP/3 server then ends the stream.
func refuse(w http.ResponseWriter, status int, err error) (int, net.Conn, error) {
	w.WriteHeader(status)
	return status, nil, err
}

// requestFields rebuilds the request's header list (the pseudo-headers
// quic-go has parsed, then the regular fields sorted by name) so that
// hbone.ParseRequest applies the same rules to both transports. An
// extended CONNECT (quic-go puts :protocol in r.Proto and the raw :path in
// r.RequestURI) gets :protocol, :scheme and :path back; quic-go keeps no
// :scheme, only requires one, so it is rebuilt as https.
func requestFields(r *http.Request) []hpack.HeaderField {
	fields := make([]hpack.HeaderField, 0, 5+len(r.Header))
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: r.Method},
		hpack.HeaderField{Name: ":authority", Value: r.Host})
	if r.Method == http.MethodConnect && r.Proto != "" && r.Proto != "HTTP/3.0" {
		fields = append(fields,
			hpack.HeaderField{Name: ":protocol", Value: r.Proto},
			hpack.HeaderField{Name: ":scheme", Value: "https"},
			hpack.HeaderField{Name: ":path", Value: r.RequestURI})
	}
	names := make([]string, 0, len(r.Header))
	for k := range r.Header {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		name := strings.ToLower(k)
		for _, v := range r.Header[k] {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	return fields
}

func logTuning(log *slog.Logger, role string, addr net.Addr, t Tuning) {
	attrs := []any{"role", role, "addr", addr, "recv_buffer", t.RecvBuffer, "send_buffer", t.SendBuffer, "gso", t.GSO, "forced", t.Forced}
	if t.Err != nil {
		log.Warn("hbone3: UDP socket tuning refused by the system; throughput will suffer", append(attrs, "err", t.Err)...)
		return
	}
	log.Info("hbone3: UDP socket tuned", attrs...)
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
