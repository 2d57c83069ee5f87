// Package ca is the certificate-signing core that istiod-lite serves on its
// CA port (DESIGN §3). It has no network code: the gRPC layer authenticates
// the caller, decides which SPIFFE ID the caller may have, and then asks an
// [Authority] to sign the caller's CSR for exactly that ID.
//
// An Authority holds one signing key and certificate for one SPIFFE trust
// domain. It is either a self-signed root made by [NewSelfSigned] (istiod-lite
// persists it with [Authority.MarshalPEM] or [Authority.SecretData] in the
// istio-system/istio-ca-secret Secret) or a user-provided root or
// intermediate loaded with [Load] or [LoadSecretData] (Istio's "cacerts"
// layout: ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
//
// Leaf certificates (X509-SVIDs) issued by [Authority.SignCSR]:
//
//   - exactly one URI SAN, the SPIFFE ID the caller was authorized for; no
//     DNS, IP, e-mail or other names; an empty subject (so the SAN extension
//     is critical, RFC 5280 §4.2.1.6);
//   - basic constraints CA=false; key usage digitalSignature (plus
//     keyEncipherment for RSA keys); extended key usage serverAuth and
//     clientAuth;
//   - NotBefore backdated by [Backdate] for clock skew, NotAfter = now + TTL,
//     where the TTL defaults to 24 h, is capped by Options.MaxTTL and never
//     outlives the CA's own chain;
//   - a random 128-bit serial number.
//
// CSR keys: ECDSA P-256 (what this project's clients generate), P-384 and
// P-521, and RSA keys of at least 2048 bits are accepted; anything else
// (RSA < 2048, Ed25519, DSA, other curves) is refused with
// [ErrUnsupportedKey]. Everything in the CSR other than its public key and
// its SAN is ignored — requested extensions are checked for CA rights and
// then dropped, never copied into the certificate.
//
// An Authority is immutable after construction and safe for concurrent use.
package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults for [Options].
const (
	// DefaultTTL is the lifetime of a leaf when the caller asks for none.
	DefaultTTL = 24 * time.Hour
	// DefaultMaxTTL caps any requested leaf lifetime. Istio allows 90 days;
	// a mesh whose holders rotate at half life has no use for more than a week.
	DefaultMaxTTL = 7 * 24 * time.Hour
	// DefaultRootTTL is the lifetime of a root made by NewSelfSigned.
	DefaultRootTTL = 10 * 365 * 24 * time.Hour
	// Backdate is how far NotBefore is set before the signing time, so a
	// peer whose clock is slightly behind still accepts a fresh certificate
	// (the Kubernetes CSR signer uses the same 5 minutes).
	Backdate = 5 * time.Minute
)

// Keys of the Kubernetes Secret data that Istio uses for CA material, both in
// the user-provided "cacerts" Secret and in istiod's self-signed
// "istio-ca-secret".
const (
	SecretCACert    = "ca-cert.pem"    // the signing certificate
	SecretCAKey     = "ca-key.pem"     // its private key
	SecretRootCert  = "root-cert.pem"  // the trust anchors
	SecretCertChain = "cert-chain.pem" // signing certificate up to the root
)

// Errors returned when constructing or loading an Authority.
var (
	// ErrInvalidCA means the CA material is unusable: unparsable PEM, a key
	// that does not match the certificate, a certificate that is not a CA,
	// or a chain that does not verify to the roots.
	ErrInvalidCA = errors.New("ca: invalid CA material")
	// ErrTrustDomainMismatch means the signing certificate names a SPIFFE
	// trust domain other than the one the Authority is for.
	ErrTrustDomainMismatch = errors.New("ca: CA certificate belongs to another trust domain")
)

// Options tunes an Authority. The zero value selects the defaults above.
type Options struct {
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// DefaultTTL is the leaf lifetime when SignCSR is called with ttl 0;
	// zero means min(DefaultTTL, MaxTTL).
	DefaultTTL time.Duration
	// MaxTTL caps the leaf lifetime; zero means DefaultMaxTTL.
	MaxTTL time.Duration
	// RootTTL is the lifetime of a self-signed root; zero means
	// DefaultRootTTL. Ignored by Load.
	RootTTL time.Duration
}

func (o Options) withDefaults() (Options, error) {
	if o.DefaultTTL < 0 || o.MaxTTL < 0 || o.RootTTL < 0 {
		return o, fmt.Errorf("ca: options: negative duration (DefaultTTL %s, MaxTTL %s, RootTTL %s)", o.DefaultTTL, o.MaxTTL, o.RootTTL)
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.MaxTTL == 0 {
		o.MaxTTL = DefaultMaxTTL
	}
	if o.DefaultTTL == 0 {
		o.DefaultTTL = min(DefaultTTL, o.MaxTTL)
	}
	if o.DefaultTTL > o.MaxTTL {
		return o, fmt.Errorf("ca: options: DefaultTTL %s exceeds MaxTTL %s", o.DefaultTTL, o.MaxTTL)
	}
	if o.RootTTL == 0 {
		o.RootTTL = DefaultRootTTL
	}
	return o, nil
}

// Authority signs X509-SVIDs for one trust domain.
type Authority struct {
	td   spiffeid.TrustDomain
	opts Options
	key  crypto.Signer
	cert *x509.Certificate // signing certificate
	// chain is what follows a leaf on the wire: the signing certificate when
	// it is not itself a root, then any intermediates above it; never a root.
	chain []*x509.Certificate
	roots []*x509.Certificate
	// notAfter is the earliest expiry on the path from the signing
	// certificate to its root; no leaf outlives it.
	notAfter time.Time
}

// NewSelfSigned creates an Authority with a fresh ECDSA P-256 self-signed
// root for td, valid for opts.RootTTL (10 years by default).
func NewSelfSigned(td spiffeid.TrustDomain, opts Options) (*Authority, error) {
	if td.IsZero() {
		return nil, errors.New("ca: new self-signed root: trust domain is empty")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: new self-signed root: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("ca: new self-signed root: %w", err)
	}
	now := opts.Clock()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{td.Name()}, CommonName: "ambient root CA"},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(opts.RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca: new self-signed root: create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: new self-signed root: parse certificate: %w", err)
	}
	return &Authority{
		td:       td,
		opts:     opts,
		key:      key,
		cert:     cert,
		roots:    []*x509.Certificate{cert},
		notAfter: cert.NotAfter,
	}, nil
}

// LoadFiles is [Load] with the PEM read from files: the signing
// certificate (and chain), its key, and the roots when rootFile is not
// empty. A file that cannot be read is named in the error.
func LoadFiles(certFile, keyFile, rootFile string, td spiffeid.TrustDomain, opts Options) (*Authority, error) {
	var pems [3][]byte
	for i, f := range []string{certFile, keyFile, rootFile} {
		if f == "" && i == 2 {
			break
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		pems[i] = b
	}
	return Load(pems[0], pems[1], pems[2], td, opts)
}

// Load builds an Authority from a user-provided root or intermediate.
//
// certChainPEM holds the signing certificate first, optionally followed by
// the intermediates above it and even the root (so Istio's ca-cert.pem,
// cert-chain.pem, or both concatenated are all accepted; duplicates and
// roots are dropped from what is sent with leaves). keyPEM is the signing
// key as PKCS#8 ("PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY") or PKCS#1
// ("RSA PRIVATE KEY"). rootPEM holds the trust anchors; it may be empty only
// when the signing certificate is itself self-signed. The signing
// certificate must be a currently valid CA that verifies to one of the roots.
func Load(certChainPEM, keyPEM, rootPEM []byte, td spiffeid.TrustDomain, opts Options) (*Authority, error) {
	if td.IsZero() {
		return nil, errors.New("ca: load: trust domain is empty")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	certs, err := parseCertificates(certChainPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate chain: %w", ErrInvalidCA, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: certificate chain: no CERTIFICATE PEM block", ErrInvalidCA)
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: key: %w", ErrInvalidCA, err)
	}
	roots, err := parseCertificates(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: roots: %w", ErrInvalidCA, err)
	}

	signing := certs[0]
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(signing.PublicKey) {
		return nil, fmt.Errorf("%w: the key does not belong to the signing certificate %q (the first certificate of the chain)", ErrInvalidCA, signing.Subject)
	}
	if !signing.BasicConstraintsValid || !signing.IsCA {
		return nil, fmt.Errorf("%w: signing certificate %q is not a CA (basic constraints CA=false)", ErrInvalidCA, signing.Subject)
	}
	if signing.KeyUsage != 0 && signing.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%w: signing certificate %q lacks the keyCertSign key usage", ErrInvalidCA, signing.Subject)
	}
	for _, u := range signing.URIs {
		if id, err := spiffeid.FromURI(u); err == nil && id.TrustDomain() != td {
			return nil, fmt.Errorf("%w: signing certificate names %s, want trust domain %q", ErrTrustDomainMismatch, id, td)
		}
	}
	if len(roots) == 0 {
		if !isSelfSigned(signing) {
			return nil, fmt.Errorf("%w: no root certificate given and signing certificate %q is not self-signed; provide %s", ErrInvalidCA, signing.Subject, SecretRootCert)
		}
		roots = []*x509.Certificate{signing}
	}

	// What follows a leaf: every certificate of the chain that is not a root,
	// once, in the order given.
	var chain []*x509.Certificate
	for _, c := range certs {
		if containsCert(roots, c) || containsCert(chain, c) {
			continue
		}
		chain = append(chain, c)
	}
	verified, err := signing.Verify(x509.VerifyOptions{
		Roots:         certPool(roots),
		Intermediates: certPool(chain),
		CurrentTime:   opts.Clock(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: signing certificate %q does not verify to the given roots: %w", ErrInvalidCA, signing.Subject, err)
	}
	notAfter := signing.NotAfter
	for _, c := range verified[0] {
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return &Authority{
		td:       td,
		opts:     opts,
		key:      key,
		cert:     signing,
		chain:    chain,
		roots:    roots,
		notAfter: notAfter,
	}, nil
}

// LoadSecretData builds an Authority from the data of a Kubernetes Secret in
// Istio's layout (keys SecretCACert, SecretCAKey, SecretRootCert,
// SecretCertChain), as found in a user-provided "cacerts" Secret or in
// istiod's self-signed "istio-ca-secret" (where root-cert.pem and
// cert-chain.pem may be empty).
func LoadSecretData(data map[string][]byte, td spiffeid.TrustDomain, opts Options) (*Authority, error) {
	if len(data[SecretCACert]) == 0 || len(data[SecretCAKey]) == 0 {
		return nil, fmt.Errorf("%w: secret data needs %s and %s", ErrInvalidCA, SecretCACert, SecretCAKey)
	}
	certs := bytes.Join([][]byte{data[SecretCACert], data[SecretCertChain]}, []byte("\n"))
	return Load(certs, data[SecretCAKey], data[SecretRootCert], td, opts)
}

// TrustDomain returns the trust domain the Authority signs for.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.td }

// Certificate returns the signing certificate.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// Bundle returns the trust anchors as a new SPIFFE bundle for the trust domain.
func (a *Authority) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(a.td, a.roots)
}

// RootsPEM returns the trust anchors, PEM-encoded.
func (a *Authority) RootsPEM() []byte { return encodeCertificates(a.roots) }

// MarshalPEM returns the signing certificate followed by any intermediates
// above it (no root), and the signing key as PKCS#8, so that
// Load(certPEM, keyPEM, a.RootsPEM(), ...) restores the Authority.
func (a *Authority) MarshalPEM() (certPEM, keyPEM []byte, err error) {
	der, err := x509.MarshalPKCS8PrivateKey(a.key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: marshal key: %w", err)
	}
	certs := append([]*x509.Certificate{a.cert}, a.chainAbove()...)
	return encodeCertificates(certs), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// SecretData returns the Authority in Istio's Secret layout, suitable for
// LoadSecretData. cert-chain.pem runs from the signing certificate to the
// root, as Istio expects.
func (a *Authority) SecretData() (map[string][]byte, error) {
	_, keyPEM, err := a.MarshalPEM()
	if err != nil {
		return nil, err
	}
	chain := append([]*x509.Certificate{a.cert}, a.chainAbove()...)
	if !containsCert(a.roots, a.cert) {
		chain = append(chain, a.roots...)
	}
	return map[string][]byte{
		SecretCACert:    encodeCertificates([]*x509.Certificate{a.cert}),
		SecretCAKey:     keyPEM,
		SecretRootCert:  a.RootsPEM(),
		SecretCertChain: encodeCertificates(chain),
	}, nil
}

// chainAbove returns the intermediates above the signing certificate.
func (a *Authority) chainAbove() []*x509.Certificate {
	if len(a.chain) > 0 && a.chain[0].Equal(a.cert) {
		return a.chain[1:]
	}
	return a.chain
}

func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

func containsCert(set []*x509.Certificate, c *x509.Certificate) bool {
	for _, s := range set {
		if s.Equal(c) {
			return true
		}
	}
	return false
}

func certPool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// parseCertificates parses every CERTIFICATE block of b, skipping text
// between blocks. Any other PEM block type is an error.
func parseCertificates(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return certs, nil
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q, want CERTIFICATE", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
}

func parsePrivateKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q (want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, err
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey, *rsa.PrivateKey:
		return k.(crypto.Signer), nil
	default:
		return nil, fmt.Errorf("unsupported CA key type %T (want ECDSA or RSA)", key)
	}
}

func encodeCertificates(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}
