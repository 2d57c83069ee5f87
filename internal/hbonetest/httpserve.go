package hbonetest

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// StartUpperHTTP runs an http.Server, stopped at the end of the test,
// that answers each request with its body in upper case, and returns
// the function that hands it a connection to serve (a tunnel handed over
// by a server's Serve hook).
func StartUpperHTTP(t testing.TB) (serve func(net.Conn)) {
	ln := &chanListener{ch: make(chan net.Conn, 1), done: make(chan struct{})}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Write(bytes.ToUpper(body))
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return func(c net.Conn) { ln.ch <- c }
}

// UpperRoundTrips sends n keep-alive POSTs of "hello" on c, to a server
// of StartUpperHTTP, and fails the test unless each is answered "HELLO".
func UpperRoundTrips(t testing.TB, c net.Conn, n int) {
	t.Helper()
	br := bufio.NewReader(c)
	for i := range n {
		req, _ := http.NewRequest("POST", "http://svc/echo", strings.NewReader("hello"))
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "HELLO" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
}

// chanListener hands the conns sent on ch to an http.Server.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }
