package h1client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestRoundTrip_SkipsInformationalResponses(t *testing.T) {
	s := newRawServer(t, func(w io.Writer, req *http.Request) {
		io.WriteString(w, "HTTP/1.1 100 Continue\r\n\r\n"+
			"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal")
	})
	c, d := newClient(t)
	for range 2 {
		resp, body := do(t, c, newRequest(t, context.Background(), http.MethodGet, s.url, nil))
		if resp.StatusCode != http.StatusOK || body != "final" || resp.Header.Get("X-Final") != "yes" {
			t.Errorf("got %d %q %v, want the final 200", resp.StatusCode, body, resp.Header)
		}
	}
	if d.dials() != 1 {
		t.Errorf("dials = %d, want 1", d.dials())
	}
}

func TestRoundTrip_RejectsSwitchingProtocols(t *testing.T) {
	s := newRawServer(t, func(w io.Writer, req *http.Request) {
		io.WriteString(w, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	})
	c, _ := newClient(t)
	resp, err := c.RoundTrip(newRequest(t, context.Background(), http.MethodGet, s.url, nil))
	if err == nil {
		resp.Body.Close()
		t.Fatal("101 response accepted")
	}
	if !strings.Contains(err.Error(), "101") {
		t.Errorf("err = %v, want it to name the 101", err)
	}
	s.waitGone(t)
}

func TestRoundTrip_ResponseHeadersOverLimit(t *testing.T) {
	const limit = 4 << 10
	s := newRawServer(t, func(w io.Writer, req *http.Request) {
		var size int
		fmt.Sscan(req.URL.Query().Get("size"), &size)
		fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 2\r\n\r\nok", strings.Repeat("a", size))
	})
	c, _ := newClient(t)
	c.MaxResponseHeaderBytes = limit

	if _, body := do(t, c, newRequest(t, context.Background(), http.MethodGet, s.url+"/?size=1000", nil)); body != "ok" {
		t.Errorf("under the limit: body %q", body)
	}
	resp, err := c.RoundTrip(newRequest(t, context.Background(), http.MethodGet, s.url+"/?size=20000", nil))
	if err == nil {
		resp.Body.Close()
		t.Fatal("headers over the limit accepted")
	}
	if !strings.Contains(err.Error(), fmt.Sprint(limit)) {
		t.Errorf("err = %v, want it to name the limit", err)
	}
	s.waitGone(t)
}

func TestRoundTrip_DefaultHeaderLimitIs64KiB(t *testing.T) {
	s := newRawServer(t, func(w io.Writer, req *http.Request) {
		fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 0\r\n\r\n", strings.Repeat("a", 100<<10))
	})
	c, _ := newClient(t)
	_, err := c.RoundTrip(newRequest(t, context.Background(), http.MethodGet, s.url, nil))
	if err == nil || !strings.Contains(err.Error(), "65536") {
		t.Errorf("err = %v, want the 65536-byte limit", err)
	}
}
