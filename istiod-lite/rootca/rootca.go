// Package rootca keeps istiod-lite's CA key material in Kubernetes, the way
// istiod does (DESIGN §3).
//
// [Load] picks the signing CA at start-up, in the CA namespace:
//
//  1. Secret "cacerts" (Istio's plug-in CA: ca-cert.pem, ca-key.pem,
//     root-cert.pem, cert-chain.pem), if it exists. If it exists but is
//     broken, Load fails with the Secret and key at fault: it never falls
//     back to a self-signed root, which would silently split the mesh.
//  2. Otherwise Secret "istio-ca-secret" (Istio's self-signed layout,
//     ca-cert.pem and ca-key.pem), created with a fresh self-signed root if
//     missing. When two replicas race to create it, the loser re-reads the
//     winner's. A broken istio-ca-secret is an error too (delete it to mint a
//     new root, knowing every workload certificate changes trust).
//
// [Publisher] keeps the ConfigMap "istio-ca-root-cert" (key root-cert.pem,
// what ztunnel, waypoints and workloads mount) equal to the roots in the
// CA's namespace and, with AllNamespaces (istiod-lite's setting, as
// Istio's), in every other namespace but the Kubernetes system ones, new
// namespaces included, rewriting it when anyone edits or deletes it.
package rootca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambientmesh/ambient/internal/ca"
)

// Names of the Kubernetes objects, as Istio's.
const (
	PluginSecret     = "cacerts"
	SelfSignedSecret = "istio-ca-secret"
	RootConfigMap    = "istio-ca-root-cert"
	RootConfigMapKey = "root-cert.pem"
	// SelfSignedSecretType is the Secret type istiod gives istio-ca-secret.
	SelfSignedSecretType corev1.SecretType = "istio.io/ca-root"
)

// Source says where the CA came from.
type Source string

const (
	FromPluginSecret      Source = PluginSecret
	FromSelfSignedSecret  Source = SelfSignedSecret
	CreatedSelfSignedRoot Source = "new " + SelfSignedSecret
)

// Config says where the CA material lives.
type Config struct {
	// Client reaches the apiserver. Required.
	Client kubernetes.Interface
	// Namespace holds the Secrets (istiod's namespace). Required.
	Namespace string
	// TrustDomain is the CA's trust domain. Required.
	TrustDomain spiffeid.TrustDomain
	// Options tune the Authority (leaf TTLs, root TTL for a new root).
	Options ca.Options
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Load returns the Authority to sign with and where it came from; see the
// package doc.
func Load(ctx context.Context, cfg Config) (*ca.Authority, Source, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.TrustDomain.IsZero() {
		return nil, "", errors.New("rootca: Config.Client, Namespace and TrustDomain are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	secrets := cfg.Client.CoreV1().Secrets(cfg.Namespace)

	s, err := secrets.Get(ctx, PluginSecret, metav1.GetOptions{})
	switch {
	case err == nil:
		a, err := fromSecret(s, cfg)
		if err != nil {
			return nil, "", err
		}
		log.Info("rootca: using plug-in CA", "secret", cfg.Namespace+"/"+PluginSecret, "subject", a.Certificate().Subject.String())
		return a, FromPluginSecret, nil
	case !apierrors.IsNotFound(err):
		return nil, "", getError(cfg.Namespace, PluginSecret, err)
	}

	s, err = secrets.Get(ctx, SelfSignedSecret, metav1.GetOptions{})
	switch {
	case err == nil:
		a, err := fromSecret(s, cfg)
		if err != nil {
			return nil, "", err
		}
		log.Info("rootca: using self-signed root", "secret", cfg.Namespace+"/"+SelfSignedSecret)
		return a, FromSelfSignedSecret, nil
	case !apierrors.IsNotFound(err):
		return nil, "", getError(cfg.Namespace, SelfSignedSecret, err)
	}

	a, err := ca.NewSelfSigned(cfg.TrustDomain, cfg.Options)
	if err != nil {
		return nil, "", fmt.Errorf("rootca: %w", err)
	}
	data, err := a.SecretData()
	if err != nil {
		return nil, "", fmt.Errorf("rootca: %w", err)
	}
	_, err = secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SelfSignedSecret, Namespace: cfg.Namespace},
		Type:       SelfSignedSecretType,
		Data:       data,
	}, metav1.CreateOptions{})
	switch {
	case err == nil:
		log.Info("rootca: created self-signed root", "secret", cfg.Namespace+"/"+SelfSignedSecret)
		return a, CreatedSelfSignedRoot, nil
	case apierrors.IsAlreadyExists(err):
		// Another replica won the race: use its root, not ours.
		s, err := secrets.Get(ctx, SelfSignedSecret, metav1.GetOptions{})
		if err != nil {
			return nil, "", getError(cfg.Namespace, SelfSignedSecret, err)
		}
		a, err := fromSecret(s, cfg)
		if err != nil {
			return nil, "", err
		}
		log.Info("rootca: using self-signed root created concurrently", "secret", cfg.Namespace+"/"+SelfSignedSecret)
		return a, FromSelfSignedSecret, nil
	default:
		return nil, "", fmt.Errorf("rootca: create Secret %s/%s: %w (istiod-lite needs create on secrets in %s)",
			cfg.Namespace, SelfSignedSecret, err, cfg.Namespace)
	}
}

// fromSecret loads an Authority from a Secret in Istio's layout, naming the
// Secret (and, through ca.CheckSecretData, the key) at fault.
func fromSecret(s *corev1.Secret, cfg Config) (*ca.Authority, error) {
	name := s.Namespace + "/" + s.Name
	if s.Namespace == "" {
		name = cfg.Namespace + "/" + s.Name
	}
	hint := "fix the Secret or delete it"
	if s.Name == PluginSecret {
		hint = "fix the Secret (keys " + ca.SecretCACert + ", " + ca.SecretCAKey + ", " + ca.SecretRootCert + ", " + ca.SecretCertChain +
			") or delete it to fall back to the self-signed root"
	}
	if err := ca.CheckSecretData(s.Data); err != nil {
		return nil, fmt.Errorf("rootca: Secret %s: %w; %s", name, err, hint)
	}
	a, err := ca.LoadSecretData(s.Data, cfg.TrustDomain, cfg.Options)
	if err != nil {
		return nil, fmt.Errorf("rootca: Secret %s: %w; %s", name, err, hint)
	}
	return a, nil
}

func getError(ns, name string, err error) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("rootca: get Secret %s/%s: %w (istiod-lite needs get/create on secrets in %s)", ns, name, err, ns)
	}
	return fmt.Errorf("rootca: get Secret %s/%s: %w", ns, name, err)
}

// WriteFile writes pem to path atomically (a temporary file renamed over
// it), readable by all: root certificates are public.
func WriteFile(path string, pem []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".root-cert-*")
	if err != nil {
		return fmt.Errorf("rootca: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(pem); err != nil {
		tmp.Close()
		return fmt.Errorf("rootca: write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("rootca: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("rootca: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rootca: write %s: %w", path, err)
	}
	return nil
}
