package hbone3

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/internal/connectudp"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/hbonetest"
	"github.com/ambientmesh/ambient/internal/identity"
)

var startUDPEcho = hbonetest.StartUDPEcho

// udpPayload is datagram i of a test run: 1 to 1,200 bytes (1,200 fits an HTTP/3 datagram before path MTU discovery).
func udpPayload(i int) []byte { return hbonetest.UDPPayload(i, 1200) }

// readWithin is ReadDatagram bounded by d (the tunnel has no deadlines).
func readWithin(t testing.TB, u *UDPTunnel, p []byte, d time.Duration) (int, error) {
	t.Helper()
	timer := time.AfterFunc(d, func() { u.Abort() })
	defer timer.Stop()
	return u.ReadDatagram(p)
}

// waitResult waits for the server's first stream result.
func waitResult(t testing.TB, ts *tunnelServer) hbone.StreamResult {
	t.Helper()
	waitFor(t, "stream result", func() bool { return len(ts.streamResults()) > 0 })
	return ts.streamResults()[0]
}

// TestDialUDP_EchoKeepsThousandDatagramsIntact: 1,000 datagrams of 1 to
// 1,200 bytes go client → HTTP/3 datagrams → the server's default UDP
// dial → a UDP echo server and back, each intact and whole (16 in flight
// at most, so loopback loses none); Authorize saw Protocol connect-udp,
// and the stream result counts the payload bytes each way.
func TestDialUDP_EchoKeepsThousandDatagramsIntact(t *testing.T) {
	echoAddr := startUDPEcho(t)
	var protocol atomic.Value
	ts, cl := meshPair(t, ServerConfig{Authorize: func(_ context.Context, st *Stream) error {
		protocol.Store(st.Protocol)
		return nil
	}})
	u, err := cl.DialUDP(ctxT(t), target(ts, echoAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	watchdog := time.AfterFunc(testTimeout, u.Abort)
	defer watchdog.Stop()

	const n, window = 1000, 16
	credit := make(chan struct{}, window)
	for range window {
		credit <- struct{}{}
	}
	writeErr := make(chan error, 1)
	go func() {
		for i := range n {
			<-credit
			if err := u.WriteDatagram(udpPayload(i)); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	// HTTP/3 datagrams may be reordered in theory; match by content.
	want := make(map[string]int, n)
	var total int64
	for i := range n {
		want[string(udpPayload(i))]++
		total += int64(len(udpPayload(i)))
	}
	buf := make([]byte, 2048)
	for i := range n {
		m, err := u.ReadDatagram(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if want[string(buf[:m])] == 0 {
			t.Fatalf("datagram %d: %d bytes that were never sent (boundaries or bytes lost)", i, m)
		}
		want[string(buf[:m])]--
		credit <- struct{}{}
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if p, _ := protocol.Load().(string); p != hbone.ProtocolConnectUDP {
		t.Errorf("Authorize saw Protocol %q, want %q", p, hbone.ProtocolConnectUDP)
	}
	u.Close()
	r := waitResult(t, ts)
	if r.Status != 200 || r.Err != nil || r.Protocol != hbone.ProtocolConnectUDP || r.Authority != echoAddr || r.BytesIn != total || r.BytesOut != total {
		t.Errorf("result = status %d protocol %q authority %s in %d out %d err %v; want 200 %q %s %d %d, no error",
			r.Status, r.Protocol, r.Authority, r.BytesIn, r.BytesOut, r.Err, hbone.ProtocolConnectUDP, echoAddr, total, total)
	}
	if _, ok := r.Upstream.(*net.UDPConn); !ok {
		t.Errorf("upstream is %T, want the dialled *net.UDPConn", r.Upstream)
	}
}

// TestDialUDP_DatagramOverPathLimitIsAnError: a payload too large for a
// QUIC DATAGRAM frame is refused by WriteDatagram, saying so (it matches
// connectudp.ErrDatagramTooLarge); the tunnel still works afterwards.
func TestDialUDP_DatagramOverPathLimitIsAnError(t *testing.T) {
	echoAddr := startUDPEcho(t)
	ts, cl := meshPair(t, ServerConfig{})
	u, err := cl.DialUDP(ctxT(t), target(ts, echoAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	err = u.WriteDatagram(make([]byte, 1600)) // over any QUIC packet quic-go sends (1452)
	var tooLarge *DatagramTooLargeError
	if !errors.As(err, &tooLarge) || !errors.Is(err, connectudp.ErrDatagramTooLarge) || tooLarge.Size != 1600 || tooLarge.Max < 1200 || tooLarge.Max >= 1600 {
		t.Fatalf("WriteDatagram(1600 bytes) = %v, want a DatagramTooLargeError with 1200 <= Max < 1600", err)
	}
	if !strings.Contains(err.Error(), "does not fit") {
		t.Errorf("error %q does not say the datagram does not fit", err)
	}
	if err := u.WriteDatagram([]byte("still open")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	if n, err := readWithin(t, u, buf, testTimeout); err != nil || string(buf[:n]) != "still open" {
		t.Fatalf("echo after the refused datagram = %q, %v", buf[:n], err)
	}
}

// connectUDPRaw is a connect-udp request for dest as rawClient sends it,
// with header h (nil: capsule-protocol ?1) and path (empty: dest's).
func connectUDPRaw(dest netip.AddrPort, path string, h http.Header) *http.Request {
	if h == nil {
		h = http.Header{"Capsule-Protocol": {"?1"}}
	}
	if path == "" {
		path = connectudp.Path(dest)
	}
	u := &url.URL{Scheme: "https", Host: dest.String(), RawPath: path}
	u.Path, _ = url.PathUnescape(path)
	return &http.Request{Method: http.MethodConnect, Proto: hbone.ProtocolConnectUDP, Host: dest.String(), URL: u, Header: h}
}

// TestServer_ConnectUDPRequestStatuses: bad connect-udp requests get the
// statuses hbone gives them (400, or 501 for an unknown :protocol) and
// are never dialled; the valid one is answered 200 with
// capsule-protocol: ?1.
func TestServer_ConnectUDPRequestStatuses(t *testing.T) {
	p := newPKI(t, td)
	echoAddr := startUDPEcho(t)
	other := netip.AddrPortFrom(echoAddr.Addr(), echoAddr.Port()+1)
	var dials atomic.Int64
	ts := startServer(t, p.Source(serverID), bundles(p), ServerConfig{
		Dial: func(ctx context.Context, st *Stream) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "udp", st.Authority.String())
		},
	})
	raw := dialRaw(t, ts, p.Source(clientID), bundles(p))
	websocket := connectUDPRaw(echoAddr, "/chat", http.Header{})
	websocket.Proto = "websocket"
	for _, tc := range []struct {
		name string
		req  *http.Request
		want int
	}{
		{"path and authority name different targets", connectUDPRaw(echoAddr, connectudp.Path(other), nil), 400},
		{"missing capsule-protocol", connectUDPRaw(echoAddr, "", http.Header{}), 400},
		{"capsule-protocol false", connectUDPRaw(echoAddr, "", http.Header{"Capsule-Protocol": {"?0"}}), 400},
		{"path is a host name", connectUDPRaw(echoAddr, "/.well-known/masque/udp/localhost/53/", nil), 400},
		{"path without trailing slash", connectUDPRaw(echoAddr, strings.TrimSuffix(connectudp.Path(echoAddr), "/"), nil), 400},
		{"unknown protocol", websocket, 501},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := raw.request(t, tc.req); got != tc.want {
				t.Fatalf("status = %d, want %d", got, tc.want)
			}
		})
	}
	if n := dials.Load(); n != 0 {
		t.Fatalf("server dialled %d times for refused requests", n)
	}
	rs, resp := raw.open(t, connectUDPRaw(echoAddr, "", nil))
	defer rs.CancelWrite(codeCancel)
	if resp.StatusCode != 200 || resp.Header.Get("Capsule-Protocol") != "?1" {
		t.Fatalf("valid connect-udp: %d %v, want 200 with capsule-protocol ?1", resp.StatusCode, resp.Header)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("server dialled %d times, want 1", n)
	}
}

// open sends req and returns its stream and response.
func (rc *rawClient) open(t testing.TB, req *http.Request) (*http3.RequestStream, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rc.timeout)
	defer cancel()
	rs, err := rc.cc.OpenRequestStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rs.SetDeadline(time.Now().Add(rc.timeout))
	if err := rs.SendRequestHeader(req); err != nil {
		t.Fatal(err)
	}
	resp, err := rs.ReadResponse()
	if err != nil {
		t.Fatal(err)
	}
	return rs, resp
}

// TestServer_ConnectUDPCapsulesWithoutH3Datagrams: a client that did not
// enable HTTP/3 datagrams sends DATAGRAM capsules on the stream (an
// unknown capsule type among them, skipped); the server relays them and
// answers with capsules too, each echo whole.
func TestServer_ConnectUDPCapsulesWithoutH3Datagrams(t *testing.T) {
	p := newPKI(t, td)
	echoAddr := startUDPEcho(t)
	ts := startServer(t, p.Source(serverID), bundles(p), ServerConfig{})
	raw := dialRaw(t, ts, p.Source(clientID), bundles(p)) // no EnableDatagrams
	rs, resp := raw.open(t, connectUDPRaw(echoAddr, "", nil))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	cr := connectudp.NewCapsuleReader(rs, 2048)
	for i, msg := range []string{"a", "query", strings.Repeat("x", 1400)} {
		var b []byte
		if i == 1 {
			b = connectudp.AppendCapsule(b, 0x2a, []byte("unknown capsule"))
		}
		b = connectudp.AppendDatagramCapsule(b, []byte(msg))
		if _, err := rs.Write(b); err != nil {
			t.Fatal(err)
		}
		got, err := cr.NextDatagram()
		if err != nil || string(got) != msg {
			t.Fatalf("echo %d = %q, %v; want %q", i, got, err, msg)
		}
	}
	rs.Close() // FIN: the flow ends cleanly
	if _, err := cr.NextDatagram(); err != io.EOF {
		t.Fatalf("after our FIN the server's direction ended with %v, want io.EOF", err)
	}
	r := waitResult(t, ts)
	if r.Status != 200 || r.Err != nil || r.BytesIn != 1406 || r.BytesOut != 1406 {
		t.Fatalf("result = %d in %d out %d err %v; want 200, 1406 each way, no error", r.Status, r.BytesIn, r.BytesOut, r.Err)
	}
}

// TestDialUDP_RefusesServerWithoutH3Datagrams: against an HTTP/3 server
// whose SETTINGS do not enable datagrams, DialUDP fails with
// ErrNoDatagrams and sends no request.
func TestDialUDP_RefusesServerWithoutH3Datagrams(t *testing.T) {
	p := newPKI(t, td)
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pc}
	tlsCfg := identity.ServerConfig(p.Source(serverID), bundles(p), td, identity.WithNextProtos(identity.ALPNHTTP3))
	ln, err := tr.Listen(tlsCfg, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int64
	srv := &http3.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.WriteHeader(200)
	})}
	done := make(chan struct{})
	go func() { defer close(done); srv.ServeListener(ln) }()
	t.Cleanup(func() { srv.Close(); ln.Close(); <-done; tr.Close(); pc.Close() })

	cl := newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.Source(clientID)})
	tgt := hbone.Target{Source: clientID, Destination: serverID, Address: netip.MustParseAddrPort(pc.LocalAddr().String()), Authority: netip.MustParseAddrPort("10.0.0.1:53")}
	_, err = cl.DialUDP(ctxT(t), tgt)
	if !errors.Is(err, ErrNoDatagrams) {
		t.Fatalf("DialUDP error = %v, want ErrNoDatagrams", err)
	}
	if n := requests.Load(); n != 0 {
		t.Fatalf("server saw %d requests, want none", n)
	}
	if _, streams := cl.PoolStats(); streams != 0 {
		t.Fatalf("refused DialUDP left %d stream slots taken", streams)
	}
}

// TestUDPIdle_SilentFlowEnds: with UDPIdleTimeout 200ms a flow with no
// datagram either way ends: the client reads a clean end (io.EOF), and the
// stream result wraps hbone.ErrUDPIdle.
func TestUDPIdle_SilentFlowEnds(t *testing.T) {
	echoAddr := startUDPEcho(t)
	ts, cl := meshPair(t, ServerConfig{UDPIdleTimeout: 200 * time.Millisecond})
	u, err := cl.DialUDP(ctxT(t), target(ts, echoAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.WriteDatagram([]byte("one")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := readWithin(t, u, buf, testTimeout); err != nil || string(buf[:n]) != "one" {
		t.Fatalf("echo = %q, %v", buf[:n], err)
	}
	start := time.Now()
	if _, err := readWithin(t, u, buf, 10*time.Second); err != io.EOF {
		t.Fatalf("silent flow: read %v, want io.EOF (a clean end)", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("flow ended after %v of silence, before the 200ms idle timeout", d)
	}
	u.Close()
	r := waitResult(t, ts)
	if r.Status != 200 || !errors.Is(r.Err, hbone.ErrUDPIdle) || r.BytesIn != 3 || r.BytesOut != 3 {
		t.Fatalf("result = %d in %d out %d err %v; want 200, 3 each way, ErrUDPIdle", r.Status, r.BytesIn, r.BytesOut, r.Err)
	}
}

// TestUDPIdle_BusyFlowStays: a datagram every 50ms for a second keeps a
// flow with a 200ms idle timeout open.
func TestUDPIdle_BusyFlowStays(t *testing.T) {
	echoAddr := startUDPEcho(t)
	ts, cl := meshPair(t, ServerConfig{UDPIdleTimeout: 200 * time.Millisecond})
	u, err := cl.DialUDP(ctxT(t), target(ts, echoAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	buf := make([]byte, 64)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); <-tick.C {
		if err := u.WriteDatagram([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if n, err := readWithin(t, u, buf, testTimeout); err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("echo = %q, %v (flow ended early? results %v)", buf[:n], err, ts.streamResults())
		}
	}
	if rs := ts.streamResults(); len(rs) != 0 {
		t.Fatalf("busy flow ended: %+v", rs[0].Err)
	}
}

// TestDialUDP_StreamEndClosesUpstreamSocket: the client's Close ends the
// flow: the server's UDP socket is closed (the Dial wrapper sees it).
func TestDialUDP_StreamEndClosesUpstreamSocket(t *testing.T) {
	echoAddr := startUDPEcho(t)
	closed := make(chan struct{})
	ts, cl := meshPair(t, ServerConfig{Dial: func(ctx context.Context, st *Stream) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "udp", st.Authority.String())
		if err != nil {
			return nil, err
		}
		return &closeNotifyConn{Conn: c, closed: closed}, nil
	}})
	u, err := cl.DialUDP(ctxT(t), target(ts, echoAddr))
	if err != nil {
		t.Fatal(err)
	}
	u.Close()
	select {
	case <-closed:
	case <-time.After(testTimeout):
		t.Fatal("upstream UDP socket not closed after the client closed the tunnel")
	}
	if r := waitResult(t, ts); r.Err != nil {
		t.Fatalf("result err = %v, want a clean end", r.Err)
	}
}

type closeNotifyConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *closeNotifyConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

var _ connectudp.Conn = (*UDPTunnel)(nil)
