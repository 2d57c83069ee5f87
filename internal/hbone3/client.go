package hbone3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/hbone"
)

// ClientConfig configures a Client. It has the shape of hbone.ClientConfig.
type ClientConfig struct {
	// TLSConfig returns the mTLS client configuration presenting src's
	// certificate and accepting only dst (identity.ClientConfig). Its ALPN
	// protocols are replaced with "h3", so the HTTP/2 client's function
	// serves here too. Required.
	TLSConfig func(src, dst spiffeid.ID) (*tls.Config, error)
	// ListenPacket opens the UDP socket of one tunnel connection from src
	// to dst; ztunnel creates it inside the source pod's network namespace.
	// Defaults to an unbound UDP socket. The client closes it when the
	// connection ends.
	ListenPacket func(ctx context.Context, src spiffeid.ID, dst netip.AddrPort) (net.PacketConn, error)
	// Logger receives connection-level events and socket tuning reports.
	Logger *slog.Logger

	MaxStreamsPerConn int           // default and maximum 100
	HandshakeTimeout  time.Duration // QUIC + TLS; default 10s
	IdleTimeout       time.Duration // close pooled connections unused this long; default 5m
}

// Client opens tunnels, pooling QUIC connections per
// (source identity, destination identity, server address).
type Client struct {
	cfg ClientConfig
	h3  *http3.Transport // only makes ClientConns; never dials
	wg  sync.WaitGroup   // dialConn goroutines

	mu         sync.Mutex                // guards the fields below
	pool       map[poolKey][]*pooledConn // connections taking new streams
	live       map[*pooledConn]struct{}  // every connection until it ends
	closed     bool
	tuning     Tuning
	tuningSeen bool // a socket was tuned (and, if refused, reported)
}

type poolKey struct {
	src, dst spiffeid.ID
	addr     netip.AddrPort
}

// pooledConn is one QUIC connection of the pool. Until ready closes only
// key, ready and the Client.mu fields are valid.
type pooledConn struct {
	key   poolKey
	ready chan struct{} // closed when the dial has finished
	err   error         // dial failure
	qc    *quic.Conn
	cc    *http3.ClientConn

	// Client.mu guards these.
	active   int         // streams reserved or open
	retired  bool        // no new streams; close when active drops to 0
	retireAt time.Time   // half-life of the certificate presented
	idle     *time.Timer // running while active == 0
}

// NewClient checks cfg and returns a Client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("hbone3: client needs a TLSConfig function")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxStreamsPerConn <= 0 || cfg.MaxStreamsPerConn > MaxStreamsPerConn {
		cfg.MaxStreamsPerConn = MaxStreamsPerConn
	}
	cfg.HandshakeTimeout = cmpOr(cfg.HandshakeTimeout, 10*time.Second)
	cfg.IdleTimeout = cmpOr(cfg.IdleTimeout, 5*time.Minute)
	if cfg.ListenPacket == nil {
		cfg.ListenPacket = func(_ context.Context, _ spiffeid.ID, dst netip.AddrPort) (net.PacketConn, error) {
			if dst.Addr().Is4() {
				return net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
			}
			return net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6unspecified})
		}
	}
	return &Client{
		cfg:  cfg,
		h3:   &http3.Transport{DisableCompression: true, MaxResponseHeaderBytes: 4 << 10, EnableDatagrams: true},
		pool: make(map[poolKey][]*pooledConn),
		live: make(map[*pooledConn]struct{}),
	}, nil
}

// errRetry marks a request that never reached the server: it may go on
// another connection.
var errRetry = errors.New("hbone3: connection is going away")

// Dial opens a tunnel to t and returns it as a net.Conn once the server has
// answered 200. A refusal is a *hbone.StatusError.
func (cl *Client) Dial(ctx context.Context, t hbone.Target) (net.Conn, error) {
	req := connectRequest(t)
	return dialPooled(ctx, cl, t, func(pc *pooledConn) (net.Conn, error) { return cl.open(ctx, pc, req) })
}

// dialPooled checks t and runs open on a pooled connection for t's key,
// moving to another connection (three tries in all) when open fails with
// errRetry: the stream was refused unprocessed.
func dialPooled[T any](ctx context.Context, cl *Client, t hbone.Target, open func(*pooledConn) (T, error)) (T, error) {
	var zero T
	if !t.Authority.IsValid() || !t.Address.IsValid() {
		return zero, errors.New("hbone3: target needs an address and an authority")
	}
	if _, err := t.RequestFields(); err != nil { // the limit every server enforces
		return zero, err
	}
	key := poolKey{src: t.Source, dst: t.Destination, addr: t.Address}
	var lastErr error
	for range 3 {
		pc, err := cl.acquire(ctx, key)
		if err != nil {
			return zero, err
		}
		v, err := open(pc)
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, errRetry) || ctx.Err() != nil {
			return zero, err
		}
		lastErr = err
	}
	return zero, lastErr
}

// connectRequest is the CONNECT for t as quic-go's request writer takes it.
func connectRequest(t hbone.Target) *http.Request {
	h := make(http.Header, len(t.Header)+1)
	for k, vs := range t.Header {
		h[k] = vs
	}
	h["User-Agent"] = []string{""} // quic-go adds its own otherwise
	authority := t.Authority.String()
	return &http.Request{Method: http.MethodConnect, Host: authority, URL: &url.URL{Host: authority}, Header: h, Proto: "HTTP/1.1"}
}

// open sends the CONNECT on pc (a slot already reserved) and waits for the
// reply.
func (cl *Client) open(ctx context.Context, pc *pooledConn, req *http.Request) (net.Conn, error) {
	rs, release, err := cl.roundTrip(ctx, pc, req)
	if err != nil {
		return nil, err
	}
	return newTunnelConn(rs.str, pc.qc.LocalAddr(), pc.qc.RemoteAddr(), release), nil
}

// openedStream is a request stream the server answered 200.
type openedStream struct {
	str  *http3.RequestStream
	resp *http.Response
}

// roundTrip sends req on a new stream of pc (a slot already reserved) and
// waits for a 200. On success the slot is freed by calling release once
// the stream is done with; on failure it has been freed.
func (cl *Client) roundTrip(ctx context.Context, pc *pooledConn, req *http.Request) (openedStream, func(), error) {
	release := sync.OnceFunc(func() { cl.release(pc) })
	rs, err := pc.cc.OpenRequestStream(ctx)
	if err != nil {
		cl.retire(pc)
		release()
		if ctx.Err() != nil {
			return openedStream{}, nil, fmt.Errorf("hbone3: opening a stream to %s: %w", pc.key.addr, ctx.Err())
		}
		return openedStream{}, nil, fmt.Errorf("%w: %w", errRetry, err)
	}
	// The reply wait ends with ctx: a cancelled stream unblocks ReadResponse.
	stop := context.AfterFunc(ctx, func() {
		rs.CancelRead(codeCancel)
		rs.CancelWrite(codeCancel)
	})
	resp, err := sendAndRead(rs, req)
	if !stop() {
		release()
		return openedStream{}, nil, fmt.Errorf("hbone3: waiting for tunnel reply: %w", ctx.Err())
	}
	if err != nil {
		rs.CancelRead(codeCancel)
		rs.CancelWrite(codeCancel)
		release()
		var he *http3.Error
		if errors.As(err, &he) && he.Remote && he.ErrorCode == http3.ErrCodeRequestRejected {
			cl.retire(pc) // GOAWAY raced with the request
			return openedStream{}, nil, fmt.Errorf("%w: %w", errRetry, err)
		}
		return openedStream{}, nil, fmt.Errorf("hbone3: CONNECT to %s: %w", pc.key.addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		rs.CancelRead(codeCancel)
		rs.Close()
		release()
		return openedStream{}, nil, &hbone.StatusError{Code: resp.StatusCode}
	}
	return openedStream{str: rs, resp: resp}, release, nil
}

func sendAndRead(rs *http3.RequestStream, req *http.Request) (*http.Response, error) {
	if err := rs.SendRequestHeader(req); err != nil {
		return nil, err
	}
	return rs.ReadResponse()
}

// acquire reserves a stream slot on a pooled connection for key, dialing a
// new connection when every usable one is full.
func (cl *Client) acquire(ctx context.Context, key poolKey) (*pooledConn, error) {
	now := time.Now()
	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		return nil, errors.New("hbone3: client closed")
	}
	var pc *pooledConn
	for _, p := range cl.pool[key] {
		if !p.retireAt.IsZero() && now.After(p.retireAt) {
			p.retired = true
		}
		if !p.retired && p.active < cl.cfg.MaxStreamsPerConn {
			pc = p
			break
		}
	}
	if pc == nil {
		pc = &pooledConn{key: key, ready: make(chan struct{})}
		cl.pool[key] = append(cl.pool[key], pc)
		cl.live[pc] = struct{}{}
		cl.wg.Add(1)
		go cl.dialConn(pc)
	}
	pc.active++
	if pc.idle != nil {
		pc.idle.Stop()
	}
	cl.mu.Unlock()

	select {
	case <-pc.ready:
	case <-ctx.Done():
		cl.release(pc)
		return nil, fmt.Errorf("hbone3: waiting for tunnel connection to %s: %w", key.addr, ctx.Err())
	}
	if pc.err != nil {
		cl.release(pc)
		return nil, pc.err
	}
	return pc, nil
}

// release returns a stream slot.
func (cl *Client) release(pc *pooledConn) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	pc.active--
	cl.settleLocked(pc)
}

// settleLocked handles a dialed connection left without streams: it starts
// its idle timer, or closes it if it is retired.
func (cl *Client) settleLocked(pc *pooledConn) {
	if pc.active > 0 || pc.qc == nil {
		return // busy, or still dialing (dialConn settles it), or failed
	}
	if pc.retired || cl.closed {
		cl.removeLocked(pc)
		go pc.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		return
	}
	if pc.idle == nil {
		pc.idle = time.AfterFunc(cl.cfg.IdleTimeout, func() { cl.closeIdle(pc) })
	} else {
		pc.idle.Reset(cl.cfg.IdleTimeout)
	}
}

func (cl *Client) closeIdle(pc *pooledConn) {
	cl.mu.Lock()
	idle := pc.active == 0
	if idle {
		cl.removeLocked(pc)
	}
	cl.mu.Unlock()
	if idle {
		pc.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "idle")
	}
}

// retire takes pc out of the pool for new streams; it closes once its
// streams have ended.
func (cl *Client) retire(pc *pooledConn) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	pc.retired = true
	cl.removeLocked(pc)
}

// dialConn establishes a pooled connection, then watches it until it
// ends, when it drops it from the pool and closes its socket.
func (cl *Client) dialConn(pc *pooledConn) {
	defer cl.wg.Done()
	qc, tr, presented, err := cl.connect(pc.key)
	cl.mu.Lock()
	if err != nil {
		pc.err = err
		cl.removeLocked(pc)
		delete(cl.live, pc)
		close(pc.ready)
		cl.mu.Unlock()
		return
	}
	pc.qc = qc
	pc.cc = cl.h3.NewClientConn(qc)
	if presented != nil {
		// The holder renews its certificate at half-life: from then on
		// new streams go to a connection presenting the new one.
		pc.retireAt = presented.NotBefore.Add(presented.NotAfter.Sub(presented.NotBefore) / 2)
	}
	close(pc.ready)
	cl.settleLocked(pc) // every dialer may have given up meanwhile
	cl.mu.Unlock()

	<-qc.Context().Done()
	cl.mu.Lock()
	pc.retired = true
	cl.removeLocked(pc)
	delete(cl.live, pc)
	if pc.idle != nil {
		pc.idle.Stop()
	}
	cl.mu.Unlock()
	tr.Close()
	tr.Conn.Close()
}

// connect opens the socket, runs the QUIC handshake and checks ALPN. It
// returns the leaf certificate the client presented.
func (cl *Client) connect(key poolKey) (*quic.Conn, *quic.Transport, *x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cl.cfg.HandshakeTimeout)
	defer cancel()
	tlsCfg, err := cl.cfg.TLSConfig(key.src, key.dst)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("hbone3: TLS config for %s → %s: %w", key.src, key.dst, err)
	}
	tlsCfg = tlsCfg.Clone()
	tlsCfg.NextProtos = []string{http3.NextProtoH3}
	var presented *x509.Certificate
	var presentedMu sync.Mutex
	if get := tlsCfg.GetClientCertificate; get != nil {
		tlsCfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := get(cri)
			if err == nil && cert != nil && len(cert.Certificate) > 0 {
				if leaf, perr := x509.ParseCertificate(cert.Certificate[0]); perr == nil {
					presentedMu.Lock()
					presented = leaf
					presentedMu.Unlock()
				}
			}
			return cert, err
		}
	}
	pconn, err := cl.cfg.ListenPacket(ctx, key.src, key.addr)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("hbone3: UDP socket for %s: %w", key.addr, err)
	}
	cl.noteTuning(pconn, tuneUDP(pconn))
	tr := &quic.Transport{Conn: pconn}
	qc, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(key.addr), tlsCfg, quicConfig(cl.cfg.HandshakeTimeout, -1))
	if err != nil {
		tr.Close()
		pconn.Close()
		return nil, nil, nil, fmt.Errorf("hbone3: QUIC handshake with %s (%s): %w", key.addr, key.dst, err)
	}
	if p := qc.ConnectionState().TLS.NegotiatedProtocol; p != http3.NextProtoH3 {
		qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		tr.Close()
		pconn.Close()
		return nil, nil, nil, fmt.Errorf("hbone3: %s negotiated %q, want h3", key.addr, p)
	}
	presentedMu.Lock()
	defer presentedMu.Unlock()
	return qc, tr, presented, nil
}

// noteTuning records the tuning of the latest socket, logging the first
// result and any refusal that differs from the previous one.
func (cl *Client) noteTuning(pconn net.PacketConn, t Tuning) {
	cl.mu.Lock()
	prev, seen := cl.tuning, cl.tuningSeen
	cl.tuning, cl.tuningSeen = t, true
	cl.mu.Unlock()
	if !seen || (t.Err != nil && (prev.Err == nil || prev.Err.Error() != t.Err.Error())) {
		logTuning(cl.cfg.Logger, "client", pconn.LocalAddr(), t)
	}
}

// Tuning reports the socket tuning of the latest tunnel connection (the
// zero Tuning before the first).
func (cl *Client) Tuning() Tuning {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.tuning
}

func (cl *Client) removeLocked(pc *pooledConn) {
	list := cl.pool[pc.key]
	for i, p := range list {
		if p == pc {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(cl.pool, pc.key)
	} else {
		cl.pool[pc.key] = list
	}
}

// Close closes every pooled connection and the streams on them, and waits
// for their sockets to close.
func (cl *Client) Close() error {
	cl.mu.Lock()
	cl.closed = true
	conns := make([]*pooledConn, 0, len(cl.live))
	for pc := range cl.live {
		conns = append(conns, pc)
	}
	cl.pool = make(map[poolKey][]*pooledConn)
	cl.mu.Unlock()
	for _, pc := range conns {
		<-pc.ready
		if pc.err == nil {
			pc.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "client closed")
		}
	}
	cl.wg.Wait()
	return nil
}

// Rotate stops new streams on every pooled connection that presents src's
// certificate; call it after src's certificate was renewed. Open streams
// carry on; new ones go to fresh connections with the new certificate.
func (cl *Client) Rotate(src spiffeid.ID) {
	cl.mu.Lock()
	var idle []*pooledConn
	for key, list := range cl.pool {
		if key.src != src {
			continue
		}
		var dialing []*pooledConn
		for _, pc := range list {
			select {
			case <-pc.ready:
				pc.retired = true
				if pc.active == 0 && pc.err == nil {
					idle = append(idle, pc)
				}
			default:
				dialing = append(dialing, pc)
			}
		}
		if len(dialing) == 0 {
			delete(cl.pool, key)
		} else {
			cl.pool[key] = dialing
		}
	}
	cl.mu.Unlock()
	for _, pc := range idle {
		pc.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "certificate rotated")
	}
}

// PoolStats reports the pooled connections and the streams reserved or
// open on them.
func (cl *Client) PoolStats() (conns, streams int) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for _, list := range cl.pool {
		for _, pc := range list {
			conns++
			streams += pc.active
		}
	}
	return conns, streams
}

// quicCongestion is quic-go's congestion control: NewReno, the one its
// connections are made with (it carries a Cubic mode it does not use, and
// offers no choice).
const quicCongestion = "reno"

// Tunnels describes the pooled connections with quic-go's measurements of
// their paths, in no order (see hbone.Client.Tunnels).
func (cl *Client) Tunnels() []hbone.TunnelStats {
	cl.mu.Lock()
	var out []hbone.TunnelStats
	var qcs []*quic.Conn
	for key, list := range cl.pool {
		for _, pc := range list {
			out = append(out, hbone.TunnelStats{Transport: "hbone3", Source: key.src.String(), Peer: key.dst.String(), Remote: key.addr.String(), Streams: pc.active})
			qcs = append(qcs, pc.qc) // nil until the dial finishes
		}
	}
	cl.mu.Unlock()
	for i, qc := range qcs {
		if qc != nil {
			s := qc.ConnectionStats()
			out[i].Path = &hbone.PathStats{Congestion: quicCongestion, SmoothedRTT: s.SmoothedRTT, MinRTT: s.MinRTT, CongestionWindow: s.CongestionWindow, Sent: s.PacketsSent, Lost: s.PacketsLost}
		}
	}
	return out
}
