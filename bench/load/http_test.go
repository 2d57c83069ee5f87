package load

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func startHTTPBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewHTTPBackend(HTTPBackendConfig{Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("HTTP backend Run: %v", err)
		}
	})
	return b.Addr()
}

func TestHTTPBackend_EchoesTheBodyOnKeepAlive(t *testing.T) {
	addr := startHTTPBackend(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	buf := make([]byte, 1024)
	for i := range 3 { // the same connection every time
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(HTTPRequest("server.bench", len(buf))); err != nil {
			t.Fatal(err)
		}
		if err := readHTTPResponse(br, buf); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if strings.Trim(string(buf), "x") != "" {
			t.Fatalf("request %d: body is not the request's", i)
		}
	}
}

func TestReadHTTPResponse_RefusesWrongStatusSizeOrClose(t *testing.T) {
	for _, tt := range []struct{ name, resp, want string }{
		{"ok", "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd", ""},
		{"chunked ok", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", ""},
		{"status", "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\n\r\nno route", "503"},
		{"short", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", "shorter"},
		{"long", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde", "longer"},
		{"close", "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd", "closed"},
	} {
		err := readHTTPResponse(bufio.NewReader(strings.NewReader(tt.resp)), make([]byte, 4))
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestLatency_HTTP1CountsEveryScheduledRequest(t *testing.T) {
	addr := startHTTPBackend(t)
	res, err := Latency(t.Context(), LatencyConfig{
		Addr: addr, Protocol: ProtoHTTP1, Host: "server.bench", Rate: 500, Duration: 200 * time.Millisecond,
		Conns: 2, Size: 1024, Warmup: 2,
	})
	if err != nil {
		t.Fatalf("Latency: %v", err)
	}
	if res.Sent != 100 || res.Errors != 0 || res.Summary.Count != 100 {
		t.Errorf("sent %d, errors %d, count %d; want 100, 0, 100", res.Sent, res.Errors, res.Summary.Count)
	}
}

func TestThroughput_ClosedLoopCountsResponses(t *testing.T) {
	for _, proto := range []Protocol{ProtoEcho, ProtoHTTP1} {
		t.Run(proto.String(), func(t *testing.T) {
			addr := startBackend(t)
			if proto == ProtoHTTP1 {
				addr = startHTTPBackend(t)
			}
			started := 0
			res, err := Throughput(t.Context(), ThroughputConfig{
				Addr: addr, Protocol: proto, Conns: 3, Duration: 100 * time.Millisecond, Size: 512, Warmup: 1,
				Started: func() { started++ },
			})
			if err != nil || res.Errors != 0 {
				t.Fatalf("Throughput: %+v, %v", res, err)
			}
			if started != 1 || res.Requests < 3 || res.Elapsed < 100*time.Millisecond || res.RPS() <= 0 {
				t.Errorf("Throughput = %+v (RPS %.0f), Started %d times", res, res.RPS(), started)
			}
		})
	}
}

func TestThroughput_FailingServerIsAnError(t *testing.T) {
	// An HTTP server that refuses every request.
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	res, err := Throughput(t.Context(), ThroughputConfig{
		Addr: ln.Addr().String(), Protocol: ProtoHTTP1, Conns: 2, Duration: 50 * time.Millisecond, Size: 16,
	})
	if err == nil || !strings.Contains(err.Error(), "503") || res.Errors != 2 || res.Requests != 0 {
		t.Fatalf("Throughput against a 503 server: %+v, %v", res, err)
	}
}
