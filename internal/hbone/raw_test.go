package hbone

import (
	"bytes"
	"crypto/tls"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambientmesh/ambient/internal/identity"
)

// rawH2 is a hand-driven HTTP/2 client for sending what a well-behaved
// client never would.
type rawH2 struct {
	t      testing.TB
	nc     net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	hbuf   bytes.Buffer
	nextID uint32
}

func dialRaw(t testing.TB, ts *tunnelServer, svids x509svid.Source, trust x509bundle.Source) *rawH2 {
	t.Helper()
	cfg := identity.ClientConfig(svids, trust, serverID)
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: testTimout}, "tcp", ts.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(testTimout))
	r := &rawH2{t: t, nc: nc, fr: http2.NewFramer(nc, nc), nextID: 1}
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.enc = hpack.NewEncoder(&r.hbuf)
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := r.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rawH2) block(fields [][2]string) []byte {
	r.hbuf.Reset()
	for _, f := range fields {
		r.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return bytes.Clone(r.hbuf.Bytes())
}

// open sends HEADERS for a new stream and returns its id.
func (r *rawH2) open(fields [][2]string) uint32 {
	id, err := r.tryOpen(fields)
	if err != nil {
		r.t.Fatal(err)
	}
	return id
}

func (r *rawH2) tryOpen(fields [][2]string) (uint32, error) {
	id := r.nextID
	r.nextID += 2
	return id, r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.block(fields), EndHeaders: true})
}

// request opens a stream and returns the :status of its response.
func (r *rawH2) request(fields [][2]string) int {
	r.t.Helper()
	id := r.open(fields)
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			r.t.Fatalf("reading response: %v", err)
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
			code, _ := strconv.Atoi(h.PseudoValue("status"))
			return code
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			r.t.Fatalf("stream reset: %v", rst.ErrCode)
		}
	}
}

// untilGoAway reads frames until GOAWAY (returned) or the connection ends.
func (r *rawH2) untilGoAway() (*http2.GoAwayFrame, error) {
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			return g, nil
		}
	}
}

func rawServer(t *testing.T) (*tunnelServer, *rawH2, *upstream) {
	p := newPKI(t, td)
	up := startUpstream(t, func(c net.Conn) { c.Read(make([]byte, 1)) })
	ts := startServer(t, p.Source(serverID), bundles(p), ServerConfig{})
	return ts, dialRaw(t, ts, p.Source(clientID), bundles(p)), up
}

// TestServer_RapidResetEndsConnection: opening and cancelling streams in a
// loop (CVE-2023-44487) gets GOAWAY ENHANCE_YOUR_CALM.
func TestServer_RapidResetEndsConnection(t *testing.T) {
	ts, raw, up := rawServer(t)
	fields := [][2]string{{":method", "CONNECT"}, {":authority", up.Addr().String()}}
	go func() {
		for range 2 * maxPeerResets {
			id, err := raw.tryOpen(fields)
			if err != nil || raw.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				return
			}
		}
	}()
	g, err := raw.untilGoAway()
	if err != nil {
		t.Fatalf("connection ended without GOAWAY: %v", err)
	}
	if g.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", g.ErrCode)
	}
	_ = ts
}

// TestServer_ContinuationFloodEndsConnection: an endless header block
// (CVE-2024-27316 style) is cut off at the header list limit.
func TestServer_ContinuationFloodEndsConnection(t *testing.T) {
	_, raw, _ := rawServer(t)
	junk := raw.block([][2]string{{"x-junk", string(bytes.Repeat([]byte("a"), 4000))}})
	go func() {
		if raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: raw.block([][2]string{{":method", "CONNECT"}})}) != nil {
			return
		}
		for range 10000 {
			if raw.fr.WriteContinuation(1, false, junk) != nil {
				return
			}
		}
	}()
	g, err := raw.untilGoAway()
	if err == nil && g.ErrCode == http2.ErrCodeNo {
		t.Fatalf("GOAWAY %v, want an error code", g.ErrCode)
	}
}

// TestServer_StreamLimitRefusesExtraStreams: streams beyond
// MAX_CONCURRENT_STREAMS are refused, not queued.
func TestServer_StreamLimitRefusesExtraStreams(t *testing.T) {
	ts, raw, up := rawServer(t)
	fields := [][2]string{{":method", "CONNECT"}, {":authority", up.Addr().String()}}
	for range maxConcurrentStream {
		if got := raw.request(fields); got != 200 {
			t.Fatalf("status %d, want 200", got)
		}
	}
	id := raw.open(fields)
	for {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			if rst.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("RST %v, want REFUSED_STREAM", rst.ErrCode)
			}
			break
		}
	}
	_ = ts
}
