package servingcert

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/ca"
)

func TestSource_RenewsAtHalfLife(t *testing.T) {
	a, err := ca.NewSelfSigned(spiffeid.RequireTrustDomainFromString("cluster.local"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A lifetime shorter than the backdating: half life is already past,
	// so Run renews at once, then again after each renewal.
	s, err := New(Config{Authority: a, Names: []string{"istiod.istio-system.svc", "127.0.0.1", "127.0.0.1", ""}, TTL: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	first := s.Current()
	if got := first.Leaf.DNSNames; len(got) != 1 || got[0] != "istiod.istio-system.svc" || len(first.Leaf.IPAddresses) != 1 {
		t.Errorf("SANs = %v %v", got, first.Leaf.IPAddresses)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(a.RootsPEM())
	if _, err := first.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "127.0.0.1", CurrentTime: first.Leaf.NotBefore.Add(time.Minute)}); err != nil {
		t.Errorf("verify: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for c, _ := s.GetCertificate(nil); c == first; c, _ = s.GetCertificate(nil) {
		if time.Now().After(deadline) {
			t.Fatal("certificate not renewed")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

func TestNew_RefusesNoNames(t *testing.T) {
	a, err := ca.NewSelfSigned(spiffeid.RequireTrustDomainFromString("cluster.local"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Authority: a, Names: []string{""}}); err == nil {
		t.Error("New accepted no names")
	}
}
