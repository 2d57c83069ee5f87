package hbone3

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/hbone"
)

var errNoUpstream = errors.New("no upstream while fuzzing")

// FuzzServer3_RequestHeaders sends arbitrary CONNECT-like requests (method,
// authority, header fields) to a live server: every one is answered 400,
// 431 or, when it is a CONNECT to a literal ip:port, 503 from the refusing
// Dial, or its stream is reset as malformed; the server never dials for
// anything else, and never hangs (every wait has a deadline).
func FuzzServer3_RequestHeaders(f *testing.F) {
	f.Add("CONNECT", "10.0.0.1:80", "baggage\x00k=v\nforwarded\x00for=10.0.0.2")
	f.Add("GET", "10.0.0.1:80", "")
	f.Add("CONNECT", "example.com:443", "")
	f.Add("CONNECT", "[fd00::1]:443", "traceparent\x0000-abc-def-01")
	f.Add("CONNECT", "[fe80::1%eth0]:80", "")
	f.Add("CONNECT", "10.0.0.1:0", "x\x00"+strings.Repeat("y", 20000))
	f.Add("CONNECT", "10.0.0.1:80", "te\x00trailers\nconnection\x00close")
	f.Add("POST", "1.2.3.4:5", ":path\x00/")

	var dials atomic.Int64
	p := newPKI(f, td)
	ts := startServer(f, p.Source(serverID), bundles(p), ServerConfig{
		Dial: func(context.Context, *Stream) (net.Conn, error) {
			dials.Add(1)
			return nil, errNoUpstream
		},
	})
	raw := dialRaw(f, ts, p.Source(clientID), bundles(p))
	raw.timeout = 5 * time.Second

	f.Fuzz(func(t *testing.T, method, authority, fields string) {
		h := http.Header{}
		for _, line := range strings.Split(fields, "\n") {
			name, value, _ := strings.Cut(line, "\x00")
			h[name] = append(h[name], value)
		}
		req := rawRequest(method, authority, h)
		before := dials.Load()
		status, err := raw.try(req)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s %q %q: %v", method, authority, fields, err)
		}
		if err != nil {
			return // the client would not send it
		}
		dialed := dials.Load() != before
		_, authErr := hbone.ParseAuthority(authority)
		valid := method == http.MethodConnect && authErr == nil
		switch status {
		case 503:
			if !valid || !dialed {
				t.Fatalf("503 for %s %q (dialed %v)", method, authority, dialed)
			}
		case 400, 431, -1:
			if dialed {
				t.Fatalf("dialed for %s %q, answered %d", method, authority, status)
			}
		default:
			t.Fatalf("status %d for %s %q", status, method, authority)
		}
	})
}
