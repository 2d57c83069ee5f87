package hbone

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
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Target says where and as whom to open a tunnel.
type Target struct {
	// Source is the identity whose certificate the client presents.
	Source spiffeid.ID
	// Destination is the exact identity the server must present.
	Destination spiffeid.ID
	// Address is the HBONE server (the destination's node or pod, port 15008).
	Address netip.AddrPort
	// Authority is the original destination, sent as :authority.
	Authority netip.AddrPort
	// Header carries extra request headers (baggage, forwarded, traceparent).
	Header http.Header
}

// StatusError is a tunnel the server refused with a non-200 status.
type StatusError struct {
	Code int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("hbone: server refused the tunnel: %d %s", e.Code, http.StatusText(e.Code))
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// TLSConfig returns the mTLS client configuration presenting src's
	// certificate and accepting only dst (identity.ClientConfig). Required.
	TLSConfig func(src, dst spiffeid.ID) (*tls.Config, error)
	// Dial opens the TCP connection to a tunnel server; ztunnel injects
	// marked sockets here. Defaults to net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives connection-level events.
	Logger *slog.Logger

	MaxStreamsPerConn int           // default and maximum 100
	HandshakeTimeout  time.Duration // TCP + TLS; default 10s
	IdleTimeout       time.Duration // close pooled connections unused this long; default 5m
}

// Client opens tunnels, pooling HTTP/2 connections per
// (source identity, destination identity, server address).
type Client struct {
	cfg ClientConfig

	mu     sync.Mutex // guards the fields below
	pool   map[poolKey][]*pooledConn
	closed bool
}

type poolKey struct {
	src, dst spiffeid.ID
	addr     netip.AddrPort
}

// pooledConn is a pool entry; c is nil until its dial finishes.
type pooledConn struct {
	key     poolKey
	ready   chan struct{} // closed when the dial finished
	c       *conn         // set before ready closes
	err     error         // dial failure, set before ready closes
	pending int           // reservations taken while dialing (guarded by Client.mu)
}

// NewClient checks cfg and returns a Client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("hbone: client needs a TLSConfig function")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxStreamsPerConn <= 0 || cfg.MaxStreamsPerConn > maxConcurrentStream {
		cfg.MaxStreamsPerConn = maxConcurrentStream
	}
	cfg.HandshakeTimeout = cmpOr(cfg.HandshakeTimeout, 10*time.Second)
	cfg.IdleTimeout = cmpOr(cfg.IdleTimeout, 5*time.Minute)
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	return &Client{cfg: cfg, pool: make(map[poolKey][]*pooledConn)}, nil
}

// Dial opens a tunnel to t and returns it as a net.Conn once the server has
// answered 200. A refusal is a *StatusError.
func (cl *Client) Dial(ctx context.Context, t Target) (net.Conn, error) {
	fields, err := t.RequestFields()
	if err != nil {
		return nil, err
	}
	s, err := cl.dial(ctx, t, fields, "")
	if err != nil {
		return nil, err
	}
	return s, nil
}

// dial opens a stream with the request fields on a pooled connection,
// retrying on another connection when the stream is refused unprocessed.
func (cl *Client) dial(ctx context.Context, t Target, fields []hpack.HeaderField, protocol string) (*stream, error) {
	if !t.Authority.IsValid() || !t.Address.IsValid() {
		return nil, errors.New("hbone: target needs an address and an authority")
	}
	key := poolKey{src: t.Source, dst: t.Destination, addr: t.Address}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		c, err := cl.acquire(ctx, key)
		if err != nil {
			return nil, err
		}
		s, err := cl.open(ctx, c, fields, protocol)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errRefused) {
			return nil, err
		}
		lastErr = err
	}
	return nil, lastErr
}

// open sends the CONNECT on c (one slot already reserved) and waits for
// the reply. An extended CONNECT (protocol not "") waits for the server's
// SETTINGS first and is never sent unless they enable it (RFC 8441 §3).
func (cl *Client) open(ctx context.Context, c *conn, fields []hpack.HeaderField, protocol string) (*stream, error) {
	if protocol != "" {
		if err := cl.awaitExtendedConnect(ctx, c); err != nil {
			c.release()
			return nil, err
		}
	}
	c.wmu.Lock()
	c.mu.Lock()
	if c.err != nil || c.goingAway || c.nextStreamID > maxWindow {
		c.goingAway = true
		c.releaseLocked()
		c.mu.Unlock()
		c.wmu.Unlock()
		return nil, errRefused
	}
	id := c.nextStreamID
	c.nextStreamID += 2
	s := c.newStreamLocked(id)
	ready := s.resp.ready
	c.mu.Unlock()
	err := c.writeHeadersLocked(id, fields, false)
	c.wmu.Unlock()
	if err != nil {
		s.Close()
		return nil, errRefused
	}
	select {
	case <-ready:
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("hbone: waiting for tunnel reply: %w", ctx.Err())
	}
	resp, err := s.response()
	if err != nil {
		s.Close()
		if errors.Is(err, errRefused) || errors.Is(err, errConnClosed) {
			return nil, errRefused
		}
		return nil, err
	}
	status, err := parseStatus(resp)
	if err != nil {
		s.Close()
		return nil, err
	}
	if status != 200 {
		s.Close()
		return nil, &StatusError{Code: status}
	}
	if protocol == ProtocolConnectUDP && !hasCapsuleProtocol(resp) {
		s.Close()
		return nil, fmt.Errorf("hbone: %s answered connect-udp without capsule-protocol: ?1", c.nc.RemoteAddr())
	}
	return s, nil
}

// acquire reserves a stream slot on a pooled connection for key, dialing a
// new connection when every existing one is full.
func (cl *Client) acquire(ctx context.Context, key poolKey) (*conn, error) {
	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		return nil, errors.New("hbone: client closed")
	}
	var pc *pooledConn
	for _, p := range cl.pool[key] {
		if p.c == nil && p.err == nil && p.pending < cl.cfg.MaxStreamsPerConn {
			p.pending++
			pc = p
			break
		}
		if p.c != nil && p.c.tryReserve(cl.cfg.MaxStreamsPerConn) {
			cl.mu.Unlock()
			return p.c, nil
		}
	}
	if pc == nil {
		pc = &pooledConn{key: key, ready: make(chan struct{}), pending: 1}
		cl.pool[key] = append(cl.pool[key], pc)
		go cl.dialConn(pc)
	}
	cl.mu.Unlock()

	select {
	case <-pc.ready:
	case <-ctx.Done():
		cl.mu.Lock()
		if pc.c == nil {
			pc.pending--
		} else {
			pc.c.release()
		}
		cl.mu.Unlock()
		return nil, fmt.Errorf("hbone: waiting for tunnel connection to %s: %w", key.addr, ctx.Err())
	}
	if pc.err != nil {
		return nil, pc.err
	}
	return pc.c, nil
}

// dialConn establishes a pooled connection, hands the reservations taken
// meanwhile to it, then reads its frames until it ends.
func (cl *Client) dialConn(pc *pooledConn) {
	c, err := cl.connect(pc.key)
	cl.mu.Lock()
	if err != nil {
		pc.err = err
		cl.removeLocked(pc)
	} else {
		pc.c = c
		c.mu.Lock()
		c.active += pc.pending
		c.mu.Unlock()
		pc.pending = 0
		c.onIdle = func(*conn) { cl.remove(pc) }
		c.onClose = func(*conn) { cl.remove(pc) }
	}
	close(pc.ready)
	cl.mu.Unlock()
	if err == nil {
		// The connection's reader carries on in this goroutine, as the
		// server's does after its handshake, rather than in a new one.
		c.readLoop()
	}
}

func (cl *Client) connect(key poolKey) (*conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cl.cfg.HandshakeTimeout)
	defer cancel()
	tlsCfg, err := cl.cfg.TLSConfig(key.src, key.dst)
	if err != nil {
		return nil, fmt.Errorf("hbone: TLS config for %s → %s: %w", key.src, key.dst, err)
	}
	nc, err := cl.cfg.Dial(ctx, "tcp", key.addr.String())
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %s: %w", key.addr, err)
	}
	// Note the certificate presented: the connection takes no new streams
	// once it is half way through its life, when the holder renews it.
	tlsCfg = tlsCfg.Clone()
	var presented *x509.Certificate
	if get := tlsCfg.GetClientCertificate; get != nil {
		tlsCfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := get(cri)
			if err == nil && cert != nil && len(cert.Certificate) > 0 {
				presented, _ = x509.ParseCertificate(cert.Certificate[0])
			}
			return cert, err
		}
	}
	batch := newBatchConn(nc)
	tc := tls.Client(batch, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s (%s): %w", key.addr, key.dst, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != http2.NextProtoTLS {
		tc.Close()
		return nil, fmt.Errorf("hbone: %s negotiated %q, want h2", key.addr, p)
	}
	c := newConn(tc, batch, roleClient, nil, cl.cfg.IdleTimeout)
	if presented != nil {
		c.retireAt = presented.NotBefore.Add(presented.NotAfter.Sub(presented.NotBefore) / 2)
	}
	tc.SetWriteDeadline(time.Now().Add(cl.cfg.HandshakeTimeout))
	if err := c.start(); err != nil {
		tc.Close()
		return nil, err
	}
	tc.SetWriteDeadline(time.Time{})
	return c, nil
}

func (cl *Client) remove(pc *pooledConn) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.removeLocked(pc)
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

// Close closes every pooled connection and their streams.
func (cl *Client) Close() error {
	cl.mu.Lock()
	cl.closed = true
	var conns []*conn
	for _, list := range cl.pool {
		for _, pc := range list {
			if pc.c != nil {
				conns = append(conns, pc.c)
			}
		}
	}
	cl.pool = make(map[poolKey][]*pooledConn)
	cl.mu.Unlock()
	for _, c := range conns {
		c.Close()
		<-c.done
	}
	return nil
}

// Rotate stops new streams on every pooled connection that presents src's
// certificate; call it after src's certificate was renewed. Open streams
// carry on; new ones go to fresh connections with the new certificate.
func (cl *Client) Rotate(src spiffeid.ID) {
	cl.mu.Lock()
	var conns []*conn
	for key, list := range cl.pool {
		if key.src != src {
			continue
		}
		var dialing []*pooledConn
		for _, pc := range list {
			if pc.c != nil {
				conns = append(conns, pc.c)
			} else {
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
	for _, c := range conns {
		c.retireWhenIdle()
	}
}

// PoolStats reports the pooled connections and the streams open on them.
func (cl *Client) PoolStats() (conns, streams int) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for _, list := range cl.pool {
		for _, pc := range list {
			conns++
			if pc.c != nil {
				pc.c.mu.Lock()
				streams += pc.c.active
				pc.c.mu.Unlock()
			} else {
				streams += pc.pending
			}
		}
	}
	return conns, streams
}
