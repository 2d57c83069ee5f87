package tlscheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/ambientmesh/ambient/bench/certdir"
	"github.com/ambientmesh/ambient/internal/ca"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func mint(t *testing.T, dir, td string) {
	t.Helper()
	d := spiffeid.RequireTrustDomainFromString(td)
	a, err := ca.NewSelfSigned(d, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := certdir.Write(dir, a, d, time.Hour); err != nil {
		t.Fatal(err)
	}
}

func testEnv(t *testing.T) Env {
	t.Helper()
	root := t.TempDir()
	env := Env{Certs: filepath.Join(root, "certs"), Foreign: filepath.Join(root, "foreign"), Probe: 100 * time.Millisecond, Timeout: 2 * time.Second}
	mint(t, env.Certs, "cluster.local")
	mint(t, env.Foreign, "impostor.example")
	return env
}

// serve runs a Go TLS server standing in for a pair's server side; it holds
// accepted connections open until the test ends.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
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
			wg.Go(func() { io.Copy(io.Discard, c) })
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
	return ln.Addr().String()
}

func serverConfig(t *testing.T, env Env) *tls.Config {
	pair, roots, err := certdir.Load(env.Certs, certdir.Server)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair}, ClientCAs: roots,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
	}
}

func failed(cs []Check) []string {
	var out []string
	for _, c := range cs {
		if !c.OK {
			out = append(out, c.Name)
		}
	}
	return out
}

func TestServer_ProperMutualTLS13Passes(t *testing.T) {
	env := testEnv(t)
	cs := Server(t.Context(), serve(t, serverConfig(t, env)), env)
	if !AllOK(cs) {
		t.Errorf("failed checks: %v\n%+v", failed(cs), cs)
	}
}

func TestServer_CatchesMisconfigurations(t *testing.T) {
	env := testEnv(t)
	tests := []struct {
		name   string
		mutate func(*tls.Config)
		want   []string // the checks that must fail
	}{
		{"no client auth", func(c *tls.Config) { c.ClientAuth = tls.NoClientCert }, []string{"without a certificate", "foreign CA"}},
		{"any client cert", func(c *tls.Config) { c.ClientAuth = tls.RequireAnyClientCert }, []string{"foreign CA"}},
		{"TLS 1.2 allowed", func(c *tls.Config) { c.MinVersion = tls.VersionTLS12 }, []string{"TLS 1.2"}},
		{"server cert from a foreign CA", func(c *tls.Config) {
			pair, _, err := certdir.Load(env.Foreign, certdir.Server)
			if err != nil {
				t.Fatal(err)
			}
			c.Certificates = []tls.Certificate{pair}
		}, []string{"accepts a valid client SVID"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := serverConfig(t, env)
			tt.mutate(cfg)
			cs := Server(t.Context(), serve(t, cfg), env)
			f := failed(cs)
			ok := len(f) == len(tt.want)
			for i := 0; ok && i < len(f); i++ {
				ok = strings.Contains(f[i], tt.want[i])
			}
			if !ok {
				t.Errorf("failed checks = %v, want exactly those about %q", f, tt.want)
			}
		})
	}
}

// goClient is a minimal client side written in Go: it accepts plaintext and
// forwards it over TLS to upstream with cfg.
func goClient(cfg *tls.Config) StartClient {
	return func(ctx context.Context, upstream string) (string, func(), error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, err
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Go(func() {
					defer c.Close()
					u, err := tls.Dial("tcp", upstream, cfg)
					if err != nil {
						return
					}
					defer u.Close()
					io.Copy(u, c)
				})
			}
		})
		return ln.Addr().String(), func() { ln.Close(); wg.Wait() }, nil
	}
}

func clientConfig(t *testing.T, env Env) *tls.Config {
	pair, roots, err := certdir.Load(env.Certs, certdir.Client)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13,
		InsecureSkipVerify: true, // chain-only verification below, as the C proxies do
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyChain(roots, 0, nil)(cs)
		},
	}
}

func TestClient_ProperClientPasses(t *testing.T) {
	env := testEnv(t)
	cs := Client(t.Context(), goClient(clientConfig(t, env)), env)
	if !AllOK(cs) {
		t.Errorf("failed checks: %v\n%+v", failed(cs), cs)
	}
}

func TestClient_CatchesMisconfigurations(t *testing.T) {
	env := testEnv(t)
	tests := []struct {
		name   string
		mutate func(*tls.Config)
		want   string
	}{
		{"trusts any server", func(c *tls.Config) { c.VerifyConnection = nil }, "foreign CA"},
		{"no client certificate", func(c *tls.Config) { c.Certificates = nil }, "presents a valid client SVID"},
		{"offers TLS 1.2", func(c *tls.Config) { c.MinVersion = tls.VersionTLS12 }, "offers only TLS 1.3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := clientConfig(t, env)
			tt.mutate(cfg)
			f := failed(Client(t.Context(), goClient(cfg), env))
			if len(f) != 1 || !strings.Contains(f[0], tt.want) {
				t.Errorf("failed checks = %v, want exactly the one about %q", f, tt.want)
			}
		})
	}
}

// serveHTTPVerifyAfter stands in for nginx's http module with
// ssl_verify_client on: the handshake takes any client certificate (or
// none), and a request without one that chains to the CA gets 400. With
// lax, it answers 200 whatever the certificate.
func serveHTTPVerifyAfter(t *testing.T, env Env, lax bool) string {
	t.Helper()
	cfg := serverConfig(t, env)
	roots := cfg.ClientCAs
	cfg.ClientAuth = tls.RequestClientCert
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		certs := r.TLS.PeerCertificates
		if !lax && (len(certs) == 0 || verifyChain(roots, x509.ExtKeyUsageClientAuth, nil)(*r.TLS) != nil) {
			http.Error(w, "The SSL certificate error", http.StatusBadRequest)
			return
		}
		io.WriteString(w, "ok")
	})}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String()
}

func TestServer_HTTPProbeSeesARefusalAfterTheHandshake(t *testing.T) {
	env := testEnv(t)
	env.HTTPProbe = true
	if cs := Server(t.Context(), serveHTTPVerifyAfter(t, env, false), env); !AllOK(cs) {
		t.Errorf("failed checks: %v\n%+v", failed(cs), cs)
	}
	f := failed(Server(t.Context(), serveHTTPVerifyAfter(t, env, true), env))
	if len(f) != 2 || !strings.Contains(f[0], "without a certificate") || !strings.Contains(f[1], "foreign CA") {
		t.Errorf("against a server that never checks: failed checks = %v, want the two certificate ones", f)
	}
	// Without the probe, such a server's silence after the handshake
	// looks like acceptance: the reason HTTPProbe exists.
	env.HTTPProbe = false
	if f := failed(Server(t.Context(), serveHTTPVerifyAfter(t, env, false), env)); len(f) != 2 {
		t.Errorf("without HTTPProbe: failed checks = %v, want the two certificate ones", f)
	}
}
