package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "reviews"
	}
	if cfg.Version == "" {
		cfg.Version = "v2"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func getReply(t *testing.T, url string, wantCode int) Reply {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantCode {
		t.Fatalf("GET %s: %s, want %d: %s", url, resp.Status, wantCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var r Reply
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, body)
	}
	return r
}

func TestRoot_DescribesInstanceAndCaller(t *testing.T) {
	s := newServer(t, Config{Pod: "reviews-v2-abc", Namespace: "shop", Node: "node-1"})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	r := getReply(t, ts.URL+"/", http.StatusOK)
	want := Reply{Service: "reviews", Version: "v2", Pod: "reviews-v2-abc", Namespace: "shop", Node: "node-1",
		RemoteAddr: r.RemoteAddr, Host: strings.TrimPrefix(ts.URL, "http://")}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err != nil || host != "127.0.0.1" {
		t.Errorf("remoteAddr %q, want the caller's 127.0.0.1:port", r.RemoteAddr)
	}
	if r.Upstreams != nil || r.Service != want.Service || r.Version != want.Version || r.Pod != want.Pod ||
		r.Namespace != want.Namespace || r.Node != want.Node || r.Host != want.Host {
		t.Errorf("reply %+v, want %+v", r, want)
	}
}

func TestRoot_UnknownPathIs404(t *testing.T) {
	ts := httptest.NewServer(newServer(t, Config{}).Handler())
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("status %d, want 404", resp.StatusCode)
	}
}

func TestHealthz(t *testing.T) {
	ts := httptest.NewServer(newServer(t, Config{}).Handler())
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Errorf("healthz: %d %q", resp.StatusCode, body)
	}
}

// A frontend → reviews → ratings chain: each hop's reply nests its
// upstream's, so every identity and caller address is visible at the top.
func TestRoot_UpstreamChainNests(t *testing.T) {
	ratings := httptest.NewServer(newServer(t, Config{Name: "ratings", Version: "v1"}).Handler())
	defer ratings.Close()
	reviews := httptest.NewServer(newServer(t, Config{Name: "reviews", Version: "v2", Upstreams: []string{ratings.URL + "/"}}).Handler())
	defer reviews.Close()
	front := httptest.NewServer(newServer(t, Config{Name: "frontend", Version: "v1", Upstreams: []string{reviews.URL + "/"}}).Handler())
	defer front.Close()

	r := getReply(t, front.URL+"/", http.StatusOK)
	if r.Service != "frontend" || len(r.Upstreams) != 1 {
		t.Fatalf("frontend reply %+v", r)
	}
	up := r.Upstreams[0]
	if up.Status != 200 || up.Error != "" || up.URL != reviews.URL+"/" {
		t.Fatalf("upstream %+v", up)
	}
	var rev Reply
	if err := json.Unmarshal(up.Body, &rev); err != nil {
		t.Fatalf("reviews body not nested JSON: %v: %s", err, up.Body)
	}
	if rev.Service != "reviews" || rev.Version != "v2" || len(rev.Upstreams) != 1 {
		t.Fatalf("reviews reply %+v", rev)
	}
	var rat Reply
	if err := json.Unmarshal(rev.Upstreams[0].Body, &rat); err != nil || rat.Service != "ratings" {
		t.Fatalf("ratings reply %+v (%v)", rat, err)
	}
}

// TestRoot_BrokenChainIs502: a failure anywhere below turns every reply
// above it into 502, with the failure in the nested body.
func TestRoot_BrokenChainIs502(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL + "/"
	dead.Close()
	reviews := httptest.NewServer(newServer(t, Config{Name: "reviews", Version: "v1", Upstreams: []string{deadURL}}).Handler())
	defer reviews.Close()
	front := httptest.NewServer(newServer(t, Config{Name: "frontend", Version: "v1", Upstreams: []string{reviews.URL + "/"}}).Handler())
	defer front.Close()

	r := getReply(t, front.URL+"/", http.StatusBadGateway)
	if len(r.Upstreams) != 1 || r.Upstreams[0].Status != http.StatusBadGateway {
		t.Fatalf("frontend reply %+v, want reviews' 502 nested", r)
	}
	var rev Reply
	if err := json.Unmarshal(r.Upstreams[0].Body, &rev); err != nil || len(rev.Upstreams) != 1 || rev.Upstreams[0].Error == "" {
		t.Fatalf("reviews reply %+v (%v), want the failed call's error", rev, err)
	}
}

func TestCall_ReturnsUpstreamReply(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		io.WriteString(w, "plain text, not JSON")
	}))
	defer backend.Close()
	ts := httptest.NewServer(newServer(t, Config{}).Handler())
	defer ts.Close()

	r := getReply(t, ts.URL+"/call?url="+backend.URL+"/x", http.StatusOK)
	if len(r.Upstreams) != 1 {
		t.Fatalf("upstreams %+v", r.Upstreams)
	}
	up := r.Upstreams[0]
	var body string
	if err := json.Unmarshal(up.Body, &body); err != nil || body != "plain text, not JSON" || up.Status != http.StatusTeapot {
		t.Errorf("upstream %+v (body %q, %v): want the non-JSON body as a string and the upstream's status", up, body, err)
	}
}

func TestCall_UnreachableIs502(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String() + "/"
	ln.Close()
	ts := httptest.NewServer(newServer(t, Config{}).Handler())
	defer ts.Close()
	r := getReply(t, ts.URL+"/call?url="+dead, http.StatusBadGateway)
	if len(r.Upstreams) != 1 || r.Upstreams[0].Error == "" || r.Upstreams[0].Status != 0 {
		t.Errorf("upstreams %+v, want one with an error", r.Upstreams)
	}
}

func TestCall_TimesOut(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	ts := httptest.NewServer(newServer(t, Config{CallTimeout: 100 * time.Millisecond}).Handler())
	defer ts.Close()
	start := time.Now()
	r := getReply(t, ts.URL+"/call?url="+slow.URL, http.StatusBadGateway)
	if time.Since(start) > 3*time.Second || !strings.Contains(r.Upstreams[0].Error, "deadline") {
		t.Errorf("after %v: %+v, want a deadline error", time.Since(start), r.Upstreams)
	}
}

func TestCall_RejectsBadURL(t *testing.T) {
	ts := httptest.NewServer(newServer(t, Config{}).Handler())
	defer ts.Close()
	for _, q := range []string{"", "?url=", "?url=ftp://x/", "?url=/relative", "?url=http://"} {
		resp, err := http.Get(ts.URL + "/call" + q)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(body, []byte("/call?url=")) {
			t.Errorf("/call%s: %d %q, want 400 saying how to call it", q, resp.StatusCode, body)
		}
	}
}

func TestParseFlags(t *testing.T) {
	env := map[string]string{"POD_NAME": "p-1", "POD_NAMESPACE": "shop", "NODE_NAME": "n-1", "SERVICE_NAME": "ratings"}
	cfg, err := parseFlags([]string{"--listen", ":9090", "--version", "v2", "--upstream", "http://a:1/", "--upstream", "http://b:2/", "--tcp-echo", ":9000"},
		func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":9090" || cfg.Version != "v2" || cfg.Name != "ratings" || cfg.Pod != "p-1" || cfg.Namespace != "shop" ||
		cfg.Node != "n-1" || cfg.TCPEcho != ":9000" || len(cfg.Upstreams) != 2 || cfg.CallTimeout != DefaultCallTimeout {
		t.Errorf("config %+v", cfg)
	}
	for _, args := range [][]string{
		{"--upstream", "nohost"},
		{"--version", ""},
		{"--name", ""},
		{"--call-timeout", "0s"},
		{"extra"},
		{"--nope"},
	} {
		if _, err := parseFlags(args, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) succeeded, want a usage error", args)
		}
	}
}

func TestServe_HTTPAndTCPEchoUntilCancelled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, Listeners{HTTP: ln, Echo: echo}) }()

	getReply(t, "http://"+ln.Addr().String()+"/", http.StatusOK)

	c, err := net.Dial("tcp", echo.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("hello mesh")); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "hello mesh" {
		t.Errorf("echo: %q, %v", got, err)
	}

	// An open echo connection must not keep Serve from returning.
	idle, err := net.Dial("tcp", echo.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

func TestCall_PropagatesTraceAndUserHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
	}))
	defer backend.Close()
	ts := httptest.NewServer(newServer(t, Config{Upstreams: []string{backend.URL + "/"}}).Handler())
	defer ts.Close()

	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/", nil)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req.Header.Set("traceparent", tp)
	req.Header.Set("x-user", "beta")
	req.Header.Set("x-private", "not for upstreams")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := <-got
	if h.Get("Traceparent") != tp || h.Get("X-User") != "beta" || h.Get("X-Private") != "" {
		t.Errorf("upstream saw %v: want traceparent and x-user passed on, x-private not", h)
	}
}

// TestServe_H2CAndGRPCHealth: the port speaks HTTP/2 by prior knowledge,
// and /call?url=grpc://… asks a gRPC health service (the server's own).
func TestServe_H2CAndGRPCHealth(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, Listeners{HTTP: ln}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	defer h2c.CloseIdleConnections()
	client := &http.Client{Transport: h2c, Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + ln.Addr().String() + "/call?url=grpc://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r Reply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 || r.Proto != "HTTP/2.0" {
		t.Errorf("response %s, request seen as %q: want HTTP/2 both ways", resp.Proto, r.Proto)
	}
	if len(r.Upstreams) != 1 || r.Upstreams[0].GRPCStatus != "SERVING" {
		t.Errorf("upstreams %+v, want the gRPC health status SERVING", r.Upstreams)
	}
}

func TestFail_ExactlyThePercentEvenlySpread(t *testing.T) {
	ts := httptest.NewServer(newServer(t, Config{}).Handler())
	defer ts.Close()
	var codes []int
	for range 10 {
		resp, err := http.Get(ts.URL + "/fail?percent=50&code=502")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	for i, c := range codes {
		if want := []int{200, 502}[i%2]; c != want {
			t.Fatalf("codes %v: want 200 and 502 alternating", codes)
		}
	}
	resp, err := http.Get(ts.URL + "/fail?percent=101")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("percent=101: %s, want 400", resp.Status)
	}
}

func TestDelay(t *testing.T) {
	ts := httptest.NewServer(newServer(t, Config{}).Handler())
	defer ts.Close()
	start := time.Now()
	getReply(t, ts.URL+"/delay?d=50ms", http.StatusOK)
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Errorf("answered after %v, want at least 50ms", took)
	}
	for _, bad := range []string{"", "?d=x", "?d=-1s", "?d=1h"} {
		resp, err := http.Get(ts.URL + "/delay" + bad)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("/delay%s: %s, want 400", bad, resp.Status)
		}
	}
}
