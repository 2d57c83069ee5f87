package rootca_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/istiod-lite/rootca"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func secret(name string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "istio-system"}, Data: data}
}

func TestLoad_CreatesSelfSignedSecretThenReusesIt(t *testing.T) {
	client := fake.NewClientset()
	cfg := rootca.Config{Client: client, Namespace: "istio-system", TrustDomain: td}
	a, src, err := rootca.Load(context.Background(), cfg)
	if err != nil || src != rootca.CreatedSelfSignedRoot {
		t.Fatalf("first Load = %v, %v; want a new root", src, err)
	}
	s, err := client.CoreV1().Secrets("istio-system").Get(context.Background(), rootca.SelfSignedSecret, metav1.GetOptions{})
	if err != nil || s.Type != rootca.SelfSignedSecretType {
		t.Fatalf("istio-ca-secret = %v, %v", s, err)
	}
	b, src, err := rootca.Load(context.Background(), cfg)
	if err != nil || src != rootca.FromSelfSignedSecret {
		t.Fatalf("second Load = %v, %v; want the stored root", src, err)
	}
	if !bytes.Equal(a.RootsPEM(), b.RootsPEM()) {
		t.Error("second Load made a new root")
	}
}

// Two replicas start at once: the one whose create fails with AlreadyExists
// must use the winner's root.
func TestLoad_LosingTheCreateRaceUsesTheWinnersRoot(t *testing.T) {
	winner, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := winner.SecretData()
	client := fake.NewClientset()
	client.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		// The other replica creates it first; then our create proceeds and
		// fails with AlreadyExists.
		if err := client.Tracker().Add(secret(rootca.SelfSignedSecret, data)); err != nil {
			t.Error(err)
		}
		return false, nil, nil
	})
	a, src, err := rootca.Load(context.Background(), rootca.Config{Client: client, Namespace: "istio-system", TrustDomain: td})
	if err != nil || src != rootca.FromSelfSignedSecret {
		t.Fatalf("Load = %v, %v; want the winner's root", src, err)
	}
	if !bytes.Equal(a.RootsPEM(), winner.RootsPEM()) {
		t.Error("Load kept its own root, not the winner's")
	}
}

func TestLoad_CacertsWinsAndBrokenCacertsFailsClosed(t *testing.T) {
	plugged, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := plugged.SecretData()
	client := fake.NewClientset(secret(rootca.PluginSecret, data))
	a, src, err := rootca.Load(context.Background(), rootca.Config{Client: client, Namespace: "istio-system", TrustDomain: td})
	if err != nil || src != rootca.FromPluginSecret || !bytes.Equal(a.RootsPEM(), plugged.RootsPEM()) {
		t.Fatalf("Load = %v, %v; want the cacerts root", src, err)
	}

	other, _ := ca.NewSelfSigned(td, ca.Options{})
	otherData, _ := other.SecretData()
	for _, tt := range []struct {
		name, key string
		value     []byte
		wantMsg   string
	}{
		{"missing key", ca.SecretCAKey, nil, "key ca-key.pem is missing"},
		{"garbage cert", ca.SecretCACert, []byte("garbage"), "key ca-cert.pem"},
		{"key of another CA", ca.SecretCAKey, otherData[ca.SecretCAKey], "does not belong to the signing certificate"},
		{"root that did not sign it", ca.SecretRootCert, otherData[ca.SecretRootCert], "does not verify to the given roots"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			broken := map[string][]byte{}
			for k, v := range data {
				broken[k] = v
			}
			broken[tt.key] = tt.value
			client := fake.NewClientset(secret(rootca.PluginSecret, broken))
			_, _, err := rootca.Load(context.Background(), rootca.Config{Client: client, Namespace: "istio-system", TrustDomain: td})
			if err == nil || !strings.Contains(err.Error(), "Secret istio-system/cacerts") || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Load = %v, want an error naming Secret istio-system/cacerts and %q", err, tt.wantMsg)
			}
			if _, err := client.CoreV1().Secrets("istio-system").Get(context.Background(), rootca.SelfSignedSecret, metav1.GetOptions{}); err == nil {
				t.Error("fell back to a self-signed root")
			}
		})
	}
}

func TestPublisher_CreatesAndRestoresConfigMap(t *testing.T) {
	client := fake.NewClientset(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: rootca.RootConfigMap, Namespace: "istio-system"},
		Data:       map[string]string{rootca.RootConfigMapKey: "stale"},
	})
	// A short re-check period: the fake clientset's watch starts after its
	// list, so a deletion in between is never delivered (a real apiserver's
	// watch resumes from the list's version); the periodic re-check
	// repairs it, as it would any missed event in production.
	p, err := rootca.NewPublisher(rootca.PublisherConfig{Client: client, Namespace: "istio-system", RootsPEM: []byte("ROOT"),
		Resync: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	waitData := func(what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			cm, err := client.CoreV1().ConfigMaps("istio-system").Get(ctx, rootca.RootConfigMap, metav1.GetOptions{})
			if err == nil && cm.Data[rootca.RootConfigMapKey] == "ROOT" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: ConfigMap = %v, %v", what, cm, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitData("stale data replaced")
	select {
	case <-p.Published():
	case <-time.After(10 * time.Second):
		t.Fatal("Published not closed")
	}
	if err := client.CoreV1().ConfigMaps("istio-system").Delete(ctx, rootca.RootConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitData("deleted ConfigMap recreated")
}

// TestPublisher_AllNamespaces: every namespace but the skipped system ones
// gets the ConfigMap, including namespaces created later; a terminating
// namespace gets none.
func TestPublisher_AllNamespaces(t *testing.T) {
	ns := func(name string, phase corev1.NamespacePhase) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NamespaceStatus{Phase: phase}}
	}
	client := fake.NewClientset(ns("istio-system", corev1.NamespaceActive), ns("shop", corev1.NamespaceActive),
		ns("kube-system", corev1.NamespaceActive), ns("leaving", corev1.NamespaceTerminating))
	p, err := rootca.NewPublisher(rootca.PublisherConfig{Client: client, Namespace: "istio-system", AllNamespaces: true,
		RootsPEM: []byte("ROOT"), Resync: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	has := func(ns string) bool {
		cm, err := client.CoreV1().ConfigMaps(ns).Get(ctx, rootca.RootConfigMap, metav1.GetOptions{})
		return err == nil && cm.Data[rootca.RootConfigMapKey] == "ROOT"
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("istio-system and shop published", func() bool { return has("istio-system") && has("shop") })
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns("later", corev1.NamespaceActive), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("a new namespace published", func() bool { return has("later") })
	// The namespaces present at start were handled before "later" was
	// created: nothing where nothing belongs.
	for _, n := range []string{"kube-system", "leaving"} {
		if has(n) {
			t.Errorf("ConfigMap published in %s", n)
		}
	}
}
