package kubeletapi

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestParseLogOptions_KubectlQueries(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		query   string
		want    LogOptions
		wantErr string
	}{
		{query: "", want: LogOptions{TailLines: -1}},
		{query: "follow=true&tailLines=10&limitBytes=500", want: LogOptions{Follow: true, TailLines: 10, LimitBytes: 500}},
		{query: "tailLines=0&timestamps=true", want: LogOptions{TailLines: 0, Timestamps: true}},
		{query: "sinceSeconds=60", want: LogOptions{TailLines: -1, Since: now.Add(-time.Minute)}},
		{query: "sinceTime=2026-01-01T00:00:00Z", want: LogOptions{TailLines: -1, Since: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{query: "previous=true", want: LogOptions{TailLines: -1, Previous: true}},
		{query: "tailLines=-2", wantErr: "tailLines"},
		{query: "limitBytes=0", wantErr: "limitBytes"},
		{query: "follow=yes", wantErr: "follow"},
		{query: "sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z", wantErr: "at most one"},
		{query: "sinceTime=yesterday", wantErr: "sinceTime"},
	} {
		q, _ := url.ParseQuery(tc.query)
		got, err := ParseLogOptions(q, now)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want one about %s", tc.query, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q = %+v, %v; want %+v", tc.query, got, err, tc.want)
		}
	}
}

func TestTailOffset_LastLinesOfTheFile(t *testing.T) {
	long := strings.Repeat("x", 70<<10) + "\n" // spans chunks
	for _, tc := range []struct {
		content string
		n       int64
		want    string
	}{
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc\n", 3, "a\nb\nc\n"},
		{"a\nb\nc\n", 10, "a\nb\nc\n"},
		{"a\nb\nc", 1, "c"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\nc\n", 0, ""},
		{"a\nb\nc\n", -1, "a\nb\nc\n"},
		{"", 3, ""},
		{"\n\n", 1, "\n"},
		{"first\n" + long + "last\n", 2, long + "last\n"},
	} {
		r := strings.NewReader(tc.content)
		off, err := tailOffset(r, int64(len(tc.content)), tc.n)
		if err != nil || tc.content[off:] != tc.want {
			t.Errorf("tail %d of %.20q: offset %d (%.20q), %v; want %.20q", tc.n, tc.content, off, tc.content[off:], err, tc.want)
		}
	}
}

func TestAllowAPIServer_OnlyTheAPIServerOrMasters(t *testing.T) {
	for _, tc := range []struct {
		id Identity
		ok bool
	}{
		{Identity{User: KubeletClientCN}, true},
		{Identity{User: "admin", Groups: []string{"system:masters"}}, true},
		{Identity{User: "system:node:node-1", Groups: []string{"system:nodes"}}, false},
		{Identity{}, false},
	} {
		err := AllowAPIServer(tc.id)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrForbidden)) {
			t.Errorf("AllowAPIServer(%+v) = %v, want allowed %v", tc.id, err, tc.ok)
		}
	}
}

// testCA mints client certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) client(t *testing.T, cn string, orgs ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// fakeRuntime serves one pod, default/app, container c, from a file.
type fakeRuntime struct {
	log  string
	gone chan struct{}
}

func (f *fakeRuntime) LogFile(ns, pod, ctr string) (LogFile, error) {
	if ns != "default" || pod != "app" {
		return LogFile{}, fmt.Errorf("pod %s/%s is not on this node: %w", ns, pod, ErrNotFound)
	}
	if ctr != "c" {
		return LogFile{}, fmt.Errorf("container %q is not in pod app: %w", ctr, ErrNotFound)
	}
	return LogFile{Path: f.log, Gone: f.gone}, nil
}

func (f *fakeRuntime) Exec(context.Context, string, string, string, []string, Stdio) (int, error) {
	return 0, errors.New("not in this fake")
}

func (f *fakeRuntime) PortForward(context.Context, string, string, int32, io.ReadWriteCloser) error {
	return errors.New("not in this fake")
}

// startServer runs a Server on 127.0.0.1 with the fake runtime until the
// test ends.
func startServer(t *testing.T, ca *testCA, rt Runtime) (addr string, srv *Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err = New(Config{NodeName: "node-1", NodeIP: netip.MustParseAddr("127.0.0.1"), Port: ln.Addr().(*net.TCPAddr).Port,
		ClientCA: ca.pem, Runtime: rt, FollowPoll: 20 * time.Millisecond,
		Listen: func(string, string) (net.Listener, error) { return ln, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return")
		}
	})
	return ln.Addr().String(), srv
}

func clientFor(srv *Server, cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	cfg := &tls.Config{RootCAs: pool, ServerName: "node-1"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
}

func TestServer_RefusesClientsOutsideTheClusterCA(t *testing.T) {
	verifyNoLeaks(t)
	ca, other := newTestCA(t, "cluster"), newTestCA(t, "other")
	rt := &fakeRuntime{log: filepath.Join(t.TempDir(), "c.log"), gone: make(chan struct{})}
	addr, srv := startServer(t, ca, rt)
	url := "https://" + addr + "/healthz"

	for name, cert := range map[string]*tls.Certificate{"no certificate": nil, "another CA's certificate": ptr(other.client(t, KubeletClientCN, "system:masters"))} {
		resp, err := clientFor(srv, cert).Get(url)
		if err == nil {
			resp.Body.Close()
			t.Errorf("%s: got %s, want the handshake refused", name, resp.Status)
		}
	}
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		want int
	}{
		{"apiserver", ca.client(t, KubeletClientCN), http.StatusOK},
		{"master", ca.client(t, "admin", "system:masters"), http.StatusOK},
		{"node", ca.client(t, "system:node:node-2", "system:nodes"), http.StatusForbidden},
	} {
		resp, err := clientFor(srv, &tc.cert).Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %s, want %d", tc.name, resp.Status, tc.want)
		}
	}
}

// verifyNoLeaks checks, after the test's later cleanups (the server's),
// that no goroutine started during the test is left.
func verifyNoLeaks(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
}

func ptr[T any](v T) *T { return &v }

func TestServer_ContainerLogs(t *testing.T) {
	verifyNoLeaks(t)
	ca := newTestCA(t, "cluster")
	logPath := filepath.Join(t.TempDir(), "c.log")
	if err := os.WriteFile(logPath, []byte("one\ntwo\nthree\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rt := &fakeRuntime{log: logPath, gone: make(chan struct{})}
	addr, srv := startServer(t, ca, rt)
	cert := ca.client(t, KubeletClientCN)
	hc := clientFor(srv, &cert)
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := hc.Get("https://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		path     string
		code     int
		contains string
	}{
		{"/containerLogs/default/app/c", 200, "one\ntwo\nthree\n"},
		{"/containerLogs/default/app/c?tailLines=1", 200, "three\n"},
		{"/containerLogs/default/app/c?limitBytes=5", 200, "one\nt"},
		{"/containerLogs/default/app/c?timestamps=true&sinceSeconds=3600", 200, "one\ntwo\nthree\n"},
		{"/containerLogs/default/app/c?previous=true", 400, "keeps one log per container"},
		{"/containerLogs/default/app/nope", 404, `container "nope" is not in pod app`},
		{"/containerLogs/default/gone/c", 404, "pod default/gone is not on this node"},
		{"/containerLogs/default/app/c?tailLines=x", 400, "tailLines"},
	} {
		code, body := get(tc.path)
		if code != tc.code || (code == 200 && body != tc.contains) || !strings.Contains(body, tc.contains) {
			t.Errorf("GET %s = %d %q, want %d with %q", tc.path, code, body, tc.code, tc.contains)
		}
	}
	// An old file and sinceSeconds: nothing of what is there.
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(logPath, old, old); err != nil {
		t.Fatal(err)
	}
	if code, body := get("/containerLogs/default/app/c?sinceSeconds=60"); code != 200 || body != "" {
		t.Errorf("sinceSeconds past the last write = %d %q, want nothing", code, body)
	}

	// follow: the tail, then what is appended, until the pod is gone.
	resp, err := hc.Get("https://" + addr + "/containerLogs/default/app/c?follow=true&tailLines=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewReader(resp.Body)
	readLine := func() string {
		l, err := lines.ReadString('\n')
		if err != nil {
			t.Fatalf("follow: %v", err)
		}
		return l
	}
	if l := readLine(); l != "three\n" {
		t.Fatalf("follow starts with %q", l)
	}
	f, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "four")
	f.Close()
	if l := readLine(); l != "four\n" {
		t.Fatalf("follow then gave %q, want the appended line", l)
	}
	close(rt.gone)
	if rest, err := io.ReadAll(lines); err != nil || len(rest) != 0 {
		t.Errorf("after the pod went: %q, %v; want the end of the stream", rest, err)
	}
}
