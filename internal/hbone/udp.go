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
	"syscall"

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

// BridgeDatagrams relays datagrams between a connect-udp tunnel and a
// datagram conn (a connected *net.UDPConn: each Read one datagram, each
// Write one) until the tunnel ends or either side fails, then closes
// both. It returns the UDP payload bytes carried each way. The server
// runs it for connect-udp streams when ServerConfig.Serve is nil; a Serve
// hook may call it too.
func BridgeDatagrams(tunnel net.Conn, udp net.Conn) (toUDP, toTunnel int64, err error) {
	sess := connectudp.NewStreamSession(tunnel)
	var (
		wg      sync.WaitGroup
		once    sync.Once
		stopErr error
	)
	stop := func(err error) {
		once.Do(func() {
			stopErr = err
			udp.Close()
			if err == nil {
				closeWrite(tunnel) // a clean end both ways, not a reset
			}
			tunnel.Close()
		})
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		toTunnel = pumpFromUDP(sess, udp, stop)
	}()
	toUDP = pumpToUDP(sess, udp, stop)
	wg.Wait()
	return toUDP, toTunnel, stopErr
}

// pumpToUDP sends each datagram from the tunnel to the socket. The
// tunnel's clean end (the client closed it) ends the bridge without error.
func pumpToUDP(sess *connectudp.Session, udp net.Conn, stop func(error)) int64 {
	var n int64
	bp := getBuf(connectudp.MaxUDPPayload)
	defer putBuf(bp)
	buf := (*bp)[:connectudp.MaxUDPPayload]
	for {
		m, err := sess.ReadDatagram(buf)
		if err == io.EOF {
			stop(nil)
			return n
		}
		if err != nil {
			stop(fmt.Errorf("hbone: connect-udp tunnel: %w", err))
			return n
		}
		if _, err := udp.Write(buf[:m]); err != nil {
			if isRefusedByPeer(err) {
				continue // ICMP port unreachable: UDP datagrams may be lost
			}
			stop(fmt.Errorf("hbone: send UDP datagram: %w", err))
			return n
		}
		n += int64(m)
	}
}

// pumpFromUDP sends each datagram the socket receives into the tunnel.
func pumpFromUDP(sess *connectudp.Session, udp net.Conn, stop func(error)) int64 {
	var n int64
	bp := getBuf(connectudp.MaxUDPPayload)
	defer putBuf(bp)
	buf := (*bp)[:connectudp.MaxUDPPayload]
	for {
		m, err := udp.Read(buf)
		if err != nil {
			if isRefusedByPeer(err) {
				continue
			}
			stop(quiet(fmt.Errorf("hbone: receive UDP datagram: %w", err)))
			return n
		}
		if err := sess.WriteDatagram(buf[:m]); err != nil {
			stop(quiet(fmt.Errorf("hbone: connect-udp tunnel: %w", err)))
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
