package ca_test

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
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestNewSelfSigned_CreatesP256Root(t *testing.T) {
	tests := []struct {
		name    string
		rootTTL time.Duration
		want    time.Time
	}{
		{"default 10 years", 0, t0.Add(ca.DefaultRootTTL)},
		{"RootTTL option", 365 * 24 * time.Hour, t0.Add(365 * 24 * time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAuthority(t, ca.Options{RootTTL: tt.rootTTL})
			root := a.Certificate()
			if !root.IsCA || !root.BasicConstraintsValid || root.KeyUsage&x509.KeyUsageCertSign == 0 {
				t.Errorf("root IsCA=%v KeyUsage=%v, want a CA with keyCertSign", root.IsCA, root.KeyUsage)
			}
			if pub, ok := root.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
				t.Errorf("root key %T, want ECDSA P-256", root.PublicKey)
			}
			if err := root.CheckSignatureFrom(root); err != nil {
				t.Errorf("root is not self-signed: %v", err)
			}
			if !root.NotAfter.Equal(tt.want) {
				t.Errorf("NotAfter = %s, want %s", root.NotAfter, tt.want)
			}
			if len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://cluster.local" {
				t.Errorf("URIs = %v, want [spiffe://cluster.local]", root.URIs)
			}
			if a.TrustDomain() != td {
				t.Errorf("TrustDomain = %s", a.TrustDomain())
			}
			if b := a.Bundle(); b.TrustDomain() != td || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(root) {
				t.Errorf("Bundle = %v, want the root for %s", b.X509Authorities(), td)
			}
			if got, err := x509bundle.Parse(td, a.RootsPEM()); err != nil || !got.Equal(a.Bundle()) {
				t.Errorf("RootsPEM does not parse to Bundle(): %v", err)
			}
		})
	}
}

func TestOptions_Invalid(t *testing.T) {
	tests := []struct {
		name string
		opts ca.Options
		msg  string
	}{
		{"DefaultTTL above MaxTTL", ca.Options{DefaultTTL: 2 * time.Hour, MaxTTL: time.Hour}, "exceeds MaxTTL"},
		{"negative MaxTTL", ca.Options{MaxTTL: -time.Hour}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.NewSelfSigned(td, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("NewSelfSigned error = %v, want one mentioning %q", err, tt.msg)
			}
		})
	}
}

func TestMarshalPEM_RoundTrip(t *testing.T) {
	orig := newAuthority(t, ca.Options{})
	certPEM, keyPEM, err := orig.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	secret, err := orig.SecretData()
	if err != nil {
		t.Fatal(err)
	}
	opts := ca.Options{Clock: fixedClock(t0)}
	load := map[string]func() (*ca.Authority, error){
		"with roots":            func() (*ca.Authority, error) { return ca.Load(certPEM, keyPEM, orig.RootsPEM(), td, opts) },
		"self-signed, no roots": func() (*ca.Authority, error) { return ca.Load(certPEM, keyPEM, nil, td, opts) },
		"secret data":           func() (*ca.Authority, error) { return ca.LoadSecretData(secret, td, opts) },
		"istio-ca-secret with empty root and chain": func() (*ca.Authority, error) {
			return ca.LoadSecretData(map[string][]byte{ca.SecretCACert: certPEM, ca.SecretCAKey: keyPEM, ca.SecretRootCert: nil, ca.SecretCertChain: nil}, td, opts)
		},
	}
	for name, load := range load {
		t.Run(name, func(t *testing.T) {
			got, err := load()
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if !got.Certificate().Equal(orig.Certificate()) || !got.Bundle().Equal(orig.Bundle()) {
				t.Fatal("reloaded authority has a different root")
			}
			c2, k2, err := got.MarshalPEM()
			if err != nil || !bytes.Equal(c2, certPEM) || !bytes.Equal(k2, keyPEM) {
				t.Errorf("MarshalPEM after reload differs (err %v)", err)
			}
			svid, err := got.NewSVID(clientID, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := x509svid.Verify(svid.Certificates, orig.Bundle(), x509svid.WithTime(t0)); err != nil {
				t.Errorf("leaf from the reloaded CA does not verify against the original bundle: %v", err)
			}
		})
	}
}

func parseKey(t *testing.T, keyPEM []byte) crypto.Signer {
	t.Helper()
	b, _ := pem.Decode(keyPEM)
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(crypto.Signer)
}

// issueCA makes a CA certificate for key, signed by parent (self-signed when
// parent is nil).
func issueCA(t *testing.T, name string, parent *x509.Certificate, parentKey, key crypto.Signer, notAfter time.Time, uris ...*url.URL) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  uris,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func certsPEM(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func TestLoad_UserProvidedIntermediate(t *testing.T) {
	rootCA := newAuthority(t, ca.Options{})
	_, rootKeyPEM, err := rootCA.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	root, rootKey := rootCA.Certificate(), parseKey(t, rootKeyPEM)
	int1Key := p256(t)
	int1 := issueCA(t, "intermediate 1", root, rootKey, int1Key, t0.Add(365*24*time.Hour))
	int2Key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	int2NotAfter := t0.Add(12 * time.Hour) // expires before a 24 h leaf would
	int2 := issueCA(t, "intermediate 2", int1, int1Key, int2Key, int2NotAfter, td.ID().URL())
	int2KeyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(int2Key)})
	opts := ca.Options{Clock: fixedClock(t0)}

	layouts := []struct {
		name string
		load func() (*ca.Authority, error)
	}{
		{"chain without root", func() (*ca.Authority, error) {
			return ca.Load(certsPEM(int2, int1), int2KeyPEM, certsPEM(root), td, opts)
		}},
		{"chain including root", func() (*ca.Authority, error) {
			return ca.Load(certsPEM(int2, int1, root), int2KeyPEM, certsPEM(root), td, opts)
		}},
		{"istio cacerts secret", func() (*ca.Authority, error) {
			return ca.LoadSecretData(map[string][]byte{
				ca.SecretCACert:    certsPEM(int2),
				ca.SecretCAKey:     int2KeyPEM,
				ca.SecretRootCert:  certsPEM(root),
				ca.SecretCertChain: certsPEM(int2, int1, root),
			}, td, opts)
		}},
	}
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			a, err := l.load()
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if b := a.Bundle(); len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(root) {
				t.Errorf("bundle should hold only the root")
			}
			svid, err := a.NewSVID(clientID, 0)
			if err != nil {
				t.Fatalf("NewSVID: %v", err)
			}
			if n := len(svid.Certificates); n != 3 || !svid.Certificates[1].Equal(int2) || !svid.Certificates[2].Equal(int1) {
				t.Fatalf("chain has %d certificates, want leaf, intermediate 2, intermediate 1", n)
			}
			id, chains, err := x509svid.Verify(svid.Certificates, a.Bundle(), x509svid.WithTime(t0))
			if err != nil || id != clientID {
				t.Fatalf("leaf does not verify to the root through the intermediates: %v", err)
			}
			if len(chains[0]) != 4 || !chains[0][3].Equal(root) {
				t.Errorf("verified chain length %d, want leaf→int2→int1→root", len(chains[0]))
			}
			if got := svid.Certificates[0].NotAfter; !got.Equal(int2NotAfter) {
				t.Errorf("leaf NotAfter = %s, want it capped at the intermediate's %s", got, int2NotAfter)
			}
			// Persist and reload (istiod-lite's path).
			secret, err := a.SecretData()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ca.LoadSecretData(secret, td, opts); err != nil {
				t.Errorf("reload from SecretData: %v", err)
			}
			certPEM, keyPEM, err := a.MarshalPEM()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(certPEM, certsPEM(int2, int1)) {
				t.Errorf("MarshalPEM cert = signing cert + intermediates expected")
			}
			if _, err := ca.Load(certPEM, keyPEM, a.RootsPEM(), td, opts); err != nil {
				t.Errorf("reload from MarshalPEM: %v", err)
			}
		})
	}
}

func TestLoad_Refuses(t *testing.T) {
	rootCA := newAuthority(t, ca.Options{})
	rootPEM, rootKeyPEM, err := rootCA.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	root, rootKey := rootCA.Certificate(), parseKey(t, rootKeyPEM)
	otherRoot := newAuthority(t, ca.Options{})

	intKey := p256(t)
	intKeyPEM := func(k crypto.Signer) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	good := issueCA(t, "good", root, rootKey, intKey, t0.Add(time.Hour*24*30))
	expired := issueCA(t, "expired", root, rootKey, intKey, t0.Add(-time.Minute))
	foreign := issueCA(t, "foreign td", root, rootKey, intKey, t0.Add(time.Hour*24*30), otherTD.ID().URL())

	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(9), NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(time.Hour), BasicConstraintsValid: true}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, intKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(leafDER)

	opts := ca.Options{Clock: fixedClock(t0)}
	tests := []struct {
		name            string
		chain, key, rts []byte
		wantErr         error
		msg             string
	}{
		{"key does not match", certsPEM(good), intKeyPEM(p256(t)), rootPEM, ca.ErrInvalidCA, "does not belong"},
		{"not a CA", certsPEM(leaf), intKeyPEM(intKey), rootPEM, ca.ErrInvalidCA, "not a CA"},
		{"intermediate without root", certsPEM(good), intKeyPEM(intKey), nil, ca.ErrInvalidCA, "root-cert.pem"},
		{"chain to another root", certsPEM(good), intKeyPEM(intKey), otherRoot.RootsPEM(), ca.ErrInvalidCA, "does not verify"},
		{"expired CA", certsPEM(expired), intKeyPEM(intKey), rootPEM, ca.ErrInvalidCA, "expired"},
		{"CA of another trust domain", certsPEM(foreign), intKeyPEM(intKey), rootPEM, ca.ErrTrustDomainMismatch, "other.example"},
		{"no certificate", nil, intKeyPEM(intKey), rootPEM, ca.ErrInvalidCA, "no CERTIFICATE"},
		{"garbage key", certsPEM(good), []byte("nope"), rootPEM, ca.ErrInvalidCA, "key"},
		{"key PEM in the chain", append(certsPEM(good), intKeyPEM(intKey)...), intKeyPEM(intKey), rootPEM, ca.ErrInvalidCA, "PRIVATE KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ca.Load(tt.chain, tt.key, tt.rts, td, opts)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Load = %v, %v; want error %v", a, err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not mention %q", err, tt.msg)
			}
		})
	}
	if _, err := ca.Load(certsPEM(good), intKeyPEM(intKey), rootPEM, td, opts); err != nil {
		t.Fatalf("control: Load(good) = %v", err)
	}
}

// TestLoadFiles: a CA written with MarshalPEM loads back from its files;
// a missing file is named in the error.
func TestLoadFiles(t *testing.T) {
	a, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := a.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := ca.LoadFiles(certFile, keyFile, "", td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !b.Certificate().Equal(a.Certificate()) {
		t.Fatal("loaded a different certificate")
	}
	missing := filepath.Join(dir, "missing.key")
	if _, err := ca.LoadFiles(certFile, missing, "", td, ca.Options{}); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing key file: %v; want an error naming %s", err, missing)
	}
}
