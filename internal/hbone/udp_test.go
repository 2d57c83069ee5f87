package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambientmesh/ambient/internal/connectudp"
	"github.com/ambientmesh/ambient/internal/hbonetest"
	"github.com/ambientmesh/ambient/internal/identity"
)

var startUDPEcho = hbonetest.StartUDPEcho

// udpPayload is datagram i of a test run: 1 to 1,400 bytes.
func udpPayload(i int) []byte { return hbonetest.UDPPayload(i, 1400) }

// TestDialUDP_EchoKeepsThousandDatagramsIntact: 1,000 datagrams of 1 to
// 1,400 bytes go client Session → HBONE connect-udp stream → the server's
// default UDP dial → a UDP echo server and back, each intact and whole, in
// order; the server saw Protocol connect-udp and counted the payload bytes.
func TestDialUDP_EchoKeepsThousandDatagramsIntact(t *testing.T) {
	echoAddr := startUDPEcho(t)
	var protocols sync.Map
	ts, cl := meshPair(t, ServerConfig{Authorize: func(_ context.Context, st *Stream) error {
		protocols.Store(st.Authority, st.Protocol)
		return nil
	}})
	sess, err := cl.DialUDP(ctxT(t), target(ts, echoAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	sess.Stream().(net.Conn).SetReadDeadline(time.Now().Add(testTimout))

	const n, window = 1000, 16 // in flight at once: loopback UDP must not drop
	credit := make(chan struct{}, window)
	for range window {
		credit <- struct{}{}
	}
	var total int64
	writeErr := make(chan error, 1)
	go func() {
		for i := range n {
			<-credit
			if err := sess.WriteDatagram(udpPayload(i)); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	buf := make([]byte, 2048)
	for i := range n {
		m, err := sess.ReadDatagram(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if want := udpPayload(i); !bytes.Equal(buf[:m], want) {
			t.Fatalf("datagram %d: got %d bytes, want %d (boundaries or bytes lost)", i, m, len(want))
		}
		total += int64(m)
		credit <- struct{}{}
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if p, _ := protocols.Load(echoAddr); p != ProtocolConnectUDP {
		t.Errorf("Authorize saw Protocol %q, want %q", p, ProtocolConnectUDP)
	}
	sess.Close()
	waitFor(t, "stream result", func() bool { return len(ts.streamResults()) == 1 })
	r := ts.streamResults()[0]
	if r.Status != 200 || r.Protocol != ProtocolConnectUDP || r.Authority != echoAddr || r.BytesIn != total || r.BytesOut != total {
		t.Errorf("result = status %d protocol %q authority %s in %d out %d err %v; want 200 %q %s %d %d",
			r.Status, r.Protocol, r.Authority, r.BytesIn, r.BytesOut, r.Err, ProtocolConnectUDP, echoAddr, total, total)
	}
	if _, ok := r.Upstream.(*net.UDPConn); !ok {
		t.Errorf("upstream is %T, want the dialled *net.UDPConn", r.Upstream)
	}
}

// TestDialUDP_ServeHookGetsCapsuleStream: with ServerConfig.Serve the
// connect-udp stream is handed over as is; a Session on it reads the
// client's datagrams and answers them.
func TestDialUDP_ServeHookGetsCapsuleStream(t *testing.T) {
	dest := netip.MustParseAddrPort("[fd00::53]:53")
	ts, cl := meshPair(t, ServerConfig{Serve: func(_ context.Context, st *Stream, c net.Conn) {
		sess := connectudp.NewStreamSession(c)
		defer sess.Close()
		if st.Protocol != ProtocolConnectUDP || st.Authority != dest {
			return
		}
		buf := make([]byte, 1500)
		for {
			n, err := sess.ReadDatagram(buf)
			if err != nil {
				return
			}
			if sess.WriteDatagram(bytes.ToUpper(buf[:n])) != nil {
				return
			}
		}
	}})
	sess, err := cl.DialUDP(ctxT(t), target(ts, dest))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	buf := make([]byte, 1500)
	for _, msg := range []string{"a", "query", strings.Repeat("x", 1400)} {
		if err := sess.WriteDatagram([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		n, err := sess.ReadDatagram(buf)
		if err != nil || string(buf[:n]) != strings.ToUpper(msg) {
			t.Fatalf("reply = %q, %v; want %q", buf[:n], err, strings.ToUpper(msg))
		}
	}
}

// udpRequest is a well-formed connect-udp request for dest, less the
// fields named in drop, plus extra.
func udpRequest(dest netip.AddrPort, drop string, extra ...[2]string) [][2]string {
	var out [][2]string
	for _, f := range [][2]string{
		{":method", "CONNECT"}, {":protocol", "connect-udp"}, {":scheme", "https"},
		{":authority", dest.String()}, {":path", connectudp.Path(dest)}, {"capsule-protocol", "?1"},
	} {
		if f[0] != drop {
			out = append(out, f)
		}
	}
	return append(out, extra...)
}

// udpRequestWith is a well-formed connect-udp request for dest with the
// named field's value replaced.
func udpRequestWith(dest netip.AddrPort, name, value string) [][2]string {
	fields := udpRequest(dest, "")
	for i := range fields {
		if fields[i][0] == name {
			fields[i][1] = value
		}
	}
	return fields
}

// responseHeaders opens a stream and returns its response header fields.
func (r *rawH2) responseHeaders(fields [][2]string) []hpack.HeaderField {
	r.t.Helper()
	id := r.open(fields)
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			r.t.Fatalf("reading response: %v", err)
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
			return h.Fields
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			r.t.Fatalf("stream reset: %v", rst.ErrCode)
		}
	}
}

// TestServer_ConnectUDPRequestStatuses: malformed connect-udp requests
// get 400, an unknown :protocol 501, and only the valid one is dialled
// and answered 200 with capsule-protocol: ?1.
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
	withPath := func(path string) [][2]string { return udpRequestWith(echoAddr, ":path", path) }
	for _, tc := range []struct {
		name   string
		fields [][2]string
		want   int
	}{
		{"path and authority name different targets", withPath(connectudp.Path(other)), 400},
		{"missing capsule-protocol", udpRequest(echoAddr, "capsule-protocol"), 400},
		{"capsule-protocol false", udpRequestWith(echoAddr, "capsule-protocol", "?0"), 400},
		{"path is a host name", withPath("/.well-known/masque/udp/localhost/53/"), 400},
		{"path without trailing slash", withPath(strings.TrimSuffix(connectudp.Path(echoAddr), "/")), 400},
		{"missing path", udpRequest(echoAddr, ":path"), 400},
		{"scheme http", udpRequestWith(echoAddr, ":scheme", "http"), 400},
		{"path without protocol", udpRequest(echoAddr, ":protocol"), 400},
		{"scheme and path on classic CONNECT", [][2]string{{":method", "CONNECT"}, {":scheme", "https"}, {":authority", echoAddr.String()}, {":path", "/"}}, 400},
		{"unknown protocol", [][2]string{{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", "https"}, {":authority", echoAddr.String()}, {":path", "/chat"}}, 501},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := raw.request(tc.fields); got != tc.want {
				t.Fatalf("status = %d, want %d", got, tc.want)
			}
		})
	}
	if n := dials.Load(); n != 0 {
		t.Fatalf("server dialled %d times for refused requests", n)
	}
	fields := raw.responseHeaders(udpRequest(echoAddr, ""))
	var status, capsule string
	for _, f := range fields {
		switch f.Name {
		case ":status":
			status = f.Value
		case "capsule-protocol":
			capsule = f.Value
		}
	}
	if status != "200" || capsule != "?1" {
		t.Fatalf("valid connect-udp: response %v, want 200 with capsule-protocol ?1", fields)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("server dialled %d times, want 1", n)
	}
}

func TestParseRequest_ExtendedConnect(t *testing.T) {
	dest := netip.MustParseAddrPort("[fd00::1]:5353")
	mapped := netip.MustParseAddrPort("[::ffff:10.0.0.1]:53")
	hf := func(pairs [][2]string) []hpack.HeaderField {
		var out []hpack.HeaderField
		for _, p := range pairs {
			out = append(out, hpack.HeaderField{Name: p[0], Value: p[1]})
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		fields  [][2]string
		want    Request
		wantErr error
	}{
		{"connect-udp", udpRequest(dest, ""), Request{Authority: dest, Protocol: ProtocolConnectUDP}, nil},
		{"capsule-protocol with a parameter", udpRequestWith(dest, "capsule-protocol", "?1;x=2"), Request{Authority: dest, Protocol: ProtocolConnectUDP}, nil},
		{"mapped IPv4 in the path matches its IPv4 authority",
			[][2]string{{":method", "CONNECT"}, {":protocol", "connect-udp"}, {":scheme", "https"}, {":authority", "10.0.0.1:53"}, {":path", connectudp.Path(mapped)}, {"capsule-protocol", "?1"}},
			Request{Authority: netip.MustParseAddrPort("10.0.0.1:53"), Protocol: ProtocolConnectUDP}, nil},
		{"classic CONNECT unchanged", [][2]string{{":method", "CONNECT"}, {":authority", dest.String()}}, Request{Authority: dest}, nil},
		{"unknown protocol", [][2]string{{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", "https"}, {":authority", dest.String()}, {":path", "/"}}, Request{}, ErrUnknownProtocol},
		{"repeated protocol", udpRequest(dest, "", [2]string{":protocol", "connect-udp"}), Request{}, ErrBadPseudoHeader},
		{"path without protocol", udpRequest(dest, ":protocol"), Request{}, ErrBadPseudoHeader},
		{"protocol without path", udpRequest(dest, ":path"), Request{}, ErrBadExtendedConnect},
		{"protocol without scheme", udpRequest(dest, ":scheme"), Request{}, ErrBadExtendedConnect},
		{"mismatch", [][2]string{{":method", "CONNECT"}, {":protocol", "connect-udp"}, {":scheme", "https"}, {":authority", "10.0.0.1:53"}, {":path", connectudp.Path(dest)}, {"capsule-protocol", "?1"}}, Request{}, ErrTargetMismatch},
		{"bad path", [][2]string{{":method", "CONNECT"}, {":protocol", "connect-udp"}, {":scheme", "https"}, {":authority", "10.0.0.1:53"}, {":path", "/10.0.0.1/53/"}, {"capsule-protocol", "?1"}}, Request{}, connectudp.ErrBadPath},
		{"no capsule-protocol", udpRequest(dest, "capsule-protocol"), Request{}, ErrMissingCapsuleProtocol},
		{"GET with protocol", append([][2]string{{":method", "GET"}}, udpRequest(dest, ":method")...), Request{}, ErrNotConnect},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRequest(hf(tc.fields))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Authority != tc.want.Authority || got.Protocol != tc.want.Protocol {
				t.Fatalf("ParseRequest = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// fakeH2Server is a hand-written HTTP/2 tunnel server: it sends the
// settings it is given, records every request header block and answers
// each with the given response fields.
type fakeH2Server struct {
	addr     netip.AddrPort
	mu       sync.Mutex
	requests [][]hpack.HeaderField
}

func (f *fakeH2Server) seen() [][]hpack.HeaderField {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]hpack.HeaderField(nil), f.requests...)
}

func startFakeH2Server(t *testing.T, p *pki, settings []http2.Setting, response []hpack.HeaderField) *fakeH2Server {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", identity.ServerConfig(p.Source(serverID), bundles(p), td))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeH2Server{addr: netip.MustParseAddrPort(ln.Addr().String())}
	var wg sync.WaitGroup
	var conns sync.Map
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(nc, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				f.serve(nc, settings, response)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	return f
}

func (f *fakeH2Server) serve(nc net.Conn, settings []http2.Setting, response []hpack.HeaderField) {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := nc.Read(preface); err != nil {
		return
	}
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if fr.WriteSettings(settings...) != nil {
		return
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for {
		frame, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch frame := frame.(type) {
		case *http2.SettingsFrame:
			if !frame.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			f.mu.Lock()
			f.requests = append(f.requests, frame.Fields)
			f.mu.Unlock()
			hb.Reset()
			for _, h := range response {
				enc.WriteField(h)
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: frame.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
		}
	}
}

func fakeClient(t *testing.T, p *pki) *Client {
	return newClient(t, bundles(p), map[spiffeid.ID]x509svid.Source{clientID: p.Source(clientID)})
}

// TestDialUDP_RefusesServerWithoutExtendedConnect: a server whose
// SETTINGS do not enable extended CONNECT gets no connect-udp request;
// DialUDP fails with ErrExtendedConnectDisabled, and the connection still
// carries classic CONNECT (the only request the server ever saw).
func TestDialUDP_RefusesServerWithoutExtendedConnect(t *testing.T) {
	p := newPKI(t, td)
	fake := startFakeH2Server(t, p, []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 100}}, statusFields(200))
	cl := fakeClient(t, p)
	dest := netip.MustParseAddrPort("10.0.0.1:53")
	tgt := Target{Source: clientID, Destination: serverID, Address: fake.addr, Authority: dest}
	_, err := cl.DialUDP(ctxT(t), tgt)
	if !errors.Is(err, ErrExtendedConnectDisabled) {
		t.Fatalf("DialUDP error = %v, want ErrExtendedConnectDisabled", err)
	}
	if _, streams := cl.PoolStats(); streams != 0 {
		t.Fatalf("refused DialUDP left %d stream slots taken", streams)
	}
	c, err := cl.Dial(ctxT(t), tgt)
	if err != nil {
		t.Fatalf("classic Dial on the same server: %v", err)
	}
	c.Close()
	reqs := fake.seen()
	if len(reqs) != 1 {
		t.Fatalf("server saw %d requests, want only the classic CONNECT", len(reqs))
	}
	for _, f := range reqs[0] {
		if f.Name == ":protocol" {
			t.Fatalf("the request the server saw has :protocol %q", f.Value)
		}
	}
}

// TestDialUDP_RequiresCapsuleProtocolInReply: a 200 without
// capsule-protocol: ?1 is not a capsule stream; DialUDP fails.
func TestDialUDP_RequiresCapsuleProtocolInReply(t *testing.T) {
	p := newPKI(t, td)
	fake := startFakeH2Server(t, p, []http2.Setting{{ID: http2.SettingEnableConnectProtocol, Val: 1}}, statusFields(200))
	cl := fakeClient(t, p)
	tgt := Target{Source: clientID, Destination: serverID, Address: fake.addr, Authority: netip.MustParseAddrPort("10.0.0.1:53")}
	if _, err := cl.DialUDP(ctxT(t), tgt); err == nil || !strings.Contains(err.Error(), "capsule-protocol") {
		t.Fatalf("DialUDP error = %v, want a capsule-protocol error", err)
	}
	reqs := fake.seen()
	if len(reqs) != 1 {
		t.Fatalf("server saw %d requests, want 1", len(reqs))
	}
	got := map[string]string{}
	for _, f := range reqs[0] {
		got[f.Name] = f.Value
	}
	want := map[string]string{":method": "CONNECT", ":protocol": "connect-udp", ":scheme": "https",
		":authority": "10.0.0.1:53", ":path": "/.well-known/masque/udp/10.0.0.1/53/", "capsule-protocol": "?1"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("request %s = %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("request fields %v, want exactly %v", got, want)
	}
}

// TestUDPIdle_SilentFlowEnds: with UDPIdleTimeout 200ms a connect-udp
// flow with no datagram either way ends: the client reads a clean end
// (io.EOF, the server's END_STREAM), and the stream result wraps
// ErrUDPIdle with the bytes counted.
func TestUDPIdle_SilentFlowEnds(t *testing.T) {
	echoAddr := startUDPEcho(t)
	ts, cl := meshPair(t, ServerConfig{UDPIdleTimeout: 200 * time.Millisecond})
	sess, err := cl.DialUDP(ctxT(t), target(ts, echoAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	sess.Stream().(net.Conn).SetReadDeadline(time.Now().Add(testTimout))
	if err := sess.WriteDatagram([]byte("one")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := sess.ReadDatagram(buf); err != nil || string(buf[:n]) != "one" {
		t.Fatalf("echo = %q, %v", buf[:n], err)
	}
	start := time.Now()
	if _, err := sess.ReadDatagram(buf); err != io.EOF {
		t.Fatalf("silent flow: read %v, want io.EOF (a clean end)", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("flow ended after %v of silence, before the 200ms idle timeout", d)
	}
	sess.Close()
	waitFor(t, "stream result", func() bool { return len(ts.streamResults()) == 1 })
	r := ts.streamResults()[0]
	if r.Status != 200 || !errors.Is(r.Err, ErrUDPIdle) || r.BytesIn != 3 || r.BytesOut != 3 {
		t.Fatalf("result = %d in %d out %d err %v; want 200, 3 each way, ErrUDPIdle", r.Status, r.BytesIn, r.BytesOut, r.Err)
	}
}

// TestUDPIdle_BusyFlowStays: a datagram every 50ms for a second keeps a
// flow with a 200ms idle timeout open.
func TestUDPIdle_BusyFlowStays(t *testing.T) {
	echoAddr := startUDPEcho(t)
	ts, cl := meshPair(t, ServerConfig{UDPIdleTimeout: 200 * time.Millisecond})
	sess, err := cl.DialUDP(ctxT(t), target(ts, echoAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	sess.Stream().(net.Conn).SetReadDeadline(time.Now().Add(testTimout))
	buf := make([]byte, 64)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); <-tick.C {
		if err := sess.WriteDatagram([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if n, err := sess.ReadDatagram(buf); err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("echo = %q, %v (flow ended early?)", buf[:n], err)
		}
	}
	if rs := ts.streamResults(); len(rs) != 0 {
		t.Fatalf("busy flow ended: %v", rs[0].Err)
	}
}

// TestBridgeDatagrams_IdleCountsBothDirections: datagrams arriving
// only from the socket side count as activity too (RelayDatagrams
// directly, over an in-memory capsule stream).
func TestBridgeDatagrams_IdleCountsBothDirections(t *testing.T) {
	tunnelSrv, tunnelCli := net.Pipe()
	udpA, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udpA.Close()
	udpB, err := net.DialUDP("udp", nil, udpA.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		in, out int64
		err     error
	}
	done := make(chan result, 1)
	go func() {
		in, out, err := BridgeDatagrams(tunnelSrv, udpB, BridgeOptions{IdleTimeout: 200 * time.Millisecond})
		done <- result{in, out, err}
	}()
	cli := connectudp.NewStreamSession(tunnelCli)
	defer cli.Close()
	go func() { // drain the tunnel side until it ends
		buf := make([]byte, 64)
		for {
			if _, err := cli.ReadDatagram(buf); err != nil {
				return
			}
		}
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); <-tick.C {
		if _, err := udpA.WriteTo([]byte("from upstream"), udpB.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-done:
			t.Fatalf("flow with socket-side traffic ended: %v", r.err)
		default:
		}
	}
	select {
	case r := <-done:
		if !errors.Is(r.err, ErrUDPIdle) || r.out == 0 {
			t.Fatalf("bridge = in %d out %d err %v; want ErrUDPIdle after traffic out", r.in, r.out, r.err)
		}
	case <-time.After(testTimout):
		t.Fatal("bridge did not end after the traffic stopped")
	}
}
