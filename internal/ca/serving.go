package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"time"
)

// IssueServingCertificate mints a TLS server certificate for the CA's own
// endpoint (istiod's "istiod.<ns>.svc" on port 15012): a fresh ECDSA P-256
// key, DNS and IP SANs, extended key usage serverAuth only, valid from now
// minus [Backdate] for ttl (capped at the CA's expiry). It returns the leaf,
// any intermediates and the key as a tls.Certificate with Leaf set.
//
// It is deliberately separate from [Authority.SignCSR], which issues only
// SPIFFE X509-SVIDs and refuses DNS and IP names: this certificate is minted
// in-process for the control plane itself, never for a remote caller.
func (a *Authority) IssueServingCertificate(dnsNames []string, ips []net.IP, ttl time.Duration) (tls.Certificate, error) {
	if len(dnsNames)+len(ips) == 0 {
		return tls.Certificate{}, errors.New("ca: serving certificate: no DNS name or IP address")
	}
	if ttl <= 0 {
		return tls.Certificate{}, fmt.Errorf("%w: serving certificate lifetime %s is not positive", ErrInvalidTTL, ttl)
	}
	now := a.opts.Clock()
	if !now.Before(a.notAfter) {
		return tls.Certificate{}, fmt.Errorf("%w: chain expired at %s; rotate the CA (%s)", ErrCAExpired, a.notAfter.UTC().Format(time.RFC3339), a.cert.Subject)
	}
	notAfter := now.Add(ttl)
	if notAfter.After(a.notAfter) {
		notAfter = a.notAfter
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: serving certificate: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: serving certificate: %w", err)
	}
	cn := ""
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              dnsNames,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: serving certificate for %q %v: %w", dnsNames, ips, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: serving certificate: parse: %w", err)
	}
	chain := [][]byte{der}
	for _, c := range a.chain {
		chain = append(chain, c.Raw)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// CheckSecretData checks that each key of a Secret in Istio's CA layout that
// is present parses (PEM certificates, or a PEM private key for
// [SecretCAKey]) and that ca-cert.pem and ca-key.pem are present, naming the
// key at fault in its error. [LoadSecretData] then checks that the pieces fit
// together.
func CheckSecretData(data map[string][]byte) error {
	for _, k := range []string{SecretCACert, SecretCAKey} {
		if len(data[k]) == 0 {
			return fmt.Errorf("%w: key %s is missing or empty", ErrInvalidCA, k)
		}
	}
	if _, err := parsePrivateKey(data[SecretCAKey]); err != nil {
		return fmt.Errorf("%w: key %s is not a usable PEM private key: %w", ErrInvalidCA, SecretCAKey, err)
	}
	for _, k := range []string{SecretCACert, SecretRootCert, SecretCertChain} {
		certs, err := parseCertificates(data[k])
		if err != nil {
			return fmt.Errorf("%w: key %s is not PEM certificates: %w", ErrInvalidCA, k, err)
		}
		if len(certs) == 0 && len(data[k]) > 0 {
			return fmt.Errorf("%w: key %s: no CERTIFICATE PEM block", ErrInvalidCA, k)
		}
	}
	return nil
}
