package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzParseRequest: any header list either parses into a CONNECT to a
// literal ip:port or is refused; it never panics.
func FuzzParseRequest(f *testing.F) {
	f.Add(":method\x00CONNECT\n:authority\x0010.0.0.1:80\nbaggage\x00k=v")
	f.Add(":method\x00GET\n:authority\x00[fd00::1]:443\n:path\x00/")
	f.Add(":authority\x00a:1\n:method\x00CONNECT\n:authority\x001.2.3.4:5")
	f.Add(":method\x00CONNECT\n:authority\x00[fe80::1%eth0]:80\nconnection\x00close")
	f.Fuzz(func(t *testing.T, s string) {
		var fields []hpack.HeaderField
		for _, line := range strings.Split(s, "\n") {
			name, value, _ := strings.Cut(line, "\x00")
			fields = append(fields, hpack.HeaderField{Name: name, Value: value})
		}
		req, err := ParseRequest(fields)
		if err != nil {
			return
		}
		if !req.Authority.IsValid() || req.Authority.Port() == 0 {
			t.Fatalf("accepted invalid authority %v", req.Authority)
		}
		var methods int
		for _, f := range fields {
			if f.Name == ":method" {
				methods++
				if f.Value != http.MethodConnect {
					t.Fatalf("accepted method %q", f.Value)
				}
			}
		}
		if methods != 1 {
			t.Fatalf("accepted %d :method fields", methods)
		}
	})
}

// FuzzServerConn feeds arbitrary frames to a server connection after a valid
// preface: the server must neither panic nor hang, and must never dial.
// nullTLS satisfies NewServer; ServeConn takes connections already authenticated.
var nullTLS = &tls.Config{}

func FuzzServerConn(f *testing.F) {
	frames := func(write func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer)) []byte {
		var out, hb bytes.Buffer
		fr := http2.NewFramer(&out, nil)
		fr.AllowIllegalWrites = true
		write(fr, hpack.NewEncoder(&hb), &hb)
		return out.Bytes()
	}
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
		enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
		fr.WriteData(1, false, []byte("hello"))
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
	}))
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		fr.WriteWindowUpdate(0, 1<<31-1)
		fr.WritePing(false, [8]byte{1})
		fr.WriteDataPadded(3, true, []byte("x"), []byte{0, 0})
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
	}))
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes()})
		fr.WriteContinuation(1, false, []byte{0x82})
		fr.WriteContinuation(1, true, nil)
	}))
	f.Fuzz(func(t *testing.T, input []byte) {
		srv, err := NewServer(ServerConfig{
			TLSConfig: nullTLS,
			Authorize: func(context.Context, *Stream) error { return errors.New("no") },
			Dial: func(context.Context, *Stream) (net.Conn, error) {
				t.Error("server dialed although authorization denies everything")
				return nil, errors.New("no")
			},
			IdleTimeout: time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.ServeConn(context.Background(), server, spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"))
		}()
		go io.Copy(io.Discard, client) // whatever the server answers
		var pre bytes.Buffer
		pre.WriteString(http2.ClientPreface)
		http2.NewFramer(&pre, nil).WriteSettings()
		client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write(pre.Bytes())
		client.Write(input)
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("server did not finish after the client closed")
		}
	})
}
