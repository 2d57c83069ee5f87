// Package tlscheck proves that a proxy pair of the tunnel benchmark really
// does what the comparison assumes: TLS 1.3 only, TLS_AES_128_GCM_SHA256,
// and mutual authentication against the bench CA on both sides.
//
// Server-side checks dial the pair's TLS listener with Go clients: one with
// a valid client SVID (must be accepted, negotiate TLS 1.3 and the pinned
// suite, and present a server chain valid under ca.pem), one without a
// certificate, one with a certificate from a foreign CA, and one limited to
// TLS 1.2 (all three must be refused).
//
// Client-side checks point a separate instance of the pair's client side at
// a fake upstream (a Go TLS server) and require that the client presents a
// valid client SVID and offers only TLS 1.3, and that it aborts the
// handshake when the upstream shows a certificate from a foreign CA.
//
// In TLS 1.3 a server rejects a client certificate after the client has
// finished its handshake, so "accepted" means: the handshake completed and
// the first read did not fail within a short window (it either timed out,
// because the backend waits for the client to speak, or returned data).
// A server that speaks HTTP inside TLS and refuses a bad client
// certificate only with a 400 answer (nginx's http module) is probed with
// a request instead (Env.HTTPProbe).
package tlscheck

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/ambientmesh/ambient/bench/certdir"
)

// CipherSuite is the TLS 1.3 suite every pair must negotiate.
const CipherSuite = tls.TLS_AES_128_GCM_SHA256

// Check is the outcome of one verification.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Env holds what the checks need.
type Env struct {
	Certs   string   // the bench certificate directory
	Foreign string   // a certificate directory minted by a foreign CA
	ALPN    []string // protocols to offer / accept (hbone: h2)
	// Probe is how long an accepted connection must stay open (default 300ms).
	Probe time.Duration
	// Timeout bounds each handshake (default 5s).
	Timeout time.Duration
	// HTTPProbe is for a server that speaks HTTP/1.1 inside TLS and, like
	// nginx's http module with ssl_verify_client on, completes the
	// handshake whatever the client certificate and refuses the request
	// afterwards with 400: a server-side check then sends a GET after the
	// handshake and counts a 400 answer as refused, any other answer as
	// accepted, instead of probing for a silent read.
	HTTPProbe bool
}

func (e Env) withDefaults() Env {
	if e.Probe <= 0 {
		e.Probe = 300 * time.Millisecond
	}
	if e.Timeout <= 0 {
		e.Timeout = 5 * time.Second
	}
	return e
}

// AllOK reports whether every check passed (and there was at least one).
func AllOK(cs []Check) bool {
	for _, c := range cs {
		if !c.OK {
			return false
		}
	}
	return len(cs) > 0
}

// verifyChain returns a VerifyConnection callback that checks the peer's
// chain against roots for usage, without a host-name check (SVIDs carry a
// URI SAN only), and returns the leaf's URI SANs through uris.
func verifyChain(roots *x509.CertPool, usage x509.ExtKeyUsage, uris *[]string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tlscheck: peer sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		leaf := cs.PeerCertificates[0]
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return err
		}
		if uris != nil {
			for _, u := range leaf.URIs {
				*uris = append(*uris, u.String())
			}
		}
		return nil
	}
}

type dialOpts struct {
	certDir string // "" for no client certificate
	maxVer  uint16
}

type dialResult struct {
	state    tls.ConnectionState
	uris     []string
	accepted bool
	err      error
}

func dialServer(ctx context.Context, addr string, env Env, o dialOpts) dialResult {
	roots, err := certdir.LoadRoots(env.Certs)
	if err != nil {
		return dialResult{err: err}
	}
	var res dialResult
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		MaxVersion:         o.maxVer,
		NextProtos:         env.ALPN,
		InsecureSkipVerify: true, // replaced by VerifyConnection: chain only
		VerifyConnection:   verifyChain(roots, x509.ExtKeyUsageServerAuth, &res.uris),
	}
	if o.certDir != "" {
		pair, _, err := certdir.Load(o.certDir, certdir.Client)
		if err != nil {
			return dialResult{err: err}
		}
		// Always send it, even when the server's certificate_authorities
		// list does not name its issuer (Go would otherwise send none and
		// the foreign-CA check would only repeat the no-certificate one).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	ctx, cancel := context.WithTimeout(ctx, env.Timeout)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		res.err = err
		return res
	}
	defer nc.Close()
	c := nc.(*tls.Conn)
	res.state = c.ConnectionState()
	if env.HTTPProbe {
		c.SetDeadline(time.Now().Add(env.Timeout))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: tlscheck\r\nConnection: close\r\n\r\n"); err != nil {
			res.err = err
			return res
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		switch {
		case err != nil:
			res.err = err
		case resp.StatusCode == http.StatusBadRequest:
			res.err = fmt.Errorf("HTTP %s after the handshake", resp.Status)
		default:
			res.accepted = true
		}
		if resp != nil {
			resp.Body.Close()
		}
		return res
	}
	c.SetReadDeadline(time.Now().Add(env.Probe))
	var b [1]byte
	_, err = c.Read(b[:])
	var ne net.Error
	switch {
	case err == nil, errors.As(err, &ne) && ne.Timeout():
		res.accepted = true
	default:
		res.err = err
	}
	return res
}

func describe(r dialResult) string {
	if r.err != nil {
		return r.err.Error()
	}
	return fmt.Sprintf("%s, %s, ALPN %q, peer %v", tls.VersionName(r.state.Version),
		tls.CipherSuiteName(r.state.CipherSuite), r.state.NegotiatedProtocol, r.uris)
}

// Server runs the server-side checks against the TLS listener addr.
func Server(ctx context.Context, addr string, env Env) []Check {
	env = env.withDefaults()
	var out []Check

	good := dialServer(ctx, addr, env, dialOpts{certDir: env.Certs})
	ok := good.accepted && good.state.Version == tls.VersionTLS13 && good.state.CipherSuite == CipherSuite
	out = append(out, Check{Name: "server accepts a valid client SVID over TLS 1.3 with TLS_AES_128_GCM_SHA256", OK: ok, Detail: describe(good)})

	refused := func(name string, o dialOpts) {
		r := dialServer(ctx, addr, env, o)
		detail := "refused: " + describe(r)
		if r.accepted {
			detail = "ACCEPTED: " + describe(r)
		}
		out = append(out, Check{Name: name, OK: !r.accepted, Detail: detail})
	}
	refused("server refuses a client without a certificate", dialOpts{})
	refused("server refuses a client certificate from a foreign CA", dialOpts{certDir: env.Foreign})
	refused("server refuses TLS 1.2", dialOpts{certDir: env.Certs, maxVer: tls.VersionTLS12})
	return out
}
