package tlscheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ambientmesh/ambient/bench/certdir"
)

// StartClient starts an instance of a pair's client side that tunnels to
// upstream and returns its plaintext listen address and a stop function.
type StartClient func(ctx context.Context, upstream string) (listen string, stop func(), err error)

// handshake is what the fake upstream saw of one incoming connection.
type handshake struct {
	versions []uint16 // supported_versions offered
	suites   []uint16 // cipher suites offered
	state    tls.ConnectionState
	uris     []string // client leaf URI SANs
	err      error
	data     bool // application data arrived after the handshake
}

// fakeUpstream is a Go TLS server standing in for a pair's server side.
type fakeUpstream struct {
	ln      net.Listener
	cfg     *tls.Config
	results chan handshake

	mu    sync.Mutex // mu guards conns.
	conns []net.Conn
}

func newFakeUpstream(serverCerts string, env Env) (*fakeUpstream, error) {
	pair, _, err := certdir.Load(serverCerts, certdir.Server)
	if err != nil {
		return nil, err
	}
	roots, err := certdir.LoadRoots(env.Certs)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("tlscheck: %w", err)
	}
	f := &fakeUpstream{ln: ln, results: make(chan handshake, 16)}
	f.cfg = &tls.Config{
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   env.ALPN,
		// Require a certificate but verify it ourselves, so a bad one is
		// reported instead of just failing the handshake.
		ClientAuth: tls.RequireAnyClientCert,
	}
	go f.acceptFakeUpstream(roots, env.Timeout)
	return f, nil
}

func (f *fakeUpstream) acceptFakeUpstream(roots *x509.CertPool, timeout time.Duration) {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		go f.handshakeFakeUpstream(c, roots, timeout)
	}
}

func (f *fakeUpstream) handshakeFakeUpstream(c net.Conn, roots *x509.CertPool, timeout time.Duration) {
	var h handshake
	cfg := f.cfg.Clone()
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		h.versions = slices.Clone(hello.SupportedVersions)
		h.suites = slices.Clone(hello.CipherSuites)
		return nil, nil
	}
	cfg.VerifyConnection = verifyChain(roots, x509.ExtKeyUsageClientAuth, &h.uris)
	tc := tls.Server(c, cfg)
	c.SetDeadline(time.Now().Add(timeout))
	h.err = tc.Handshake()
	h.state = tc.ConnectionState()
	if h.err == nil {
		var b [1]byte
		n, _ := tc.Read(b[:])
		h.data = n > 0
	}
	select {
	case f.results <- h:
	default:
	}
}

func (f *fakeUpstream) close() {
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
}

// trigger opens a plaintext connection to the client side and sends a few
// bytes so that even a lazily dialling proxy connects upstream, then waits
// for a handshake seen by the fake upstream that want accepts (the last one
// seen is returned on timeout). Earlier connections, such as the readiness
// probe's, may also be reported, so want must not rely on the handshake
// being the trigger's own unless it checks h.data.
func trigger(ctx context.Context, listen string, f *fakeUpstream, timeout time.Duration, want func(handshake) bool) (handshake, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", listen)
	if err != nil {
		return handshake{}, fmt.Errorf("tlscheck: dial client side %s: %w", listen, err)
	}
	defer c.Close()
	c.Write([]byte("MBN1 handshake probe"))
	t := time.NewTimer(timeout)
	defer t.Stop()
	var last *handshake
	for {
		select {
		case h := <-f.results:
			if want(h) {
				return h, nil
			}
			last = &h
		case <-t.C:
			if last != nil {
				return *last, nil
			}
			return handshake{}, fmt.Errorf("tlscheck: client side never connected upstream within %v", timeout)
		case <-ctx.Done():
			return handshake{}, ctx.Err()
		}
	}
}

func names(ids []uint16, name func(uint16) string) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = name(id)
	}
	return strings.Join(s, ",")
}

// Client runs the client-side checks. It starts two instances of the client
// side through start, one against a fake upstream with the bench server
// SVID and one against a fake upstream with a foreign CA's certificate.
func Client(ctx context.Context, start StartClient, env Env) []Check {
	env = env.withDefaults()
	run := func(name, serverCerts string, want func(handshake) bool, judge func(handshake) (bool, string)) Check {
		f, err := newFakeUpstream(serverCerts, env)
		if err != nil {
			return Check{Name: name, Detail: err.Error()}
		}
		defer f.close()
		listen, stop, err := start(ctx, f.ln.Addr().String())
		if err != nil {
			return Check{Name: name, Detail: err.Error()}
		}
		defer stop()
		h, err := trigger(ctx, listen, f, env.Timeout, want)
		if err != nil {
			return Check{Name: name, Detail: err.Error()}
		}
		ok, detail := judge(h)
		return Check{Name: name, OK: ok, Detail: detail}
	}
	return []Check{
		run("client presents a valid client SVID, offers only TLS 1.3, negotiates TLS_AES_128_GCM_SHA256", env.Certs,
			func(h handshake) bool { return h.err == nil && h.data }, // the trigger's own connection
			func(h handshake) (bool, string) {
				detail := fmt.Sprintf("offered versions [%s] suites [%s]; ", names(h.versions, tls.VersionName), names(h.suites, tls.CipherSuiteName))
				if h.err != nil {
					return false, detail + "handshake: " + h.err.Error()
				}
				detail += fmt.Sprintf("negotiated %s %s, client %v", tls.VersionName(h.state.Version), tls.CipherSuiteName(h.state.CipherSuite), h.uris)
				ok := slices.Equal(h.versions, []uint16{tls.VersionTLS13}) &&
					h.state.Version == tls.VersionTLS13 && h.state.CipherSuite == CipherSuite && len(h.uris) > 0
				return ok, detail
			}),
		// Every connection of this instance faces the impostor, so any one
		// of them is evidence; one that completes the handshake fails.
		run("client refuses a server certificate from a foreign CA", env.Foreign,
			func(handshake) bool { return true },
			func(h handshake) (bool, string) {
				if h.err == nil {
					return false, "handshake COMPLETED with the impostor"
				}
				return true, "handshake aborted: " + h.err.Error()
			}),
	}
}
