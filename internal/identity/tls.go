package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ALPN protocol IDs.
const (
	ALPNHTTP2 = "h2" // HBONE over TCP (the default)
	ALPNHTTP3 = "h3" // HBONE over QUIC
)

// Peer verification failures. An error from a handshake made with
// ServerConfig or ClientConfig that failed on our side wraps one of these.
var (
	// ErrPeerUnknownAuthority: the peer's chain does not lead to a root in
	// our bundle (a foreign CA), or we have no bundle for its trust domain.
	ErrPeerUnknownAuthority = errors.New("identity: peer certificate is not signed by a trusted authority")
	// ErrPeerExpired: a certificate of the peer's chain has expired or is
	// not yet valid.
	ErrPeerExpired = errors.New("identity: peer certificate has expired or is not yet valid")
	// ErrPeerWrongTrustDomain: the peer's SPIFFE ID is in another trust domain.
	ErrPeerWrongTrustDomain = errors.New("identity: peer is in the wrong trust domain")
	// ErrPeerWrongID: the server's SPIFFE ID is not the expected one.
	ErrPeerWrongID = errors.New("identity: peer has the wrong SPIFFE ID")
	// ErrPeerInvalid: the peer sent no certificate or one that is not a
	// well-formed X509-SVID.
	ErrPeerInvalid = errors.New("identity: peer certificate is not a valid X509-SVID")
)

// TLSOption adjusts ServerConfig and ClientConfig.
type TLSOption func(*tlsOptions)

type tlsOptions struct {
	nextProtos []string
	clock      Clock
}

// WithNextProtos replaces the ALPN protocols (default ALPNHTTP2), e.g. with
// ALPNHTTP3 for a QUIC listener or dialer.
func WithNextProtos(protos ...string) TLSOption {
	return func(o *tlsOptions) { o.nextProtos = append([]string(nil), protos...) }
}

// WithClock sets the clock used to judge certificate validity (default
// SystemClock()).
func WithClock(c Clock) TLSOption {
	return func(o *tlsOptions) { o.clock = c }
}

func newTLSOptions(opts []TLSOption) tlsOptions {
	o := tlsOptions{nextProtos: []string{ALPNHTTP2}, clock: SystemClock()}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// ServerConfig returns a TLS 1.3 server configuration that presents the
// current SVID from svids on every handshake, requires a client certificate,
// verifies its chain against bundles, and accepts only SPIFFE IDs in trust
// domain td. Use PeerID on the connection state to learn who connected.
func ServerConfig(svids x509svid.Source, bundles x509bundle.Source, td spiffeid.TrustDomain, opts ...TLSOption) *tls.Config {
	o := newTLSOptions(opts)
	authorize := func(id spiffeid.ID) error {
		if !id.MemberOf(td) {
			return fmt.Errorf("%w: client %s is not in trust domain %q", ErrPeerWrongTrustDomain, id, td)
		}
		return nil
	}
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             o.nextProtos,
		ClientAuth:             tls.RequireAnyClientCert, // verification is ours, below
		GetCertificate:         getCertificate(svids),
		SessionTicketsDisabled: true, // every connection gets a full handshake against current certs
		Time:                   o.clock.Now,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := verifyPeer(cs.PeerCertificates, bundles, o.clock, authorize)
			return err
		},
	}
}

// ClientConfig returns a TLS 1.3 client configuration that presents the
// current SVID from svids on every handshake, verifies the server's chain
// against bundles and accepts only a server whose SPIFFE ID is exactly want.
// Host names are not checked; the SPIFFE ID is the server's identity.
func ClientConfig(svids x509svid.Source, bundles x509bundle.Source, want spiffeid.ID, opts ...TLSOption) *tls.Config {
	o := newTLSOptions(opts)
	authorize := func(id spiffeid.ID) error {
		switch {
		case id == want:
			return nil
		case !id.MemberOf(want.TrustDomain()):
			return fmt.Errorf("%w: %w: server is %s, want %s", ErrPeerWrongID, ErrPeerWrongTrustDomain, id, want)
		default:
			return fmt.Errorf("%w: server is %s, want %s", ErrPeerWrongID, id, want)
		}
	}
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		NextProtos:           o.nextProtos,
		GetClientCertificate: getClientCertificate(svids),
		// The standard verification checks host names against Web PKI roots;
		// VerifyConnection below does SPIFFE verification instead, and runs
		// on every handshake.
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyConnection
		Time:               o.clock.Now,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := verifyPeer(cs.PeerCertificates, bundles, o.clock, authorize)
			return err
		},
	}
}

// PeerID returns the SPIFFE ID of the peer of a completed handshake made with
// ServerConfig or ClientConfig, which have already verified it. On a
// connection made with any other configuration the result proves nothing.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if !cs.HandshakeComplete {
		return spiffeid.ID{}, fmt.Errorf("%w: handshake not complete", ErrPeerInvalid)
	}
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: no peer certificate", ErrPeerInvalid)
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrPeerInvalid, err)
	}
	return id, nil
}

// verifyPeer checks the peer's identity against authorize first (so a peer
// from another trust domain is reported as such rather than as an unknown
// authority), then verifies the chain against the bundle of its trust domain.
func verifyPeer(certs []*x509.Certificate, bundles x509bundle.Source, clock Clock, authorize func(spiffeid.ID) error) (spiffeid.ID, error) {
	if len(certs) == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: no certificate", ErrPeerInvalid)
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrPeerInvalid, err)
	}
	if err := authorize(id); err != nil {
		return id, err
	}
	if bundles == nil {
		return id, fmt.Errorf("%w: no bundle source configured", ErrPeerUnknownAuthority)
	}
	bundle, err := bundles.GetX509BundleForTrustDomain(id.TrustDomain())
	if err != nil {
		return id, fmt.Errorf("%w: %s: %w", ErrPeerUnknownAuthority, id, err)
	}
	if _, _, err := x509svid.Verify(certs, bundle, x509svid.WithTime(clock.Now())); err != nil {
		var unknown x509.UnknownAuthorityError
		var invalid x509.CertificateInvalidError
		switch {
		case errors.As(err, &unknown):
			return id, fmt.Errorf("%w: %s: %w", ErrPeerUnknownAuthority, id, err)
		case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
			return id, fmt.Errorf("%w: %s: %w", ErrPeerExpired, id, err)
		default:
			return id, fmt.Errorf("%w: %s: %w", ErrPeerInvalid, id, err)
		}
	}
	return id, nil
}

var errNoSource = errors.New("identity: no SVID source configured")

func getCertificate(svids x509svid.Source) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if svids == nil {
		return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, errNoSource }
	}
	return tlsconfig.GetCertificate(svids)
}

func getClientCertificate(svids x509svid.Source) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if svids == nil {
		return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return nil, errNoSource }
	}
	return tlsconfig.GetClientCertificate(svids)
}
