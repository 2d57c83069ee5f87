package h1server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// net/http's server, the reference, lingers on connections it closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("net/http.(*conn).closeWriteAndWait"))
}

// waitTimeout bounds every wait in these tests.
const waitTimeout = 10 * time.Second

const testMaxHeaderBytes = 1 << 10

// serve runs s on a loopback listener until the test ends and returns
// its address.
func serve(t testing.TB, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.ServeConn(context.Background(), NewConn(c))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// serveNetHTTP runs net/http's server, HTTP/1 only, with the same limits.
func serveNetHTTP(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	srv := &http.Server{Handler: h, MaxHeaderBytes: testMaxHeaderBytes, Protocols: &protos,
		ErrorLog: nil, ReadHeaderTimeout: waitTimeout}
	srv.SetKeepAlivesEnabled(true)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// testHandler answers by path; its answers do not depend on which server
// runs it.
func testHandler(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/plain") // net/http would sniff one
	switch r.URL.Path {
	case "/noread":
		h.Set("Content-Length", "6")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "denied")
	case "/stream":
		h.Set("Trailer", "X-Sum")
		io.WriteString(w, "part1,")
		w.(http.Flusher).Flush()
		io.WriteString(w, "part2")
		h.Set("X-Sum", "2 parts")
		h.Set(http.TrailerPrefix+"X-Late", "late")
	case "/short":
		h.Set("Content-Length", "10")
		io.WriteString(w, "only5")
	case "/long":
		h.Set("Content-Length", "2")
		_, err := io.WriteString(w, "toolong")
		if !errors.Is(err, http.ErrContentLength) {
			panic(fmt.Sprintf("long write: %v", err))
		}
	case "/unnamed":
		h.Set("Content-Length", "0")
		w.WriteHeader(599)
	case "/nocontent":
		w.WriteHeader(http.StatusNoContent)
	case "/empty":
		w.WriteHeader(http.StatusAccepted)
	case "/inject":
		h.Set("X-Value", "a\r\nX-Injected: yes")
		h.Set("Content-Length", "2")
		io.WriteString(w, "ok")
	case "/close":
		h.Set("Connection", "close")
		h.Set("Content-Length", "2")
		io.WriteString(w, "ok")
	case "/panic":
		panic("test panic")
	case "/abort":
		io.WriteString(w, "partial")
		panic(http.ErrAbortHandler)
	default:
		body, err := io.ReadAll(r.Body)
		if err != nil {
			h.Set("Content-Length", "8")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, "body err")
			return
		}
		h.Set("X-Method", r.Method)
		h.Set("X-Host", r.Host)
		h.Set("X-URI", r.RequestURI)
		h.Set("X-Proto", r.Proto)
		h.Set("X-Header", r.Header.Get("X-Test"))
		h.Set("X-Trailer", r.Trailer.Get("X-T"))
		if r.URL.Path == "/chunked" {
			w.Write(body) // no Content-Length: chunked (HTTP/1.1) or to the close (1.0)
			return
		}
		h.Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body)
	}
}

// exchange sends raw on a new connection to addr, reads every response
// (informational ones included), and then sends a probe request: the
// transcript says whether it was answered, i.e. whether the connection
// stayed open.
func exchange(t *testing.T, addr, raw string, responses int) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []string
	for range responses {
		out = append(out, readResponse(br))
	}
	io.WriteString(c, "GET /probe HTTP/1.1\r\nHost: probe\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err == nil {
		resp.Body.Close()
		out = append(out, "open")
	} else {
		out = append(out, "closed")
	}
	return strings.Join(out, "\n")
}

// readResponse reads one response (and its 1xx responses) as a line of
// text that leaves out what may differ between two correct servers: the
// Date and the body's framing.
func readResponse(br *bufio.Reader) string {
	var lines []string
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return strings.Join(append(lines, "error"), " | ")
		}
		var hs []string
		for k, vv := range resp.Header {
			switch k {
			case "Date", "Content-Length", "Transfer-Encoding", "Trailer":
				continue
			}
			hs = append(hs, k+"="+strings.Join(vv, ","))
		}
		slices.Sort(hs)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		line := fmt.Sprintf("%d %v body=%q", resp.StatusCode, hs, body)
		if err != nil {
			line += " body-error"
		}
		if len(resp.Trailer) > 0 {
			line += fmt.Sprintf(" trailer=%v", resp.Trailer)
		}
		lines = append(lines, line)
		if resp.StatusCode >= 200 {
			return strings.Join(lines, " | ")
		}
	}
}

// TestServer_LikeNetHTTP sends the same bytes to this server and to
// net/http's, with the same handler, and wants the same answers: the
// checks on what a client sends (malformed or smuggling-prone requests
// above all) and the keep-alive decisions.
func TestServer_LikeNetHTTP(t *testing.T) {
	ours := serve(t, &Server{Handler: http.HandlerFunc(testHandler), MaxHeaderBytes: testMaxHeaderBytes,
		ReadHeaderTimeout: waitTimeout})
	theirs := serveNetHTTP(t, http.HandlerFunc(testHandler))

	big := strings.Repeat("x", 300<<10)
	cases := []struct {
		name, raw string
		responses int
	}{
		{"get", "GET /a?b=c HTTP/1.1\r\nHost: svc\r\nX-Test: t1\r\n\r\n", 1},
		{"pipelined", "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\n\r\n", 3},
		{"connection close", "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 1},
		{"connection close token", "GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n", 1},
		{"http/1.0", "GET / HTTP/1.0\r\n\r\n", 1},
		{"http/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1},
		{"http/1.0 keep-alive unknown length", "GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1},
		{"chunked response", "POST /chunked HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", 1},
		{"absolute form", "GET http://other:8080/x HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 1},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 1},
		{"bad host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 1},
		{"bad header name", "GET / HTTP/1.1\r\nHost: a\r\nX Y: z\r\n\r\n", 1},
		{"nul in header value", "GET / HTTP/1.1\r\nHost: a\r\nX-Test: a\x00b\r\n\r\n", 1},
		{"http/2.0 request line", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 1},
		{"http/0.9", "GET /\r\n\r\n", 1},
		{"bad method", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-Test: a\r\n b\r\n\r\n", 1},
		{"bare LF", "GET / HTTP/1.1\nHost: a\nX-Test: lf\n\n", 1},
		{"header too large", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("b", 8<<10) + "\r\n\r\n", 1},
		// A malformed line read with the limit's last bytes: 431, as net/http (found by FuzzLikeNetHTTP).
		{"bad line at the header limit", "0 /" + strings.Repeat("x", 4500) + "\n" + strings.Repeat("y", 2000), 1},
		{"two content-lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 1},
		{"same content-length twice", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 1},
		{"bad content-length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 1},
		{"chunked and content-length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 1},
		{"chunked with undeclared trailer", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: tv\r\n\r\n", 1},
		{"chunked with trailer", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: tv\r\n\r\n", 1},
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 1},
		{"gzip transfer coding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 1},
		{"two transfer-encoding fields", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1},
		{"unknown transfer coding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n", 1},
		{"expect other", "GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 1},
		{"expect 100-continue", "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc", 1},
		{"expect 100-continue unread", "POST /noread HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", 1},
		{"unread small body", "POST /noread HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 1},
		{"unread large body", "POST /noread HTTP/1.1\r\nHost: a\r\nContent-Length: " + fmt.Sprint(len(big)) + "\r\n\r\n" + big, 1},
		{"leading CRLF after POST", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 2},
		{"head", "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"stream with trailers", "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"short body", "GET /short HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"long body", "GET /long HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"204", "GET /nocontent HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"unnamed status", "GET /unnamed HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"empty 202", "GET /empty HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"header injection", "GET /inject HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"handler close", "GET /close HTTP/1.1\r\nHost: a\r\n\r\n", 1},
		{"abort", "GET /abort HTTP/1.1\r\nHost: a\r\n\r\n", 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := exchange(t, ours, tc.raw, tc.responses)
			want := exchange(t, theirs, tc.raw, tc.responses)
			if got != want {
				t.Errorf("h1server:\n%s\nnet/http:\n%s", got, want)
			}
		})
	}
}

// dial connects to addr with every I/O bounded by waitTimeout.
func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(waitTimeout))
	return c, bufio.NewReader(c)
}

func TestServer_ClientGoneCancelsRequest(t *testing.T) {
	started, cause := make(chan struct{}), make(chan error, 1)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-r.Context().Done():
			cause <- context.Cause(r.Context())
		case <-time.After(waitTimeout):
			cause <- nil
		}
	})}
	c, _ := dial(t, serve(t, s))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	<-started
	c.Close()
	if err := <-cause; !errors.Is(err, errClientGone) {
		t.Fatalf("context cause %v, want %v", err, errClientGone)
	}
}

// A request that outlives watchDelay keeps the next pipelined request's
// bytes: watching the connection must not lose them, nor cancel.
func TestServer_WatchKeepsPipelinedRequest(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
				http.Error(w, "cancelled", http.StatusInternalServerError)
				return
			case <-time.After(3 * watchDelay):
			}
		}
		io.WriteString(w, r.URL.Path)
	})}
	c, br := dial(t, serve(t, s))
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	for _, want := range []string{"/slow", "/next"} {
		if got := readResponse(br); !strings.Contains(got, fmt.Sprintf("body=%q", want)) || !strings.HasPrefix(got, "200") {
			t.Errorf("got %s, want 200 %s", got, want)
		}
	}
}

func TestServer_ShutdownDrains(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "done")
	})}
	addr := serve(t, s)
	idle, idleR := dial(t, addr)
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if got := readResponse(idleR); !strings.HasPrefix(got, "200") {
		t.Fatalf("first response %s", got)
	}
	busy, busyR := dial(t, addr)
	io.WriteString(busy, "GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
	<-started
	_, freshR := dial(t, addr) // connected, nothing sent yet

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	// The idle connections are closed at once; the busy one answers first.
	if _, err := idleR.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: read %v, want EOF", err)
	}
	if _, err := freshR.ReadByte(); err != io.EOF {
		t.Errorf("connection without a request: read %v, want EOF", err)
	}
	close(release)
	resp, err := http.ReadResponse(busyR, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "done" || !resp.Close {
		t.Errorf("busy connection got %q, close %v; want done, closing", body, resp.Close)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if _, err := busyR.ReadByte(); err != io.EOF {
		t.Errorf("busy connection after its response: %v, want EOF", err)
	}
}

func TestServer_Timeouts(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}),
		ReadHeaderTimeout: 50 * time.Millisecond, IdleTimeout: 50 * time.Millisecond}
	addr := serve(t, s)

	// A header that never ends is dropped without an answer.
	c, br := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n")
	if b, err := br.ReadByte(); err != io.EOF {
		t.Errorf("unfinished header: read %q %v, want EOF", b, err)
	}
	// An idle connection is closed after its response.
	c, br = dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if got := readResponse(br); !strings.HasPrefix(got, "200") {
		t.Fatalf("got %s", got)
	}
	if b, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle: read %q %v, want EOF", b, err)
	}
}

func TestServer_Hijack(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n') // sent with the request: already buffered
		brw.WriteString("echo " + line)
		brw.Flush()
	})}
	c, br := dial(t, serve(t, s))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhello\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if line, err := br.ReadString('\n'); line != "echo hello\n" {
		t.Errorf("after the upgrade read %q %v, want echo hello", line, err)
	}
}

func TestServer_PanicClosesConnection(t *testing.T) {
	logs, logw := io.Pipe() // the server's log write waits for the test's read
	defer logs.Close()
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic("boom") }),
		Logger: slog.New(slog.NewTextHandler(logw, nil))}
	c, br := dial(t, serve(t, s))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	record, err := bufio.NewReader(logs).ReadString('\n')
	if err != nil || !strings.Contains(record, "boom") || !strings.Contains(record, "server_test.go") {
		t.Errorf("log %q (%v), want the panic and its stack", record, err)
	}
	if b, err := br.ReadByte(); err != io.EOF {
		t.Errorf("read %q %v, want EOF", b, err)
	}
}

func TestServer_Informational(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	})}
	c, br := dial(t, serve(t, s))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	got := readResponse(br)
	want := `103 [Link=</a.css>; rel=preload] body="" | 200 [] body="final"`
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// With a watch delay shorter than the requests, watches start, stop and
// fire late all the time: every request must still be answered, in order,
// and (under -race) no two reads may share the connection's reader.
func TestServer_WatchChurn(t *testing.T) {
	defer func(d time.Duration) { watchDelay = d }(watchDelay)
	watchDelay = 50 * time.Microsecond
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("slow") {
			time.Sleep(200 * time.Microsecond) // outlives the watch delay
		}
		io.WriteString(w, r.URL.Path)
	})}
	addr := serve(t, s)
	var wg sync.WaitGroup
	for conn := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, waitTimeout)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(waitTimeout))
			br := bufio.NewReader(c)
			for i := range 300 {
				path, query := fmt.Sprintf("/%d/%d", conn, i), ""
				if i%2 == 0 {
					query = "?slow"
				}
				fmt.Fprintf(c, "GET %s%s HTTP/1.1\r\nHost: a\r\n\r\n", path, query)
				if got := readResponse(br); got != fmt.Sprintf("200 [] body=%q", path) {
					t.Errorf("request %s: got %s", path, got)
					return
				}
			}
		}()
	}
	wg.Wait()
}
