package ca_test

import (
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/ca"
)

func TestIssueServingCertificate_VerifiesForDNSAndIP(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	cert, err := a.IssueServingCertificate([]string{"istiod.istio-system.svc"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(a.RootsPEM())
	for _, name := range []string{"istiod.istio-system.svc", "127.0.0.1"} {
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, CurrentTime: t0}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if got := cert.Leaf.NotAfter; !got.Equal(t0.Add(time.Hour).Truncate(time.Second)) {
		t.Errorf("NotAfter = %v, want %v", got, t0.Add(time.Hour))
	}
	if len(cert.Leaf.URIs) != 0 || cert.Leaf.IsCA {
		t.Errorf("leaf has URIs %v / IsCA %v", cert.Leaf.URIs, cert.Leaf.IsCA)
	}
	if _, err := a.IssueServingCertificate(nil, nil, time.Hour); err == nil {
		t.Error("certificate without names issued")
	}
}

func TestCheckSecretData_NamesTheKeyAtFault(t *testing.T) {
	good, err := newAuthority(t, ca.Options{}).SecretData()
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.CheckSecretData(good); err != nil {
		t.Fatalf("good data: %v", err)
	}
	for _, tt := range []struct{ key, value string }{
		{ca.SecretCACert, ""},
		{ca.SecretCAKey, "not pem"},
		{ca.SecretRootCert, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
		{ca.SecretCertChain, "garbage"},
	} {
		data := map[string][]byte{}
		for k, v := range good {
			data[k] = v
		}
		data[tt.key] = []byte(tt.value)
		err := ca.CheckSecretData(data)
		if !errors.Is(err, ca.ErrInvalidCA) || !strings.Contains(err.Error(), tt.key) {
			t.Errorf("%s=%q: err = %v, want ErrInvalidCA naming %s", tt.key, tt.value, err, tt.key)
		}
	}
}
