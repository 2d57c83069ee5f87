package h1client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"
)

// echoPath answers with the request's method, path and body.
func echoPath(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, b)
}

func TestRoundTrip_SequentialRequestsReuseOneConnection(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, d := newClient(t)
	for i := range 200 {
		if got, want := get(t, c, fmt.Sprintf("%s/%d", s.url, i)), fmt.Sprintf("GET /%d ", i); got != want {
			t.Fatalf("body %q, want %q", got, want)
		}
	}
	if d.dials() != 1 {
		t.Errorf("dials = %d, want 1", d.dials())
	}
}

func TestRoundTrip_ConcurrentRequests(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, d := newClient(t)
	const workers, each = 50, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				path := fmt.Sprintf("/%d/%d", w, i)
				req := newRequest(t, context.Background(), http.MethodPost, s.url+path, strings.NewReader(path))
				resp, err := c.RoundTrip(req)
				if err != nil {
					errs <- err
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := "POST " + path + " " + path; err != nil || string(b) != want {
					errs <- fmt.Errorf("body %q (%v), want %q", b, err, want)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if d.dials() > workers {
		t.Errorf("dials = %d, want at most %d", d.dials(), workers)
	}
}

func TestRoundTrip_ServerConnectionCloseDialsAnew(t *testing.T) {
	s := newTestServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})
	c, d := newClient(t)
	for range 3 {
		get(t, c, s.url)
	}
	if d.dials() != 3 {
		t.Errorf("dials = %d, want 3", d.dials())
	}
	s.waitClosed(t, 3)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.hosts) != 0 {
		t.Errorf("the pool keeps %d addresses without connections", len(c.hosts))
	}
}

func TestRoundTrip_RetriesOnConnectionServerClosedWhileIdle(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		body   func() io.Reader
	}{
		{"GET", http.MethodGet, func() io.Reader { return nil }},
		{"POST with GetBody", http.MethodPost, func() io.Reader { return strings.NewReader("payload") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestServer(t, echoPath)
			c, d := newClient(t)
			get(t, c, s.url+"/first")
			s.closeIdle(t)

			_, got := do(t, c, newRequest(t, context.Background(), tc.method, s.url+"/second", tc.body()))
			want := tc.method + " /second "
			if tc.method == http.MethodPost {
				want += "payload"
			}
			if got != want {
				t.Errorf("body %q, want %q", got, want)
			}
			if d.dials() != 2 {
				t.Errorf("dials = %d, want 2", d.dials())
			}
		})
	}
}

func TestRoundTrip_DoesNotRetryUnreplayableBody(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, d := newClient(t)
	get(t, c, s.url)
	s.closeIdle(t)

	req := newRequest(t, context.Background(), http.MethodPost, s.url, struct{ io.Reader }{strings.NewReader("once")})
	req.ContentLength = 4
	if req.GetBody != nil {
		t.Fatal("test needs a request without GetBody")
	}
	resp, err := c.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("RoundTrip on a closed connection with an unreplayable body succeeded")
	}
	if d.dials() != 1 {
		t.Errorf("dials = %d, want 1 (no retry)", d.dials())
	}
}

func TestRoundTrip_DoesNotRetryOnFreshConnection(t *testing.T) {
	s := newRawServer(t, func(w io.Writer, req *http.Request) {
		w.(net.Conn).Close() // no response at all
	})
	c, d := newClient(t)
	resp, err := c.RoundTrip(newRequest(t, context.Background(), http.MethodGet, s.url, nil))
	if err == nil {
		resp.Body.Close()
		t.Fatal("RoundTrip succeeded without a response")
	}
	if d.dials() != 1 {
		t.Errorf("dials = %d, want 1", d.dials())
	}
}

func TestRoundTrip_ContextDeadlineWhileWaitingForResponse(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	s := newTestServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}
	})
	c, d := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	resp, err := c.RoundTrip(newRequest(t, ctx, http.MethodGet, s.url+"/slow", nil))
	if err == nil {
		resp.Body.Close()
		t.Fatal("RoundTrip succeeded past its deadline")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("RoundTrip returned after %v", elapsed)
	}
	s.waitClosed(t, 1)
	get(t, c, s.url+"/after") // on a new connection: the one whose context fired is gone
	if d.dials() != 2 {
		t.Errorf("dials = %d, want 2", d.dials())
	}
}

func TestRoundTrip_ContextDeadlineWhileReadingBody(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	s := newTestServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			io.WriteString(w, "first part")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}
	})
	c, d := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	resp, err := c.RoundTrip(newRequest(t, ctx, http.MethodGet, s.url+"/slow", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	start := time.Now()
	b, err := io.ReadAll(resp.Body)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("read body: %v, want DeadlineExceeded", err)
	}
	if string(b) != "first part" {
		t.Errorf("body %q, want the first part", b)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("read returned after %v", elapsed)
	}
	get(t, c, s.url)
	if d.dials() != 2 {
		t.Errorf("dials = %d, want 2: the connection whose context fired was reused", d.dials())
	}
}

func TestRoundTrip_ContextDeadlineInterruptsBlockedWrite(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	s := newTestServer(t, func(w http.ResponseWriter, r *http.Request) {
		select { // never reads the body: the client's write blocks
		case <-r.Context().Done():
		case <-release:
		}
	})
	c, _ := newClient(t)
	big := bytes.NewReader(make([]byte, 64<<20)) // beyond what the sockets' buffers hold
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	resp, err := c.RoundTrip(newRequest(t, ctx, http.MethodPost, s.url, big))
	if err == nil {
		resp.Body.Close()
		t.Fatal("RoundTrip succeeded past its deadline")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "write request") {
		t.Errorf("err = %v, want DeadlineExceeded while writing", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("RoundTrip returned after %v", elapsed)
	}
}

func TestRoundTrip_ChunkedBodyAndTrailers(t *testing.T) {
	s := newTestServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		for _, part := range []string{"one ", "two ", "three"} {
			io.WriteString(w, part)
			w.(http.Flusher).Flush()
		}
		w.Header().Set("X-Checksum", "sum-1")
	})
	c, d := newClient(t)
	for range 2 {
		resp, body := do(t, c, newRequest(t, context.Background(), http.MethodGet, s.url, nil))
		if body != "one two three" {
			t.Errorf("body %q", body)
		}
		if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
			t.Errorf("TransferEncoding = %v, want chunked", resp.TransferEncoding)
		}
		if got := resp.Trailer.Get("X-Checksum"); got != "sum-1" {
			t.Errorf("trailer X-Checksum = %q, want sum-1", got)
		}
	}
	if d.dials() != 1 {
		t.Errorf("dials = %d, want 1", d.dials())
	}
}

func TestRoundTrip_ResponsesWithoutBodyReuseConnection(t *testing.T) {
	s := newTestServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/head":
			w.Header().Set("Content-Length", "1000")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.WriteHeader(http.StatusNotModified)
		case "/empty":
			w.Header().Set("Content-Length", "0")
		}
	})
	c, d := newClient(t)
	for _, tc := range []struct{ method, path string }{
		{http.MethodHead, "/head"}, {http.MethodGet, "/204"}, {http.MethodGet, "/304"}, {http.MethodGet, "/empty"},
	} {
		resp, err := c.RoundTrip(newRequest(t, context.Background(), tc.method, s.url+tc.path, nil))
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		if resp.Body != http.NoBody {
			t.Errorf("%s %s: body %T, want http.NoBody", tc.method, tc.path, resp.Body)
		}
		// Not closing the body: the connection is back in the pool already.
	}
	get(t, c, s.url)
	if d.dials() != 1 {
		t.Errorf("dials = %d, want 1", d.dials())
	}
}

func TestRoundTrip_BodyClosedBeforeEOFClosesConnection(t *testing.T) {
	s := newTestServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 1<<20))
	})
	c, d := newClient(t)
	resp, err := c.RoundTrip(newRequest(t, context.Background(), http.MethodGet, s.url, nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if err := resp.Body.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := resp.Body.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := resp.Body.Read(make([]byte, 1)); err == nil {
		t.Error("Read after Close succeeded")
	}
	s.waitClosed(t, 1)
	get(t, c, s.url)
	if d.dials() != 2 {
		t.Errorf("dials = %d, want 2", d.dials())
	}
}

func TestRoundTrip_BodyCloseUnblocksRead(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	s := newTestServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first part")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	c, _ := newClient(t)
	resp, err := c.RoundTrip(newRequest(t, context.Background(), http.MethodGet, s.url, nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, len("first part"))); err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() {
		_, err := resp.Body.Read(make([]byte, 1)) // blocks, unless Close came first
		read <- err
	}()
	resp.Body.Close()
	select {
	case err := <-read:
		if err == nil {
			t.Error("Read ended without error after Close")
		}
	case <-time.After(waitTimeout):
		t.Fatal("Close did not unblock Read")
	}
	s.waitClosed(t, 1)
}

func TestIdleTimeout_ClosesIdleConnection(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, d := newClient(t)
	c.IdleTimeout = 50 * time.Millisecond
	get(t, c, s.url)
	s.waitClosed(t, 1)
	c.mu.Lock()
	n := len(c.hosts)
	c.mu.Unlock()
	if n != 0 {
		t.Errorf("%d addresses left in the pool, want none", n)
	}
	get(t, c, s.url)
	if d.dials() != 2 {
		t.Errorf("dials = %d, want 2", d.dials())
	}
}

func TestIdleTimeout_ReusedConnectionIsNotExpiredEarly(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, d := newClient(t)
	c.IdleTimeout = 300 * time.Millisecond
	deadline := time.Now().Add(c.IdleTimeout * 3)
	for time.Now().Before(deadline) { // busy for longer than IdleTimeout, never idle that long
		get(t, c, s.url)
	}
	if d.dials() != 1 {
		t.Errorf("dials = %d, want 1", d.dials())
	}
}

func TestIdleTimeout_NegativeNeverExpires(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, d := newClient(t)
	c.IdleTimeout = -1
	get(t, c, s.url)
	c.mu.Lock()
	idle, timers := 0, 0
	for _, h := range c.hosts {
		for _, pc := range h.idle {
			idle++
			if pc.idleTimer != nil {
				timers++
			}
		}
	}
	c.mu.Unlock()
	if idle != 1 || timers != 0 {
		t.Fatalf("%d idle connections, %d with an expiry timer; want one without", idle, timers)
	}
	get(t, c, s.url)
	c.CloseIdleConnections() // no timer to stop
	s.waitClosed(t, 1)
	if d.dials() != 1 {
		t.Errorf("dials = %d, want 1", d.dials())
	}
}

func TestCloseIdleConnections(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, d := newClient(t)
	get(t, c, s.url)
	c.CloseIdleConnections()
	s.waitClosed(t, 1)
	get(t, c, s.url)
	if d.dials() != 2 {
		t.Errorf("dials = %d, want 2", d.dials())
	}
}

func TestMaxIdlePerHost(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, d := newClient(t)
	c.MaxIdlePerHost = 2
	var resps []*http.Response
	for range 5 { // five at once: five connections
		resp, err := c.RoundTrip(newRequest(t, context.Background(), http.MethodGet, s.url, nil))
		if err != nil {
			t.Fatal(err)
		}
		resps = append(resps, resp)
	}
	for _, resp := range resps {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	s.waitClosed(t, 3)
	for range 2 {
		get(t, c, s.url)
	}
	if d.dials() != 5 {
		t.Errorf("dials = %d, want 5", d.dials())
	}
}

func TestRoundTrip_GotConnTrace(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, d := newClient(t)
	var infos []httptrace.GotConnInfo
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { infos = append(infos, info) },
	})
	for range 2 {
		do(t, c, newRequest(t, ctx, http.MethodGet, s.url, nil))
	}
	if len(infos) != 2 {
		t.Fatalf("GotConn called %d times, want 2", len(infos))
	}
	if infos[0].Reused || infos[0].WasIdle {
		t.Errorf("first GotConn %+v, want a new connection", infos[0])
	}
	if !infos[1].Reused || !infos[1].WasIdle || infos[1].IdleTime <= 0 {
		t.Errorf("second GotConn %+v, want a reused idle connection", infos[1])
	}
	for i, info := range infos {
		if info.Conn != d.conns[0] {
			t.Errorf("GotConn %d: Conn is not the dialled connection", i)
		}
	}
}

func TestRoundTrip_GotConnHookCanCloseConnection(t *testing.T) {
	s := newTestServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("Connection"))
	})
	c, d := newClient(t)
	req := newRequest(t, context.Background(), http.MethodGet, s.url, nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { req.Header.Set("Connection", "close") },
	}))
	if _, body := do(t, c, req); body != "close" {
		t.Errorf("server saw Connection %q, want close", body)
	}
	s.waitClosed(t, 1)
	get(t, c, s.url)
	if d.dials() != 2 {
		t.Errorf("dials = %d, want 2", d.dials())
	}
}

type dialError struct{ addr string }

func (e *dialError) Error() string { return "no route to " + e.addr }

func TestRoundTrip_ReturnsDialErrorUnchanged(t *testing.T) {
	want := &dialError{"10.0.0.1:80"}
	c := &Client{Dial: func(context.Context, string) (net.Conn, error) { return nil, want }}
	_, err := c.RoundTrip(newRequest(t, context.Background(), http.MethodGet, "http://10.0.0.1", nil))
	if err != want {
		t.Errorf("err = %v, want the dial error itself", err)
	}
}

func TestRoundTrip_RejectsUnsupportedURLs(t *testing.T) {
	c, d := newClient(t)
	for _, url := range []string{"https://127.0.0.1:1/", "ftp://127.0.0.1/"} {
		if _, err := c.RoundTrip(newRequest(t, context.Background(), http.MethodGet, url, nil)); err == nil {
			t.Errorf("%s: no error", url)
		}
	}
	if d.dials() != 0 {
		t.Errorf("dials = %d, want 0", d.dials())
	}
}
