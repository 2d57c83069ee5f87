package identity_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	otherTD  = spiffeid.RequireTrustDomainFromString("other.example")
	serverID = spiffeid.RequireFromString("spiffe://cluster.local/ns/istio-system/sa/ztunnel")
	clientID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
)

type end struct {
	state tls.ConnectionState
	err   error
}

// handshake runs a TLS handshake over loopback TCP. On success the server
// sends one byte, which the client reads, so a client certificate rejected by
// the server (which TLS 1.3 reports after the client's handshake returns)
// surfaces as a client error too.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (srv, cli end) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)
	srvDone := make(chan end, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvDone <- end{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		tc := tls.Server(c, serverCfg)
		if err := tc.Handshake(); err != nil {
			srvDone <- end{err: err}
			return
		}
		_, err = tc.Write([]byte{1})
		srvDone <- end{state: tc.ConnectionState(), err: err}
		_, _ = io.Copy(io.Discard, tc) // until the client closes
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(deadline)
	tc := tls.Client(c, clientCfg)
	cli.err = tc.Handshake()
	if cli.err == nil {
		_, cli.err = io.ReadFull(tc, make([]byte, 1))
	}
	cli.state = tc.ConnectionState()
	_ = tc.Close()
	return <-srvDone, cli
}

func mint(t *testing.T, a *ca.Authority, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	svid, err := a.NewSVID(id, time.Hour)
	if err != nil {
		t.Fatalf("mint %s: %v", id, err)
	}
	return svid
}

func newCA(t *testing.T, td spiffeid.TrustDomain) *ca.Authority {
	t.Helper()
	a, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestMutualTLS(t *testing.T) {
	mesh := newCA(t, td)
	foreign := newCA(t, td) // same trust domain name, different root
	other := newCA(t, otherTD)
	expired := func(id spiffeid.ID) *x509svid.SVID {
		svid, err := mesh.NewSVIDAt(id, time.Now().Add(-2*time.Hour), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return svid
	}
	otherServerID := spiffeid.RequireFromString("spiffe://other.example/ns/istio-system/sa/ztunnel")
	otherClientID := spiffeid.RequireFromString("spiffe://other.example/ns/default/sa/client")

	tests := []struct {
		name          string
		server        *x509svid.SVID
		serverBundles x509bundle.Source
		client        *x509svid.SVID
		want          spiffeid.ID // the server ID the client expects
		serverErr     []error     // what the server's verification must report
		clientErr     []error     // what the client's verification must report
	}{
		{name: "mutual success", server: mint(t, mesh, serverID), client: mint(t, mesh, clientID), want: serverID},
		{name: "client from a foreign CA", server: mint(t, mesh, serverID), client: mint(t, foreign, clientID), want: serverID,
			serverErr: []error{identity.ErrPeerUnknownAuthority}},
		{name: "expired client", server: mint(t, mesh, serverID), client: expired(clientID), want: serverID,
			serverErr: []error{identity.ErrPeerExpired}},
		{name: "client from another trust domain", server: mint(t, mesh, serverID), client: mint(t, other, otherClientID), want: serverID,
			serverErr: []error{identity.ErrPeerWrongTrustDomain}},
		{name: "client from another trust domain despite a federated bundle", server: mint(t, mesh, serverID),
			serverBundles: x509bundle.NewSet(mesh.Bundle(), other.Bundle()),
			client:        mint(t, other, otherClientID), want: serverID,
			serverErr: []error{identity.ErrPeerWrongTrustDomain}},
		{name: "server has the wrong SPIFFE ID", server: mint(t, mesh, serverID), client: mint(t, mesh, clientID),
			want:      spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/reviews"),
			clientErr: []error{identity.ErrPeerWrongID}},
		{name: "server from a foreign CA", server: mint(t, foreign, serverID), client: mint(t, mesh, clientID), want: serverID,
			clientErr: []error{identity.ErrPeerUnknownAuthority}},
		{name: "expired server", server: expired(serverID), client: mint(t, mesh, clientID), want: serverID,
			clientErr: []error{identity.ErrPeerExpired}},
		{name: "server in another trust domain", server: mint(t, other, otherServerID), client: mint(t, mesh, clientID), want: serverID,
			clientErr: []error{identity.ErrPeerWrongID, identity.ErrPeerWrongTrustDomain}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serverBundles := tt.serverBundles
			if serverBundles == nil {
				serverBundles = mesh.Bundle()
			}
			serverCfg := identity.ServerConfig(identity.NewStaticSource(tt.server, nil), serverBundles, td)
			clientCfg := identity.ClientConfig(identity.NewStaticSource(tt.client, nil), mesh.Bundle(), tt.want)
			srv, cli := handshake(t, serverCfg, clientCfg)

			check := func(side string, got error, want []error) {
				t.Helper()
				for _, w := range want {
					if !errors.Is(got, w) {
						t.Errorf("%s error = %v, want it to wrap %q", side, got, w)
					}
				}
			}
			t.Logf("server: %v\n\tclient: %v", srv.err, cli.err)
			check("server", srv.err, tt.serverErr)
			check("client", cli.err, tt.clientErr)
			if tt.serverErr != nil || tt.clientErr != nil {
				if srv.err == nil || cli.err == nil {
					t.Errorf("both ends must fail when one refuses: server %v, client %v", srv.err, cli.err)
				}
				return
			}
			if srv.err != nil || cli.err != nil {
				t.Fatalf("handshake failed: server %v, client %v", srv.err, cli.err)
			}
			if got, err := identity.PeerID(srv.state); err != nil || got != clientID {
				t.Errorf("server PeerID = %s, %v; want %s", got, err, clientID)
			}
			if got, err := identity.PeerID(cli.state); err != nil || got != serverID {
				t.Errorf("client PeerID = %s, %v; want %s", got, err, serverID)
			}
			for _, st := range []tls.ConnectionState{srv.state, cli.state} {
				if st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != identity.ALPNHTTP2 || st.DidResume {
					t.Errorf("version %x, ALPN %q, resumed %v; want TLS 1.3, h2, full handshake", st.Version, st.NegotiatedProtocol, st.DidResume)
				}
			}
		})
	}
}

func TestServerConfig_RefusesClientsWithoutSVIDOrOnTLS12(t *testing.T) {
	mesh := newCA(t, td)
	serverCfg := identity.ServerConfig(identity.NewStaticSource(mint(t, mesh, serverID), nil), mesh.Bundle(), td)
	clientCert := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		svid := mint(t, mesh, clientID)
		return &tls.Certificate{Certificate: [][]byte{svid.Certificates[0].Raw}, PrivateKey: svid.PrivateKey}, nil
	}
	tests := []struct {
		name   string
		client *tls.Config
		msg    string
	}{
		{"no client certificate", &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}, "certificate"},
		{"TLS 1.2 client", &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, GetClientCertificate: clientCert}, "version"},
		{"CA certificate as client certificate", &tls.Config{InsecureSkipVerify: true, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			certPEM, keyPEM, err := mesh.MarshalPEM()
			if err != nil {
				return nil, err
			}
			c, err := tls.X509KeyPair(certPEM, keyPEM)
			return &c, err
		}}, identity.ErrPeerInvalid.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := handshake(t, serverCfg, tt.client)
			if srv.err == nil || !strings.Contains(srv.err.Error(), tt.msg) {
				t.Errorf("server error = %v, want a refusal mentioning %q", srv.err, tt.msg)
			}
		})
	}
}

func TestConfigs_UseTLS13AndALPN(t *testing.T) {
	mesh := newCA(t, td)
	src := identity.NewStaticSource(mint(t, mesh, serverID), mesh.Bundle())
	for _, cfg := range []*tls.Config{identity.ServerConfig(src, src, td), identity.ClientConfig(src, src, serverID)} {
		if cfg.MinVersion != tls.VersionTLS13 || len(cfg.NextProtos) != 1 || cfg.NextProtos[0] != "h2" {
			t.Errorf("MinVersion %x NextProtos %v; want TLS 1.3 and [h2]", cfg.MinVersion, cfg.NextProtos)
		}
	}
	h3 := identity.WithNextProtos(identity.ALPNHTTP3)
	srv, cli := handshake(t,
		identity.ServerConfig(src, src, td, h3),
		identity.ClientConfig(identity.NewStaticSource(mint(t, mesh, clientID), nil), mesh.Bundle(), serverID, h3))
	if srv.err != nil || cli.err != nil || cli.state.NegotiatedProtocol != "h3" {
		t.Errorf("h3 handshake: server %v, client %v, ALPN %q", srv.err, cli.err, cli.state.NegotiatedProtocol)
	}
}

func TestConfigs_WithClockJudgesExpiry(t *testing.T) {
	mesh := newCA(t, td)
	client := mint(t, mesh, clientID) // valid for the next hour
	later := newFakeClock(time.Now().Add(2 * time.Hour))
	serverCfg := identity.ServerConfig(identity.NewStaticSource(mint(t, mesh, serverID), nil), mesh.Bundle(), td, identity.WithClock(later))
	srv, _ := handshake(t, serverCfg, identity.ClientConfig(identity.NewStaticSource(client, nil), mesh.Bundle(), serverID))
	if !errors.Is(srv.err, identity.ErrPeerExpired) {
		t.Errorf("server error = %v, want ErrPeerExpired judged by the injected clock", srv.err)
	}
}

func TestConfigs_PickUpRotatedCertificates(t *testing.T) {
	leakCheck(t)
	mesh := newCA(t, td)
	src, err := identity.NewSource(context.Background(), identity.SourceConfig{
		ID: serverID,
		Fetch: identity.CSRFetcher(func(_ context.Context, id spiffeid.ID, csrPEM []byte) ([]byte, []byte, error) {
			chain, err := mesh.SignCSR(csrPEM, id, time.Hour)
			return chain, mesh.RootsPEM(), err
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	serverCfg := identity.ServerConfig(src, src, td)
	clientCfg := identity.ClientConfig(identity.NewStaticSource(mint(t, mesh, clientID), nil), mesh.Bundle(), serverID)

	serials := map[string]bool{}
	for i := range 2 {
		srv, cli := handshake(t, serverCfg, clientCfg)
		if srv.err != nil || cli.err != nil {
			t.Fatalf("handshake %d: server %v, client %v", i, srv.err, cli.err)
		}
		serials[cli.state.PeerCertificates[0].SerialNumber.String()] = true
		if err := src.Rotate(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if len(serials) != 2 {
		t.Errorf("the same server certificate was presented after rotation")
	}
}

func TestPeerID_RequiresCompletedHandshake(t *testing.T) {
	if _, err := identity.PeerID(tls.ConnectionState{}); !errors.Is(err, identity.ErrPeerInvalid) {
		t.Errorf("PeerID(incomplete) error = %v, want ErrPeerInvalid", err)
	}
	if _, err := identity.PeerID(tls.ConnectionState{HandshakeComplete: true}); !errors.Is(err, identity.ErrPeerInvalid) {
		t.Errorf("PeerID(no certificates) error = %v, want ErrPeerInvalid", err)
	}
}
