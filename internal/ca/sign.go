package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Reasons SignCSR refuses to sign. Each returned error wraps exactly one of
// these (test with errors.Is) and says what was wrong.
var (
	// ErrNotSPIFFEID: the identity to sign for is empty or is a bare trust
	// domain (an X509-SVID's ID must have a path).
	ErrNotSPIFFEID = errors.New("ca: not a SPIFFE ID usable in an X509-SVID")
	// ErrWrongTrustDomain: the identity (or the CSR's URI SAN) is outside
	// the Authority's trust domain.
	ErrWrongTrustDomain = errors.New("ca: identity outside the CA's trust domain")
	// ErrInvalidCSR: not a PEM CERTIFICATE REQUEST, or unparsable.
	ErrInvalidCSR = errors.New("ca: invalid CSR")
	// ErrBadCSRSignature: the CSR is not signed by the key it carries.
	ErrBadCSRSignature = errors.New("ca: CSR signature does not verify")
	// ErrUnsupportedKey: the CSR key is not ECDSA P-256/P-384/P-521 or
	// RSA of at least 2048 bits.
	ErrUnsupportedKey = errors.New("ca: unsupported CSR key")
	// ErrForbiddenSAN: the CSR asks for a DNS, IP, e-mail or other name, or
	// for a second URI.
	ErrForbiddenSAN = errors.New("ca: CSR requests a subject alternative name other than one SPIFFE ID")
	// ErrIDMismatch: the CSR's URI SAN is not the identity the caller is
	// authorized for.
	ErrIDMismatch = errors.New("ca: CSR URI SAN differs from the authorized identity")
	// ErrCARequested: the CSR asks for CA rights (basic constraints CA=true,
	// keyCertSign or cRLSign key usage, name constraints).
	ErrCARequested = errors.New("ca: CSR requests CA rights")
	// ErrInvalidTTL: a negative lifetime was requested.
	ErrInvalidTTL = errors.New("ca: invalid TTL")
	// ErrCAExpired: the CA chain has expired; it must be replaced.
	ErrCAExpired = errors.New("ca: CA certificate has expired")
)

var (
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidNameConstraints  = asn1.ObjectIdentifier{2, 5, 29, 30}
)

// SignCSR signs csrPEM (a PEM "CERTIFICATE REQUEST") as an X509-SVID for
// want, which the caller has already authorized the requester to hold. It
// returns the PEM chain to hand back: the leaf, then any intermediates (never
// the root; see RootsPEM).
//
// ttl 0 selects Options.DefaultTTL; a ttl above Options.MaxTTL is capped to
// it, and no leaf outlives the CA chain. The CSR may leave the SAN out or
// name want as its only URI SAN; see the package doc for what else is
// checked, and the Err* variables for the refusals.
func (a *Authority) SignCSR(csrPEM []byte, want spiffeid.ID, ttl time.Duration) ([]byte, error) {
	switch {
	case ttl < 0:
		return nil, fmt.Errorf("%w: %s is negative (0 selects the default %s)", ErrInvalidTTL, ttl, a.opts.DefaultTTL)
	case ttl == 0:
		ttl = a.opts.DefaultTTL
	case ttl > a.opts.MaxTTL:
		ttl = a.opts.MaxTTL
	}
	now := a.opts.Clock()
	if !now.Before(a.notAfter) {
		return nil, fmt.Errorf("%w: chain expired at %s; rotate the CA (%s)", ErrCAExpired, a.notAfter.UTC().Format(time.RFC3339), a.cert.Subject)
	}
	return a.sign(csrPEM, want, now.Add(-Backdate), now.Add(ttl))
}

// sign checks the request and issues the leaf valid from notBefore to
// notAfter (capped at the CA's expiry).
func (a *Authority) sign(csrPEM []byte, want spiffeid.ID, notBefore, notAfter time.Time) ([]byte, error) {
	if err := a.checkID(want); err != nil {
		return nil, err
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSRSignature, err)
	}
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if err := a.checkSANs(csr, want); err != nil {
		return nil, err
	}
	if err := checkNoCARights(csr); err != nil {
		return nil, err
	}

	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("ca: sign %s: %w", want, err)
	}
	if notAfter.After(a.notAfter) {
		notAfter = a.notAfter
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("%w: validity %s..%s is empty", ErrInvalidTTL, notBefore.UTC().Format(time.RFC3339), notAfter.UTC().Format(time.RFC3339))
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{want.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, csr.PublicKey, a.key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign %s: create certificate: %w", want, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: sign %s: parse certificate: %w", want, err)
	}
	return encodeCertificates(append([]*x509.Certificate{leaf}, a.chain...)), nil
}

func (a *Authority) checkID(want spiffeid.ID) error {
	switch {
	case want.IsZero():
		return fmt.Errorf("%w: empty ID", ErrNotSPIFFEID)
	case want.Path() == "":
		return fmt.Errorf("%w: %s has no path (want spiffe://%s/ns/<namespace>/sa/<service-account>)", ErrNotSPIFFEID, want, a.td)
	case !want.MemberOf(a.td):
		return fmt.Errorf("%w: %s is not in trust domain %q", ErrWrongTrustDomain, want, a.td)
	}
	return nil
}

func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrInvalidCSR)
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: PEM block %q, want CERTIFICATE REQUEST", ErrInvalidCSR, block.Type)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCSR, err)
	}
	return csr, nil
}

func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s (want P-256, P-384 or P-521)", ErrUnsupportedKey, k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("%w: RSA key of %d bits (want at least 2048; ECDSA P-256 preferred)", ErrUnsupportedKey, k.N.BitLen())
		}
		return nil
	default:
		return fmt.Errorf("%w: %T (want ECDSA P-256)", ErrUnsupportedKey, pub)
	}
}

// General name tags used below (RFC 5280 §4.2.1.6).
const (
	tagRFC822Name = 1
	tagDNSName    = 2
	tagURI        = 6
	tagIPAddress  = 7
)

// checkSANs walks the raw SAN extension(s) rather than the parsed fields,
// because crypto/x509 silently drops name types it does not model.
func (a *Authority) checkSANs(csr *x509.CertificateRequest, want spiffeid.ID) error {
	var uris []string
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var seq asn1.RawValue
		rest, err := asn1.Unmarshal(ext.Value, &seq)
		if err != nil || len(rest) != 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
			return fmt.Errorf("%w: malformed subject alternative name extension", ErrInvalidCSR)
		}
		for in := seq.Bytes; len(in) > 0; {
			var gn asn1.RawValue
			if in, err = asn1.Unmarshal(in, &gn); err != nil || gn.Class != asn1.ClassContextSpecific {
				return fmt.Errorf("%w: malformed general name in subject alternative name", ErrInvalidCSR)
			}
			switch gn.Tag {
			case tagURI:
				uris = append(uris, string(gn.Bytes))
			case tagDNSName:
				return fmt.Errorf("%w: DNS name %q (an SVID for %s carries only its URI SAN)", ErrForbiddenSAN, gn.Bytes, want)
			case tagIPAddress:
				return fmt.Errorf("%w: IP address %s (an SVID for %s carries only its URI SAN)", ErrForbiddenSAN, net.IP(gn.Bytes), want)
			case tagRFC822Name:
				return fmt.Errorf("%w: e-mail address %q (an SVID for %s carries only its URI SAN)", ErrForbiddenSAN, gn.Bytes, want)
			default:
				return fmt.Errorf("%w: general name of type [%d] (an SVID for %s carries only its URI SAN)", ErrForbiddenSAN, gn.Tag, want)
			}
		}
	}
	// Belt and braces: whatever crypto/x509 parsed must agree with the walk.
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 || len(csr.URIs) != len(uris) {
		return fmt.Errorf("%w: unexpected names in CSR", ErrForbiddenSAN)
	}
	switch len(uris) {
	case 0:
		return nil // the SAN comes from want
	case 1:
	default:
		return fmt.Errorf("%w: %d URI SANs %q (want only %s)", ErrForbiddenSAN, len(uris), uris, want)
	}
	got, err := spiffeid.FromString(uris[0])
	switch {
	case err != nil:
		return fmt.Errorf("%w: URI SAN %q is not a SPIFFE ID (%v); want %s", ErrIDMismatch, uris[0], err, want)
	case !got.MemberOf(a.td):
		return fmt.Errorf("%w: CSR asks for %s, outside trust domain %q", ErrWrongTrustDomain, got, a.td)
	case got != want:
		return fmt.Errorf("%w: CSR asks for %s, caller is authorized for %s", ErrIDMismatch, got, want)
	}
	return nil
}

// checkNoCARights refuses requested extensions that only make sense for a
// CA. Requested extensions are never copied into the leaf; refusing them
// still surfaces a confused or malicious client.
func checkNoCARights(csr *x509.CertificateRequest) error {
	for _, ext := range csr.Extensions {
		switch {
		case ext.Id.Equal(oidBasicConstraints):
			var bc struct {
				IsCA       bool `asn1:"optional"`
				MaxPathLen int  `asn1:"optional,default:-1"`
			}
			if rest, err := asn1.Unmarshal(ext.Value, &bc); err != nil || len(rest) != 0 {
				return fmt.Errorf("%w: malformed basic constraints extension", ErrInvalidCSR)
			}
			if bc.IsCA {
				return fmt.Errorf("%w: basic constraints CA=true", ErrCARequested)
			}
		case ext.Id.Equal(oidKeyUsage):
			var bits asn1.BitString
			if rest, err := asn1.Unmarshal(ext.Value, &bits); err != nil || len(rest) != 0 {
				return fmt.Errorf("%w: malformed key usage extension", ErrInvalidCSR)
			}
			const keyCertSign, cRLSign = 5, 6 // bit positions, RFC 5280 §4.2.1.3
			if bits.At(keyCertSign) == 1 || bits.At(cRLSign) == 1 {
				return fmt.Errorf("%w: keyCertSign or cRLSign key usage", ErrCARequested)
			}
		case ext.Id.Equal(oidNameConstraints):
			return fmt.Errorf("%w: name constraints", ErrCARequested)
		}
	}
	return nil
}

// NewCSR generates an ECDSA P-256 key and a CSR whose only SAN is id. It
// returns the key as PKCS#8 PEM and the CSR as PEM, ready for SignCSR.
func NewCSR(id spiffeid.ID) (keyPEM, csrPEM []byte, err error) {
	if id.IsZero() {
		return nil, nil, fmt.Errorf("%w: empty ID", ErrNotSPIFFEID)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: new CSR for %s: generate key: %w", id, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: new CSR for %s: %w", id, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: new CSR for %s: marshal key: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// NewSVID mints an X509-SVID for id through the same path a remote caller
// takes (fresh P-256 key, CSR, SignCSR). For tests and tools.
func (a *Authority) NewSVID(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	keyPEM, csrPEM, err := NewCSR(id)
	if err != nil {
		return nil, err
	}
	chainPEM, err := a.SignCSR(csrPEM, id, ttl)
	if err != nil {
		return nil, err
	}
	return x509svid.Parse(chainPEM, keyPEM)
}

// NewSVIDAt mints an X509-SVID for id valid from notBefore for ttl (no
// backdating, no MaxTTL cap, still capped at the CA's expiry), whatever the
// current time — so tests can make certificates that are already expired or
// not yet valid. The request is still checked like any other.
func (a *Authority) NewSVIDAt(id spiffeid.ID, notBefore time.Time, ttl time.Duration) (*x509svid.SVID, error) {
	keyPEM, csrPEM, err := NewCSR(id)
	if err != nil {
		return nil, err
	}
	chainPEM, err := a.sign(csrPEM, id, notBefore, notBefore.Add(ttl))
	if err != nil {
		return nil, err
	}
	return x509svid.Parse(chainPEM, keyPEM)
}
