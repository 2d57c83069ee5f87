package hbone3

// UDP tunnels: CONNECT-UDP (RFC 9298) as an extended CONNECT (RFC 9220)
// whose UDP payloads travel as HTTP/3 datagrams (RFC 9297), client and
// server sides.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/ambientmesh/ambient/internal/connectudp"
	"github.com/ambientmesh/ambient/internal/hbone"
)

// ErrNoDatagrams: the tunnel server's HTTP/3 SETTINGS do not enable HTTP/3
// datagrams (SETTINGS_H3_DATAGRAM, RFC 9297) and extended CONNECT
// (SETTINGS_ENABLE_CONNECT_PROTOCOL, RFC 9220), so it cannot carry UDP;
// the request was not sent. The server needs upgrading, or the flow must
// go over HBONE on HTTP/2 (hbone.Client.DialUDP).
var ErrNoDatagrams = errors.New("hbone3: tunnel server does not enable HTTP/3 datagrams and extended CONNECT; no UDP tunnel sent")

// DatagramTooLargeError is UDPTunnel.WriteDatagram's error for a payload
// that does not fit in one QUIC DATAGRAM frame on the connection's current
// path: the datagram was not sent (there is no fallback to a capsule on
// the stream). It matches connectudp.ErrDatagramTooLarge with errors.Is.
type DatagramTooLargeError struct {
	Size int // the UDP payload given
	Max  int // the largest UDP payload the path takes now (it may grow with path MTU discovery)
}

func (e *DatagramTooLargeError) Error() string {
	return fmt.Sprintf("hbone3: %d-byte UDP payload does not fit in an HTTP/3 datagram on this QUIC path (at most %d bytes now); not sent", e.Size, e.Max)
}

// Is makes errors.Is(err, connectudp.ErrDatagramTooLarge) hold, so relays
// of either transport drop such datagrams alike.
func (e *DatagramTooLargeError) Is(target error) bool {
	return target == connectudp.ErrDatagramTooLarge
}

// DialUDP opens a UDP tunnel to t.Authority: a connect-udp extended
// CONNECT on a pooled connection. It first waits for the server's
// SETTINGS and fails with ErrNoDatagrams, sending nothing, unless they
// enable HTTP/3 datagrams and extended CONNECT. It returns once the
// server answered 200 with capsule-protocol: ?1. A refusal is a
// *hbone.StatusError. Close the tunnel to end the flow.
func (cl *Client) DialUDP(ctx context.Context, t hbone.Target) (*UDPTunnel, error) {
	req := connectUDPRequest(t)
	return dialPooled(ctx, cl, t, func(pc *pooledConn) (*UDPTunnel, error) {
		if err := awaitDatagramSettings(ctx, pc); err != nil {
			cl.release(pc)
			return nil, err
		}
		rs, release, err := cl.roundTrip(ctx, pc, req)
		if err != nil {
			return nil, err
		}
		if !capsuleProtocolTrue(rs.resp.Header.Get("Capsule-Protocol")) {
			rs.str.CancelRead(codeCancel)
			rs.str.CancelWrite(codeCancel)
			release()
			return nil, fmt.Errorf("hbone3: %s answered connect-udp without capsule-protocol: ?1", pc.key.addr)
		}
		return newUDPTunnel(rs.str, false, pc.qc.LocalAddr(), pc.qc.RemoteAddr(), release), nil
	})
}

// awaitDatagramSettings waits for the server's SETTINGS on pc and checks
// they allow a connect-udp tunnel with HTTP/3 datagrams.
func awaitDatagramSettings(ctx context.Context, pc *pooledConn) error {
	select {
	case <-pc.cc.ReceivedSettings():
	case <-pc.qc.Context().Done():
		return fmt.Errorf("%w: %w", errRetry, context.Cause(pc.qc.Context()))
	case <-ctx.Done():
		return fmt.Errorf("hbone3: waiting for the tunnel server's settings: %w", ctx.Err())
	}
	s := pc.cc.Settings()
	if !s.EnableDatagrams || !s.EnableExtendedConnect || !pc.qc.ConnectionState().SupportsDatagrams.Remote {
		return fmt.Errorf("%w (server %s: h3_datagram %t, extended CONNECT %t)", ErrNoDatagrams, pc.key.addr, s.EnableDatagrams, s.EnableExtendedConnect)
	}
	return nil
}

// connectUDPRequest is the connect-udp extended CONNECT for t as quic-go's
// request writer takes it: Proto becomes :protocol, the URL :scheme and
// :path (kept escaped: an IPv6 ':' is %3A).
func connectUDPRequest(t hbone.Target) *http.Request {
	h := make(http.Header, len(t.Header)+2)
	for k, vs := range t.Header {
		h[k] = vs
	}
	h["User-Agent"] = []string{""} // quic-go adds its own otherwise
	h["Capsule-Protocol"] = []string{"?1"}
	authority := t.Authority.String()
	u := &url.URL{Scheme: "https", Host: authority, RawPath: connectudp.Path(t.Authority)}
	u.Path, _ = url.PathUnescape(u.RawPath)
	return &http.Request{Method: http.MethodConnect, Proto: hbone.ProtocolConnectUDP, Host: authority, URL: u, Header: h}
}

// capsuleProtocolTrue reports a Capsule-Protocol value that is the
// structured-field Boolean true (RFC 9297 §3.4), parameters ignored, as
// package hbone reads it.
func capsuleProtocolTrue(v string) bool {
	item, _, _ := bytes.Cut(bytes.Trim([]byte(v), " \t"), []byte(";"))
	return string(item) == "?1"
}

// peerDatagrams reports whether the client's SETTINGS enabled HTTP/3
// datagrams, waiting up to wait for them (a client sends them first
// thing, so they are almost always here before its request).
func peerDatagrams(ctx context.Context, w http.ResponseWriter, wait time.Duration) bool {
	s, ok := w.(http3.Settingser)
	if !ok {
		return false
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-s.ReceivedSettings():
		return s.Settings().EnableDatagrams
	case <-ctx.Done():
	case <-timer.C:
	}
	return false
}

// h3DatagramStream is a request stream that also carries HTTP/3 datagrams:
// *http3.Stream on the server, *http3.RequestStream on the client.
type h3DatagramStream interface {
	h3Stream
	StreamID() quic.StreamID
	SendDatagram([]byte) error
	ReceiveDatagram(context.Context) ([]byte, error)
}

var (
	_ h3DatagramStream = (*http3.Stream)(nil)
	_ h3DatagramStream = (*http3.RequestStream)(nil)
)

// maxCapsuleValue bounds a DATAGRAM capsule read from the stream: the
// largest Context ID and UDP payload.
const maxCapsuleValue = 8 + connectudp.MaxUDPPayload

// UDPTunnel is an open connect-udp tunnel on HTTP/3, one UDP flow. It
// satisfies connectudp.Conn (as hbone's *connectudp.Session does) and
// hbone.DatagramTunnel.
//
// Each WriteDatagram is one HTTP/3 datagram (quarter stream ID, Context ID
// 0, the payload) in one QUIC DATAGRAM frame: unreliable, as UDP is. A
// payload too large for the path is refused with *DatagramTooLargeError.
// ReadDatagram returns UDP payloads that arrived as HTTP/3 datagrams or
// as DATAGRAM capsules on the stream (RFC 9297 lets a peer use either),
// in arrival order per path; other capsule types are skipped and
// datagrams with another Context ID dropped. The peer's FIN is io.EOF.
//
// Reads, writes and Close may run concurrently. Close ends the flow
// cleanly (FIN; STOP_SENDING if the peer had not finished), Abort resets
// it, CloseWrite sends only the FIN.
type UDPTunnel struct {
	str           h3DatagramStream
	capsules      bool // send DATAGRAM capsules: the peer has no HTTP/3 datagrams
	prefixLen     int  // quarter stream ID and Context ID bytes before a payload
	local, remote net.Addr
	onClose       func() // called once after Close or Abort (pool bookkeeping)

	recv    chan []byte   // received payloads from both paths, each owned
	ended   chan struct{} // closed once the peer's direction ended; readErr says how
	readErr error         // io.EOF or the failure; written before ended closes
	closed  chan struct{} // closed by Close and Abort
	cancel  context.CancelFunc
	wg      sync.WaitGroup // the two receive goroutines

	wmu       sync.Mutex // guards the fields below and writes to the stream
	wbuf      []byte
	wroteFIN  bool
	closeOnce sync.Once
}

var (
	_ connectudp.Conn      = (*UDPTunnel)(nil)
	_ hbone.DatagramTunnel = (*UDPTunnel)(nil)
	_ hbone.Aborter        = (*UDPTunnel)(nil)
)

// udpRecvQueue is how many received datagrams wait for ReadDatagram
// before the receive paths block (then quic-go queues 32 more per stream
// and drops the rest, as a full UDP socket buffer would).
const udpRecvQueue = 32

func newUDPTunnel(str h3DatagramStream, capsules bool, local, remote net.Addr, onClose func()) *UDPTunnel {
	ctx, cancel := context.WithCancel(context.Background())
	t := &UDPTunnel{
		str:       str,
		capsules:  capsules,
		prefixLen: quicvarint.Len(uint64(str.StreamID()/4)) + 1,
		local:     local,
		remote:    remote,
		onClose:   onClose,
		recv:      make(chan []byte, udpRecvQueue),
		ended:     make(chan struct{}),
		closed:    make(chan struct{}),
		cancel:    cancel,
	}
	t.wg.Add(2)
	go t.receiveDatagrams(ctx)
	go t.readCapsules()
	return t
}

// receiveDatagrams delivers the stream's HTTP/3 datagrams until the
// stream's receive side ends or the tunnel closes.
func (t *UDPTunnel) receiveDatagrams(ctx context.Context) {
	defer t.wg.Done()
	for {
		b, err := t.str.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		udp, ok, err := connectudp.ParseDatagram(b)
		if err != nil || !ok {
			continue // no Context ID, or not 0: dropped (RFC 9298 §5)
		}
		if !t.deliver(udp) {
			return
		}
	}
}

// readCapsules reads the stream until it ends, delivering the UDP
// payloads of DATAGRAM capsules; the end (FIN or reset) is the end of
// the peer's direction. Its 64 KiB capsule buffer is allocated only when
// a first byte arrives: a peer sending HTTP/3 datagrams never sends any.
func (t *UDPTunnel) readCapsules() {
	defer t.wg.Done()
	var first [1]byte
	var n int
	var err error
	for n == 0 && err == nil {
		n, err = t.str.Read(first[:])
	}
	if err != nil {
		t.endRead(err)
		return
	}
	cr := connectudp.NewCapsuleReader(io.MultiReader(bytes.NewReader(first[:n]), t.str), maxCapsuleValue)
	for {
		udp, err := cr.NextDatagram()
		if err != nil {
			t.endRead(err)
			return
		}
		if !t.deliver(bytes.Clone(udp)) {
			return
		}
	}
}

func (t *UDPTunnel) endRead(err error) {
	if err != io.EOF {
		err = fmt.Errorf("hbone3: connect-udp stream: %w", err)
	}
	t.readErr = err
	close(t.ended)
}

// deliver queues a received payload; false once the tunnel is closed.
func (t *UDPTunnel) deliver(p []byte) bool {
	select {
	case t.recv <- p:
		return true
	case <-t.closed:
		return false
	}
}

// ReadDatagram reads the next UDP payload into p and returns its length.
// A payload longer than p is dropped whole with connectudp.ErrShortBuffer.
// The peer's FIN is io.EOF.
func (t *UDPTunnel) ReadDatagram(p []byte) (int, error) {
	select {
	case b := <-t.recv:
		return take(p, b)
	default:
	}
	select {
	case b := <-t.recv:
		return take(p, b)
	case <-t.ended:
		select {
		case b := <-t.recv:
			return take(p, b)
		default:
		}
		return 0, t.readErr
	case <-t.closed:
		return 0, net.ErrClosed
	}
}

func take(p, b []byte) (int, error) {
	if len(b) > len(p) {
		return 0, connectudp.ErrShortBuffer
	}
	return copy(p, b), nil
}

var datagramBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1500); return &b }}

// WriteDatagram sends p as one UDP datagram: an HTTP/3 datagram, or a
// DATAGRAM capsule when the peer did not enable HTTP/3 datagrams (only a
// server tunnel can be in that mode; DialUDP refuses such servers). An
// empty p is a valid (empty) datagram.
func (t *UDPTunnel) WriteDatagram(p []byte) error {
	select {
	case <-t.closed:
		return net.ErrClosed
	default:
	}
	if len(p) > connectudp.MaxUDPPayload {
		return connectudp.ErrDatagramTooLarge
	}
	if t.capsules {
		t.wmu.Lock()
		defer t.wmu.Unlock()
		t.wbuf = connectudp.AppendDatagramCapsule(t.wbuf[:0], p)
		if _, err := t.str.Write(t.wbuf); err != nil {
			return fmt.Errorf("hbone3: connect-udp stream: %w", err)
		}
		return nil
	}
	bp := datagramBufs.Get().(*[]byte)
	b := append(append((*bp)[:0], 0), p...) // Context ID 0, payload
	err := t.str.SendDatagram(b)            // copies b
	*bp = b[:0]
	datagramBufs.Put(bp)
	if tooLarge, ok := errors.AsType[*quic.DatagramTooLargeError](err); ok {
		return &DatagramTooLargeError{Size: len(p), Max: max(0, int(tooLarge.MaxDatagramPayloadSize)-t.prefixLen)}
	}
	if err != nil {
		return fmt.Errorf("hbone3: sending HTTP/3 datagram: %w", err)
	}
	return nil
}

// CloseWrite ends the tunnel's sending direction with a FIN; datagrams
// from the peer are still read.
func (t *UDPTunnel) CloseWrite() error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.wroteFIN {
		return nil
	}
	t.wroteFIN = true
	return t.str.Close()
}

// Close ends the tunnel: a FIN if none was sent, STOP_SENDING if the
// peer's direction had not ended. Blocked reads and writes return.
func (t *UDPTunnel) Close() error {
	t.end(false)
	return nil
}

// Abort resets the tunnel both ways; the peer sees an error, not an end.
func (t *UDPTunnel) Abort() { t.end(true) }

func (t *UDPTunnel) end(abort bool) {
	t.closeOnce.Do(func() {
		close(t.closed)
		t.cancel()
		t.wmu.Lock()
		fin := t.wroteFIN
		t.wroteFIN = true
		t.wmu.Unlock()
		switch {
		case abort:
			t.str.CancelWrite(codeCancel)
		case !fin:
			t.str.Close()
		}
		select {
		case <-t.ended:
			if abort {
				t.str.CancelRead(codeCancel)
			}
		default:
			t.str.CancelRead(codeCancel)
		}
		t.wg.Wait()
		if t.onClose != nil {
			t.onClose()
		}
	})
}

// LocalAddr and RemoteAddr are the tunnel connection's QUIC addresses.
func (t *UDPTunnel) LocalAddr() net.Addr  { return t.local }
func (t *UDPTunnel) RemoteAddr() net.Addr { return t.remote }
