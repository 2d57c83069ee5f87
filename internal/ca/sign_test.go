package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("cluster.local")
	otherTD  = spiffeid.RequireTrustDomainFromString("other.example")
	clientID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	t0       = time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)
)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func newAuthority(t *testing.T, opts ca.Options) *ca.Authority {
	t.Helper()
	if opts.Clock == nil {
		opts.Clock = fixedClock(t0)
	}
	a, err := ca.NewSelfSigned(td, opts)
	if err != nil {
		t.Fatalf("NewSelfSigned: %v", err)
	}
	return a
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// makeCSR signs tmpl with key and returns it as PEM.
func makeCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func uris(ss ...string) []*url.URL {
	var out []*url.URL
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			panic(err)
		}
		out = append(out, u)
	}
	return out
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parseChain(t *testing.T, chainPEM []byte) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, chainPEM = pem.Decode(chainPEM)
		if b == nil {
			return certs
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
}

func TestSignCSR_IssuesSVIDWithOnlyTheURISAN(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		key       crypto.Signer
		csrURIs   []*url.URL
		wantUsage x509.KeyUsage
	}{
		{"P-256 CSR naming the ID", p256(t), uris(clientID.String()), x509.KeyUsageDigitalSignature},
		{"P-256 CSR without SAN", p256(t), nil, x509.KeyUsageDigitalSignature},
		{"RSA-2048 CSR", rsaKey, uris(clientID.String()), x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr := makeCSR(t, tt.key, &x509.CertificateRequest{URIs: tt.csrURIs})
			chainPEM, err := a.SignCSR(csr, clientID, 0)
			if err != nil {
				t.Fatalf("SignCSR: %v", err)
			}
			chain := parseChain(t, chainPEM)
			if len(chain) != 1 {
				t.Fatalf("chain has %d certificates, want 1 (leaf only; the root is not sent)", len(chain))
			}
			leaf := chain[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != clientID.String() {
				t.Errorf("URI SANs = %v, want exactly [%s]", leaf.URIs, clientID)
			}
			if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("leaf has other SANs: DNS %v IP %v email %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if leaf.IsCA || !leaf.BasicConstraintsValid {
				t.Errorf("IsCA=%v BasicConstraintsValid=%v, want false/true", leaf.IsCA, leaf.BasicConstraintsValid)
			}
			if leaf.KeyUsage != tt.wantUsage {
				t.Errorf("KeyUsage = %v, want %v", leaf.KeyUsage, tt.wantUsage)
			}
			if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
				t.Errorf("ExtKeyUsage = %v, want [serverAuth clientAuth]", leaf.ExtKeyUsage)
			}
			if got, want := leaf.NotBefore, t0.Add(-ca.Backdate); !got.Equal(want) {
				t.Errorf("NotBefore = %s, want %s (backdated)", got, want)
			}
			if got, want := leaf.NotAfter, t0.Add(ca.DefaultTTL); !got.Equal(want) {
				t.Errorf("NotAfter = %s, want %s", got, want)
			}
			if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %x: want positive and at most 128 bits", leaf.SerialNumber)
			}
			if leaf.Subject.String() != "" {
				t.Errorf("Subject = %q, want empty", leaf.Subject)
			}
			id, _, err := x509svid.Verify(chain, a.Bundle(), x509svid.WithTime(t0))
			if err != nil || id != clientID {
				t.Errorf("x509svid.Verify = %v, %v; want %s", id, err, clientID)
			}
		})
	}
}

func TestSignCSR_SerialsAreDistinct(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	seen := map[string]bool{}
	for range 20 {
		svid, err := a.NewSVID(clientID, 0)
		if err != nil {
			t.Fatal(err)
		}
		s := svid.Certificates[0].SerialNumber.String()
		if seen[s] {
			t.Fatalf("serial %s issued twice", s)
		}
		seen[s] = true
	}
}

func TestSignCSR_Lifetime(t *testing.T) {
	shortCA := newAuthority(t, ca.Options{RootTTL: 3 * time.Hour})
	tests := []struct {
		name string
		a    *ca.Authority
		ttl  time.Duration
		want time.Time // NotAfter
	}{
		{"zero selects the 24h default", newAuthority(t, ca.Options{}), 0, t0.Add(24 * time.Hour)},
		{"explicit ttl", newAuthority(t, ca.Options{}), 2 * time.Hour, t0.Add(2 * time.Hour)},
		{"DefaultTTL option", newAuthority(t, ca.Options{DefaultTTL: time.Hour}), 0, t0.Add(time.Hour)},
		{"capped by default MaxTTL", newAuthority(t, ca.Options{}), 365 * 24 * time.Hour, t0.Add(ca.DefaultMaxTTL)},
		{"capped by MaxTTL option", newAuthority(t, ca.Options{MaxTTL: 6 * time.Hour}), 48 * time.Hour, t0.Add(6 * time.Hour)},
		{"MaxTTL below the default lowers the default", newAuthority(t, ca.Options{MaxTTL: time.Hour}), 0, t0.Add(time.Hour)},
		{"capped by the CA's own expiry", shortCA, 24 * time.Hour, shortCA.Certificate().NotAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svid, err := tt.a.NewSVID(clientID, tt.ttl)
			if err != nil {
				t.Fatalf("NewSVID: %v", err)
			}
			if got := svid.Certificates[0].NotAfter; !got.Equal(tt.want) {
				t.Errorf("NotAfter = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestSignCSR_Refuses(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	key := p256(t)
	csrWith := func(tmpl x509.CertificateRequest) func(t *testing.T) []byte {
		return func(t *testing.T) []byte { return makeCSR(t, key, &tmpl) }
	}
	plain := csrWith(x509.CertificateRequest{URIs: uris(clientID.String())})

	registeredID := func(t *testing.T) []byte {
		oid := mustMarshal(t, asn1.ObjectIdentifier{1, 2, 3, 4})
		san := mustMarshal(t, []asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 8, Bytes: oid[2:]}})
		return makeCSR(t, key, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: san}}})
	}
	ext := func(oid asn1.ObjectIdentifier, value func(t *testing.T) []byte) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			return makeCSR(t, key, &x509.CertificateRequest{
				URIs:            uris(clientID.String()),
				ExtraExtensions: []pkix.Extension{{Id: oid, Value: value(t)}},
			})
		}
	}
	tamper := func(t *testing.T) []byte {
		b, _ := pem.Decode(plain(t))
		der := append([]byte(nil), b.Bytes...)
		der[len(der)-1] ^= 0xff // inside the signature
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	withKey := func(k crypto.Signer) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			return makeCSR(t, k, &x509.CertificateRequest{URIs: uris(clientID.String())})
		}
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		csr     func(t *testing.T) []byte
		want    spiffeid.ID
		wantErr error
		msg     string // substring of the error
	}{
		{"DNS SAN", csrWith(x509.CertificateRequest{DNSNames: []string{"evil.example"}}), clientID, ca.ErrForbiddenSAN, `DNS name "evil.example"`},
		{"IP SAN", csrWith(x509.CertificateRequest{IPAddresses: []net.IP{net.ParseIP("10.0.0.1")}}), clientID, ca.ErrForbiddenSAN, "IP address 10.0.0.1"},
		{"email SAN", csrWith(x509.CertificateRequest{EmailAddresses: []string{"a@b.example"}}), clientID, ca.ErrForbiddenSAN, "e-mail"},
		{"DNS SAN next to the right URI", csrWith(x509.CertificateRequest{URIs: uris(clientID.String()), DNSNames: []string{"x"}}), clientID, ca.ErrForbiddenSAN, "DNS name"},
		{"second URI SAN", csrWith(x509.CertificateRequest{URIs: uris(clientID.String(), "spiffe://cluster.local/ns/default/sa/admin")}), clientID, ca.ErrForbiddenSAN, "2 URI SANs"},
		{"SAN type crypto/x509 does not model", registeredID, clientID, ca.ErrForbiddenSAN, "type [8]"},
		{"basic constraints CA=true", ext(asn1.ObjectIdentifier{2, 5, 29, 19}, func(t *testing.T) []byte {
			return mustMarshal(t, struct{ IsCA bool }{true})
		}), clientID, ca.ErrCARequested, "CA=true"},
		{"keyCertSign usage", ext(asn1.ObjectIdentifier{2, 5, 29, 15}, func(t *testing.T) []byte {
			return mustMarshal(t, asn1.BitString{Bytes: []byte{0x04}, BitLength: 6})
		}), clientID, ca.ErrCARequested, "keyCertSign"},
		{"name constraints", ext(asn1.ObjectIdentifier{2, 5, 29, 30}, func(t *testing.T) []byte {
			return mustMarshal(t, []asn1.RawValue{})
		}), clientID, ca.ErrCARequested, "name constraints"},
		{"identity outside the trust domain", plain, spiffeid.RequireFromString("spiffe://other.example/ns/default/sa/client"), ca.ErrWrongTrustDomain, `not in trust domain "cluster.local"`},
		{"CSR URI outside the trust domain", csrWith(x509.CertificateRequest{URIs: uris("spiffe://other.example/ns/default/sa/client")}), clientID, ca.ErrWrongTrustDomain, "spiffe://other.example/ns/default/sa/client"},
		{"CSR URI differs from the authorized ID", csrWith(x509.CertificateRequest{URIs: uris("spiffe://cluster.local/ns/kube-system/sa/admin")}), clientID, ca.ErrIDMismatch, "authorized for spiffe://cluster.local/ns/default/sa/client"},
		{"CSR URI is not SPIFFE", csrWith(x509.CertificateRequest{URIs: uris("https://example.com/x")}), clientID, ca.ErrIDMismatch, "not a SPIFFE ID"},
		{"bad signature", tamper, clientID, ca.ErrBadCSRSignature, ""},
		{"non-SPIFFE (empty) want", plain, spiffeid.ID{}, ca.ErrNotSPIFFEID, "empty ID"},
		{"trust domain ID as want", plain, td.ID(), ca.ErrNotSPIFFEID, "no path"},
		{"not PEM", func(*testing.T) []byte { return []byte("hello") }, clientID, ca.ErrInvalidCSR, "no PEM block"},
		{"wrong PEM type", func(*testing.T) []byte {
			return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})
		}, clientID, ca.ErrInvalidCSR, `"CERTIFICATE"`},
		{"garbage DER", func(*testing.T) []byte {
			return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}})
		}, clientID, ca.ErrInvalidCSR, ""},
		{"RSA-1024 key", withKey(rsa1024), clientID, ca.ErrUnsupportedKey, "1024 bits"},
		{"Ed25519 key", withKey(ed), clientID, ca.ErrUnsupportedKey, "ed25519"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := a.SignCSR(tt.csr(t), tt.want, 0)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("SignCSR = %d bytes, %v; want error %v", len(chain), err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not mention %q", err, tt.msg)
			}
			if chain != nil {
				t.Errorf("refusal returned a chain")
			}
		})
	}
}

func TestSignCSR_RefusesNegativeTTL(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	_, csr, err := ca.NewCSR(clientID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.SignCSR(csr, clientID, -time.Second); !errors.Is(err, ca.ErrInvalidTTL) {
		t.Fatalf("SignCSR(ttl<0) error = %v, want ErrInvalidTTL", err)
	}
}

func TestSignCSR_RefusesWhenCAExpired(t *testing.T) {
	now := t0
	a, err := ca.NewSelfSigned(td, ca.Options{Clock: func() time.Time { return now }, RootTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	now = t0.Add(2 * time.Hour)
	_, err = a.NewSVID(clientID, 0)
	if !errors.Is(err, ca.ErrCAExpired) {
		t.Fatalf("NewSVID with an expired CA: error = %v, want ErrCAExpired", err)
	}
}

func TestNewSVIDAt_MintsCertificatesOutsideTheirValidity(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	svid, err := a.NewSVIDAt(clientID, t0.Add(-2*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Certificates[0]
	if !leaf.NotBefore.Equal(t0.Add(-2*time.Hour)) || !leaf.NotAfter.Equal(t0.Add(-time.Hour)) {
		t.Errorf("validity %s..%s, want %s..%s", leaf.NotBefore, leaf.NotAfter, t0.Add(-2*time.Hour), t0.Add(-time.Hour))
	}
	if svid.ID != clientID {
		t.Errorf("ID = %s, want %s", svid.ID, clientID)
	}
	// The request is still checked.
	if _, err := a.NewSVIDAt(spiffeid.RequireFromString("spiffe://other.example/x"), t0, time.Hour); !errors.Is(err, ca.ErrWrongTrustDomain) {
		t.Errorf("NewSVIDAt(other trust domain) error = %v, want ErrWrongTrustDomain", err)
	}
}

func TestNewCSR_RoundTripsThroughSignCSR(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	keyPEM, csrPEM, err := ca.NewCSR(clientID)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := a.SignCSR(csrPEM, clientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Parse(chain, keyPEM)
	if err != nil {
		t.Fatalf("x509svid.Parse: %v", err)
	}
	if pub, ok := svid.Certificates[0].PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("leaf key %T, want ECDSA P-256", svid.Certificates[0].PublicKey)
	}
	if _, _, err := ca.NewCSR(spiffeid.ID{}); !errors.Is(err, ca.ErrNotSPIFFEID) {
		t.Errorf("NewCSR(zero ID) error = %v, want ErrNotSPIFFEID", err)
	}
}

func TestSignCSR_IsSafeForConcurrentUse(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			if _, err := a.NewSVID(clientID, time.Hour); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
