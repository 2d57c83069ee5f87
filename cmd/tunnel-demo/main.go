// Command tunnel-demo runs the HBONE tunnel end to end on loopback and
// narrates it: a CA mints SPIFFE certificates, an app connection crosses the
// mutual-TLS HTTP/2 CONNECT tunnel, and a caller the policy does not allow
// and a certificate from a foreign CA are both refused.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/identity"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "tunnel-demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }
func note(format string, args ...any) { fmt.Printf("    "+format+"\n", args...) }

func run(ctx context.Context) error {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	frontend := spiffeid.RequireFromPath(td, "/ns/shop/sa/frontend")
	backend := spiffeid.RequireFromPath(td, "/ns/shop/sa/backend")
	intruder := spiffeid.RequireFromPath(td, "/ns/shop/sa/intruder")

	step("Creating the mesh CA for trust domain %s", td)
	authority, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		return err
	}
	root := authority.Bundle().X509Authorities()[0]
	note("root %q, ECDSA P-256, valid until %s", root.Subject.CommonName, root.NotAfter.Format(time.DateOnly))

	step("Minting workload certificates (24 h, one URI SAN each)")
	sources := map[spiffeid.ID]x509svid.Source{}
	for _, id := range []spiffeid.ID{frontend, backend, intruder} {
		svid, err := authority.NewSVID(id, 24*time.Hour)
		if err != nil {
			return err
		}
		sources[id] = identity.NewStaticSource(svid, authority.Bundle())
		note("%s  serial %x", id, svid.Certificates[0].SerialNumber.Bytes()[:6])
	}

	step("Starting the backend app: a plain TCP echo server that knows nothing of the mesh")
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer app.Close()
	go serveEcho(app)
	appAddr := netip.MustParseAddrPort(app.Addr().String())
	note("listening on %s", appAddr)

	step("Starting the HBONE server as %s (policy: allow only %s)", backend, frontend)
	results := make(chan hbone.StreamResult, 8)
	refusals := make(chan error, 8)
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig: identity.ServerConfig(sources[backend], authority.Bundle(), td),
		Authorize: func(_ context.Context, st *hbone.Stream) error {
			if st.Peer != frontend {
				return fmt.Errorf("%s is not allowed", st.Peer)
			}
			return nil
		},
		OnStreamEnd:   func(r hbone.StreamResult) { results <- r },
		OnConnRefused: func(_ net.Addr, err error) { refusals <- err },
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srvCtx, stopSrv := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(srvCtx, ln) }()
	defer func() { stopSrv(); <-served }()
	tunnelAddr := netip.MustParseAddrPort(ln.Addr().String())
	note("TLS 1.3 + ALPN h2 on %s", tunnelAddr)

	client, err := hbone.NewClient(hbone.ClientConfig{
		TLSConfig: func(src, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientConfig(sources[src], authority.Bundle(), dst), nil
		},
	})
	if err != nil {
		return err
	}
	defer client.Close()
	target := hbone.Target{Source: frontend, Destination: backend, Address: tunnelAddr, Authority: appAddr}

	step("Opening a tunnel as %s: CONNECT %s", frontend, appAddr)
	conn, err := client.Dial(ctx, target)
	if err != nil {
		return err
	}
	note("200: tunnel open")
	if err := roundTrip(conn, "hello from the frontend"); err != nil {
		return err
	}
	const size = 256 << 20
	start := time.Now()
	sum, echoed, err := transfer(conn, size)
	if err != nil {
		return err
	}
	el := time.Since(start)
	note("sent %d MiB and got it echoed back in %v (%.0f MB/s each way); SHA-256 %x… matches: %v",
		size>>20, el.Round(time.Millisecond), float64(size)/el.Seconds()/1e6, sum[:6], sum == echoed)
	if sum != echoed {
		return errors.New("echoed data differs")
	}
	allowed := <-results
	note("server's record: peer %s, %d bytes in, %d bytes out, status %d", allowed.Peer, allowed.BytesIn, allowed.BytesOut, allowed.Status)

	step("Opening a tunnel as %s, which the policy does not allow", intruder)
	_, err = client.Dial(ctx, hbone.Target{Source: intruder, Destination: backend, Address: tunnelAddr, Authority: appAddr})
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != 401 {
		return fmt.Errorf("intruder: got %v, want 401", err)
	}
	note("%v", err)
	r := <-results
	note("server's record: peer %s, status %d, reason: %v", r.Peer, r.Status, r.Err)

	step("Presenting a certificate from a foreign CA")
	foreignCA, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		return err
	}
	fsvid, err := foreignCA.NewSVID(frontend, time.Hour)
	if err != nil {
		return err
	}
	foreign, err := hbone.NewClient(hbone.ClientConfig{
		TLSConfig: func(_, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientConfig(identity.NewStaticSource(fsvid, foreignCA.Bundle()), authority.Bundle(), dst), nil
		},
	})
	if err != nil {
		return err
	}
	defer foreign.Close()
	if c, err := foreign.Dial(ctx, target); err == nil {
		c.Write([]byte("x")) // TLS 1.3: the refusal arrives with the first read
		_, err = c.Read(make([]byte, 1))
		c.Close()
		note("client saw: %v", err)
	} else {
		note("client saw: %v", err)
	}
	select {
	case err := <-refusals:
		note("server refused the connection: %v", err)
	case <-time.After(5 * time.Second):
		return errors.New("foreign certificate was not refused")
	}

	step("Flow record (JSON) of the allowed connection, as the server reported it")
	b, _ := json.Marshal(map[string]any{
		"src.identity": allowed.Peer.String(), "src.addr": allowed.PeerAddr.String(),
		"dst.identity": backend.String(), "dst.addr": allowed.Authority.String(),
		"bytes_in": allowed.BytesIn, "bytes_out": allowed.BytesOut,
		"duration_ms": allowed.Duration.Milliseconds(), "status": allowed.Status,
	})
	fmt.Println("    " + string(b))
	step("Done. Run `make test` for the full test suite and `make bench` for the comparison with C TLS proxies.")
	return nil
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func roundTrip(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	note("echo: %q", buf)
	return nil
}

// transfer sends size random bytes, half-closes, and hashes what comes back.
func transfer(c net.Conn, size int64) (sent, echoed [32]byte, err error) {
	h := sha256.New()
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.NewChaCha8([32]byte{7}), size))
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	back := sha256.New()
	if _, err := io.Copy(back, c); err != nil {
		return sent, echoed, err
	}
	if err := <-errc; err != nil {
		return sent, echoed, err
	}
	c.Close()
	copy(sent[:], h.Sum(nil))
	copy(echoed[:], back.Sum(nil))
	return sent, echoed, nil
}
