package h1client

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitTimeout bounds every wait for a condition in these tests.
const waitTimeout = 10 * time.Second

// testServer is a net/http.Server on loopback TCP that tracks its
// connections' states.
type testServer struct {
	url string
	srv *http.Server

	mu      sync.Mutex
	closed  int           // connections closed or hijacked
	idle    []net.Conn    // connections now idle, in the order they went idle
	changed chan struct{} // closed and replaced on every state change
}

func newTestServer(t testing.TB, h http.HandlerFunc) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{url: "http://" + ln.Addr().String(), changed: make(chan struct{})}
	s.srv = &http.Server{Handler: h, ConnState: s.connState, ReadHeaderTimeout: waitTimeout}
	go s.srv.Serve(ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

func (s *testServer) connState(c net.Conn, state http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := indexConn(s.idle, c); i >= 0 {
		s.idle = append(s.idle[:i], s.idle[i+1:]...)
	}
	switch state {
	case http.StateIdle:
		s.idle = append(s.idle, c)
	case http.StateClosed, http.StateHijacked:
		s.closed++
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

func indexConn(list []net.Conn, c net.Conn) int {
	for i, x := range list {
		if x == c {
			return i
		}
	}
	return -1
}

// waitFor waits until cond, evaluated under s.mu at each state change,
// holds.
func (s *testServer) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok, changed := cond(), s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("server: timed out waiting for %s", what)
		}
	}
}

func (s *testServer) waitClosed(t testing.TB, n int) {
	t.Helper()
	s.waitFor(t, "closed connections", func() bool { return s.closed >= n })
}

// closeIdle closes, server side, the one connection idle on the server.
func (s *testServer) closeIdle(t testing.TB) {
	t.Helper()
	s.waitFor(t, "an idle connection", func() bool { return len(s.idle) == 1 })
	s.mu.Lock()
	c := s.idle[0]
	s.mu.Unlock()
	c.Close()
	s.waitClosed(t, 1)
}

// dialer dials TCP, counting dials and keeping the connections.
type dialer struct {
	n     atomic.Int32
	mu    sync.Mutex
	conns []net.Conn
}

func (d *dialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	d.n.Add(1)
	nd := net.Dialer{Timeout: waitTimeout}
	c, err := nd.DialContext(ctx, "tcp", addr)
	if err == nil {
		d.mu.Lock()
		d.conns = append(d.conns, c)
		d.mu.Unlock()
	}
	return c, err
}

func (d *dialer) dials() int { return int(d.n.Load()) }

func newClient(t testing.TB) (*Client, *dialer) {
	d := &dialer{}
	c := &Client{Dial: d.Dial}
	t.Cleanup(c.CloseIdleConnections)
	return c, d
}

func newRequest(t testing.TB, ctx context.Context, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// do sends req and reads its whole response.
func do(t testing.TB, c *Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

func get(t testing.TB, c *Client, url string) string {
	t.Helper()
	_, b := do(t, c, newRequest(t, context.Background(), http.MethodGet, url, nil))
	return b
}

// rawServer answers each request on its connections with respond, which
// writes raw bytes. When the client closes a connection (EOF or reset),
// gone receives.
type rawServer struct {
	url  string
	gone chan struct{}
}

func newRawServer(t testing.TB, respond func(w io.Writer, req *http.Request)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{url: "http://" + ln.Addr().String(), gone: make(chan struct{}, 16)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { s.serve(c, respond) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return s
}

func (s *rawServer) serve(c net.Conn, respond func(w io.Writer, req *http.Request)) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(waitTimeout))
		req, err := http.ReadRequest(br)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed) {
				select {
				case s.gone <- struct{}{}:
				default:
				}
			}
			return
		}
		io.Copy(io.Discard, req.Body)
		respond(c, req)
	}
}

func (s *rawServer) waitGone(t testing.TB) {
	t.Helper()
	select {
	case <-s.gone:
	case <-time.After(waitTimeout):
		t.Fatal("raw server: the client did not close its connection")
	}
}
