package certdir

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/ca"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func writeDir(t *testing.T) string {
	t.Helper()
	a, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := Write(dir, a, td, time.Hour); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return dir
}

func TestWrite_LayoutSharedWithHBONE(t *testing.T) {
	dir := writeDir(t)
	for _, tc := range []struct {
		role Role
		id   string
	}{{Client, "spiffe://cluster.local/ns/bench/sa/client"}, {Server, "spiffe://cluster.local/ns/bench/sa/server"}} {
		pair, roots, err := Load(dir, tc.role)
		if err != nil {
			t.Fatalf("Load(%v): %v", tc.role, err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != tc.id {
			t.Errorf("leaf URIs = %v, want %s", leaf.URIs, tc.id)
		}
		pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			t.Errorf("leaf key is %T, want ECDSA P-256", leaf.PublicKey)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("leaf does not verify against ca.pem: %v", err)
		}
	}
}

func TestWrite_KeysPrivateAndCombinedFilesHoldCertThenKey(t *testing.T) {
	dir := writeDir(t)
	for _, f := range []string{ClientKeyFile, ServerKeyFile, ClientCombinedFile, ServerCombinedFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	for _, tc := range []struct{ combined, cert, key string }{
		{ClientCombinedFile, ClientCertFile, ClientKeyFile},
		{ServerCombinedFile, ServerCertFile, ServerKeyFile},
	} {
		read := func(n string) []byte {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		if got, want := read(tc.combined), append(read(tc.cert), read(tc.key)...); !bytes.Equal(got, want) {
			t.Errorf("%s is not %s followed by %s", tc.combined, tc.cert, tc.key)
		}
		// OpenSSL (haproxy) reads PKCS#8 "PRIVATE KEY" blocks.
		if b, _ := pem.Decode(read(tc.key)); b == nil || b.Type != "PRIVATE KEY" {
			t.Errorf("%s is not a PKCS#8 PEM key", tc.key)
		}
	}
}

type emptyAuthority struct{ Authority }

func (emptyAuthority) RootsPEM() []byte { return nil }

func TestWrite_RefusesEmptyBundle(t *testing.T) {
	if err := Write(t.TempDir(), emptyAuthority{}, td, time.Hour); err == nil {
		t.Error("Write with an empty trust bundle succeeded")
	}
}

func TestLoad_MissingDirSaysWhere(t *testing.T) {
	_, _, err := Load("/nonexistent/certs", Client)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("/nonexistent/certs")) {
		t.Errorf("err = %v", err)
	}
}
