package hbone

// UDP tunnels: CONNECT-UDP (RFC 9298) as an extended CONNECT (RFC 8441)
// on HBONE, client and server sides.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ambientmesh/ambient/internal/connectudp"
)

// ErrExtendedConnectDisabled: the tunnel server did not enable extended
// CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL), so it cannot carry UDP; the
// request was not sent. The server needs upgrading, or the traffic must
// not be sent as UDP over HBONE.
var ErrExtendedConnectDisabled = errors.New("hbone: tunnel server does not enable extended CONNECT (RFC 8441); no UDP tunnel sent")

// DialUDP opens a UDP tunnel to t.Authority: a connect-udp extended
// CONNECT (RFC 9298) on a pooled connection, whose stream then carries
// capsules. It returns once the server answered 200 with
// capsule-protocol: ?1; each WriteDatagram on the Session is one UDP
// datagram to t.Authority, each ReadDatagram one datagram back. Close the
// Session to end the tunnel. A refusal is a *StatusError; a server that
// did not enable extended CONNECT gives ErrExtendedConnectDisabled
// without anything sent.
func (cl *Client) DialUDP(ctx context.Context, t Target) (*connectudp.Session, error) {
	if !t.Authority.IsValid() {
		return nil, errors.New("hbone: target needs an address and an authority")
	}
	fields, err := connectUDPFields(t)
	if err != nil {
		return nil, err
	}
	s, err := cl.dial(ctx, t, fields, ProtocolConnectUDP)
	if err != nil {
		return nil, err
	}
	return connectudp.NewStreamSession(s), nil
}

// awaitExtendedConnect waits for c's peer SETTINGS and reports whether
// they enable extended CONNECT. A connection that failed first is
// errRefused (the caller retries on another).
func (cl *Client) awaitExtendedConnect(ctx context.Context, c *conn) error {
	select {
	case <-c.peerSettings:
	case <-c.done:
		return errRefused
	case <-ctx.Done():
		return fmt.Errorf("hbone: waiting for the tunnel server's settings: %w", ctx.Err())
	}
	c.mu.Lock()
	ok := c.peerConnectProtocol
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w (server %s)", ErrExtendedConnectDisabled, c.nc.RemoteAddr())
	}
	return nil
}

// DefaultUDPIdleTimeout is ServerConfig.UDPIdleTimeout when unset: a UDP
// flow with no datagram either way for a minute is over. UDP has no end
// of its own, so without it a flow whose client vanished would hold its
// stream and socket for good. A minute is Envoy's UDP proxy default
// (idle_timeout) and outlasts the keepalives of protocols that keep UDP
// state alive (QUIC's 15–30 s, WireGuard's 25 s, NAT-T's 20 s). Istio
// (ztunnel) carries no UDP, so there is no mesh precedent to match.
const DefaultUDPIdleTimeout = 60 * time.Second

// ErrUDPIdle is the StreamResult.Err (wrapped) of a connect-udp flow that
// ended because no datagram crossed it either way for the idle timeout.
// The tunnel was still ended cleanly (END_STREAM / FIN, not a reset).
var ErrUDPIdle = errors.New("connect-udp flow idle")

// idleEndGrace bounds how long a relay that ended a flow cleanly (idle,
// or the socket side finished) waits for the client to end its own
// direction before it resets the stream.
const idleEndGrace = 5 * time.Second

// BridgeOptions tune BridgeDatagramsWith and RelayDatagrams.
type BridgeOptions struct {
	// IdleTimeout ends the flow once neither the tunnel nor the socket
	// has carried a datagram for this long. Zero or negative: never.
	IdleTimeout time.Duration
}

// DatagramTunnel is the tunnel side of a UDP relay: a connect-udp
// tunnel that can end its sending direction cleanly (END_STREAM or FIN)
// while still reading the peer's. An Aborter is aborted on failure.
type DatagramTunnel interface {
	connectudp.Conn
	CloseWrite() error
}

// BridgeDatagrams relays datagrams between a connect-udp tunnel stream
// (capsules) and a datagram conn (a connected *net.UDPConn: each Read one
// datagram, each Write one) until the tunnel ends, either side fails or
// the flow is idle for opts.IdleTimeout, then closes both; see
// RelayDatagrams. The server runs it for connect-udp streams when
// ServerConfig.Serve is nil; a Serve hook may call it too.
func BridgeDatagrams(tunnel net.Conn, udp net.Conn, opts BridgeOptions) (toUDP, toTunnel int64, err error) {
	return RelayDatagrams(streamTunnel{connectudp.NewStreamSession(tunnel), tunnel}, udp, opts)
}

// streamTunnel is a capsule Session on a stream, closable one way.
type streamTunnel struct {
	*connectudp.Session
	stream net.Conn
}

func (t streamTunnel) CloseWrite() error { closeWrite(t.stream); return nil }

// RelayDatagrams relays datagrams between a connect-udp tunnel of any
// transport and a datagram conn until the flow ends, then closes both and
// returns the UDP payload bytes carried each way and why it ended:
//
//   - the tunnel's clean end (io.EOF): nil; the relay ends its own
//     direction cleanly and closes the socket.
//   - no datagram either way for opts.IdleTimeout: an error wrapping
//     ErrUDPIdle. The socket is closed and the tunnel ended cleanly
//     (CloseWrite); the relay then waits up to a few seconds for the
//     peer to end its direction before closing the tunnel.
//   - a failure of either side: that error; the tunnel is aborted.
//
// A datagram too large for the tunnel (errors.Is
// connectudp.ErrDatagramTooLarge) is dropped, as a router drops a packet
// over the path MTU; an ICMP port unreachable on the socket loses a
// datagram, nothing more.
func RelayDatagrams(tunnel DatagramTunnel, udp net.Conn, opts BridgeOptions) (toUDP, toTunnel int64, err error) {
	r := &relay{tunnel: tunnel, udp: udp, start: time.Now(), timeout: opts.IdleTimeout}
	if r.timeout > 0 {
		r.mu.Lock()
		r.idle = time.AfterFunc(r.timeout, r.checkIdle)
		r.mu.Unlock()
	}
	var wg sync.WaitGroup
	wg.Go(func() { toTunnel = r.pumpFromUDP() })
	toUDP = r.pumpToUDP()
	r.stop(nil) // the tunnel has ended; a no-op if the flow stopped first
	r.mu.Lock()
	for _, t := range []*time.Timer{r.idle, r.grace} {
		if t != nil {
			t.Stop()
		}
	}
	r.mu.Unlock()
	tunnel.Close()
	wg.Wait()
	return toUDP, toTunnel, r.err
}

// relay is one UDP flow between a tunnel and a socket.
type relay struct {
	tunnel  DatagramTunnel
	udp     net.Conn
	start   time.Time
	timeout time.Duration // idle timeout, 0 for none
	last    atomic.Int64  // time.Since(start) at the latest datagram, either way

	mu      sync.Mutex  // guards the fields below
	idle    *time.Timer // re-arms itself for the time left; never reset per datagram
	stopped bool
	err     error       // why the flow ended
	grace   *time.Timer // after a clean stop: closes the tunnel if the peer lingers
}

func (r *relay) touch() { r.last.Store(int64(time.Since(r.start))) }

// checkIdle runs when the idle timer fires: it ends the flow if nothing
// moved for the timeout, else re-arms the timer for the time left.
func (r *relay) checkIdle() {
	quiet := time.Since(r.start) - time.Duration(r.last.Load())
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	if quiet < r.timeout {
		r.idle.Reset(r.timeout - quiet)
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	r.stop(fmt.Errorf("hbone: %w: no datagram either way for %v", ErrUDPIdle, r.timeout))
}

func (r *relay) isStopped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopped
}

// stop ends the flow once: the socket closes, and the tunnel either ends
// cleanly (err nil or ErrUDPIdle; closed for good after idleEndGrace if
// the peer does not end its direction) or is aborted.
func (r *relay) stop(err error) {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	r.stopped, r.err = true, err
	clean := err == nil || errors.Is(err, ErrUDPIdle)
	if clean {
		r.grace = time.AfterFunc(idleEndGrace, func() { r.tunnel.Close() })
	}
	r.mu.Unlock()
	r.udp.Close()
	if clean {
		r.tunnel.CloseWrite()
		return
	}
	if a, ok := r.tunnel.(Aborter); ok {
		a.Abort()
		return
	}
	r.tunnel.Close()
}

// pumpToUDP sends each datagram from the tunnel to the socket until the
// tunnel ends. After the flow stopped it only drains the tunnel, waiting
// for the peer's end.
func (r *relay) pumpToUDP() int64 {
	var n int64
	bp := getBuf(connectudp.MaxUDPPayload)
	defer putBuf(bp)
	buf := (*bp)[:connectudp.MaxUDPPayload]
	for {
		m, err := r.tunnel.ReadDatagram(buf)
		if err == io.EOF {
			return n
		}
		if errors.Is(err, connectudp.ErrShortBuffer) {
			continue // cannot happen with a full-size buffer
		}
		if err != nil {
			r.stop(fmt.Errorf("hbone: connect-udp tunnel: %w", err))
			return n
		}
		if r.isStopped() {
			continue
		}
		r.touch()
		if _, err := r.udp.Write(buf[:m]); err != nil {
			if isRefusedByPeer(err) {
				continue // ICMP port unreachable: UDP datagrams may be lost
			}
			r.stop(quiet(fmt.Errorf("hbone: send UDP datagram: %w", err)))
			continue
		}
		n += int64(m)
	}
}

// pumpFromUDP sends each datagram the socket receives into the tunnel.
func (r *relay) pumpFromUDP() int64 {
	var n int64
	bp := getBuf(connectudp.MaxUDPPayload)
	defer putBuf(bp)
	buf := (*bp)[:connectudp.MaxUDPPayload]
	for {
		m, err := r.udp.Read(buf)
		if err != nil {
			if isRefusedByPeer(err) {
				continue
			}
			r.stop(quiet(fmt.Errorf("hbone: receive UDP datagram: %w", err)))
			return n
		}
		r.touch()
		if err := r.tunnel.WriteDatagram(buf[:m]); err != nil {
			if errors.Is(err, connectudp.ErrDatagramTooLarge) {
				continue // over the tunnel's path limit: dropped
			}
			r.stop(quiet(fmt.Errorf("hbone: connect-udp tunnel: %w", err)))
			return n
		}
		n += int64(m)
	}
}

// isRefusedByPeer reports the error a connected UDP socket returns after
// an ICMP port unreachable: a lost datagram, not the end of the flow.
func isRefusedByPeer(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}
