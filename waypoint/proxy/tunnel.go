package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/waypoint/h1server"
)

// tunnelConn is the proxy's end of one tunnel, addressed as the tunnel's
// client and original destination. It is served wrapped in an
// h1server.Conn, whose buffered reader detects the protocol, so no byte
// is lost whoever serves it.
type tunnelConn struct {
	net.Conn
	info *tunnelInfo
}

// RemoteAddr is the tunnel's client; LocalAddr the original destination.
func (c *tunnelConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.info.peerAddr) }
func (c *tunnelConn) LocalAddr() net.Addr  { return net.TCPAddrFromAddrPort(c.info.authority) }

// CloseWrite half-closes (FIN to the tunnel's client).
func (c *tunnelConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

type tunnelKey struct{}

// withTunnel is the h2c server's ConnContext: requests learn their tunnel.
func withTunnel(ctx context.Context, c net.Conn) context.Context {
	if hc, ok := c.(*h1server.Conn); ok {
		c = hc.Conn
	}
	if tc, ok := c.(*tunnelConn); ok {
		return context.WithValue(ctx, tunnelKey{}, tc.info)
	}
	return ctx
}

func tunnelOf(ctx context.Context) *tunnelInfo {
	info, _ := ctx.Value(tunnelKey{}).(*tunnelInfo)
	return info
}

// Protocols a tunnel can carry.
type protocol int

const (
	protoHTTP protocol = iota // HTTP/1.x request line, or the HTTP/2 preface
	protoL4                   // anything else
)

// maxMethodLen bounds the request-line method we look for.
const maxMethodLen = 20

// detect classifies a tunnel by its first bytes without consuming them:
// HTTP when they start with an upper-case token and a space (an HTTP/1.x
// request line; the HTTP/2 preface "PRI * HTTP/2.0" is one too), else L4.
// It reads only as far as needed: a byte that cannot be part of a method
// decides at once. A tunnel that ends before deciding is L4 (nothing to
// serve). A server-first protocol on a port that does not declare its
// protocol waits here until the client speaks.
func detect(r *bufio.Reader) (protocol, error) {
	for i := 1; i <= maxMethodLen+1; i++ {
		b, err := r.Peek(i)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return protoL4, nil
			}
			return protoL4, err
		}
		c := b[i-1]
		switch {
		case c == ' ' && i > 1:
			return protoHTTP, nil
		case c >= 'A' && c <= 'Z', c == '-' || c == '_':
		default:
			return protoL4, nil
		}
	}
	return protoL4, nil
}

// declaredProtocol is the protocol the destination Service's port declares
// (appProtocol or port name, as istiod-lite translates them), when that
// settles how to serve the tunnel without reading it: HTTP for http, http2
// and grpc; L4 for tcp (mysql, mongo, redis) and tls, whose server may
// speak first, so no byte is awaited. Otherwise (undeclared, or a tunnel
// to a workload) the first bytes decide (detect).
func (p *Proxy) declaredProtocol(info *tunnelInfo) (protocol, bool) {
	dst := p.cfg.Store.Current().Resolve(p.cfg.Network, info.authority)
	if dst.Kind != state.ToService {
		return protoL4, false
	}
	switch dst.ServicePort.GetAppProtocol() {
	case workloadapi.AppProtocol_HTTP11, workloadapi.AppProtocol_HTTP2, workloadapi.AppProtocol_GRPC:
		return protoHTTP, true
	case workloadapi.AppProtocol_TCP, workloadapi.AppProtocol_TLS:
		return protoL4, true
	}
	return protoL4, false
}

// serveTunnel serves a tunnel by its declared protocol, else by the one
// its first bytes show: HTTP/1.x on the tunnel's goroutine (h1server),
// h2c by the net/http server, anything else as L4.
func (p *Proxy) serveTunnel(c net.Conn, info *tunnelInfo) {
	hc := h1server.NewConn(&tunnelConn{Conn: c, info: info})
	r := hc.Reader()
	kind, declared := p.declaredProtocol(info)
	if !declared {
		var err error
		if kind, err = detect(r); err != nil {
			c.Close()
			return
		}
	}
	if kind != protoHTTP {
		p.l4.Add(1)
		defer p.l4.Done()
		p.serveL4(hc, info)
		return
	}
	if isH2Preface(r) {
		if !p.conns.hand(hc) {
			c.Close() // shutting down
		}
		return
	}
	p.h1.ServeConn(context.WithValue(context.Background(), tunnelKey{}, info), hc)
}

// isH2Preface reports whether the tunnel opens with the HTTP/2 preface
// ("PRI * HTTP/2.0…"), by its first four bytes: no HTTP/1.x request is
// shorter. (An HTTP/1.x request with the method PRI goes to the net/http
// server too, which serves HTTP/1.1 as well.)
func isH2Preface(r *bufio.Reader) bool {
	b, _ := r.Peek(4)
	return string(b) == "PRI "
}

// connListener feeds tunnels to the HTTP server.
type connListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) hand(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return tunnelAddr{} }

type tunnelAddr struct{}

func (tunnelAddr) Network() string { return "hbone" }
func (tunnelAddr) String() string  { return "hbone" }
