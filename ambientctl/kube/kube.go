// Package kube loads ambientctl's Kubernetes client the way kubectl does
// (--kubeconfig, else $KUBECONFIG, else ~/.kube/config; --context, else the
// current one) and turns API errors into messages that say what to do.
package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Options select the cluster.
type Options struct {
	Kubeconfig string // explicit file; "" = $KUBECONFIG, else ~/.kube/config
	Context    string // "" = the kubeconfig's current context
}

// Cluster is a loaded kubeconfig context.
type Cluster struct {
	Config     *rest.Config
	Client     kubernetes.Interface
	Context    string // the context used
	Server     string // its API server URL
	Kubeconfig string // the file(s) read, for messages
}

// Load reads the kubeconfig and builds a client; it does not contact the
// cluster.
func Load(o Options) (*Cluster, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	where := describeFiles(rules)
	if o.Kubeconfig != "" {
		rules.ExplicitPath = o.Kubeconfig
		where = o.Kubeconfig
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.Context})
	raw, err := cc.RawConfig()
	if err != nil {
		return nil, fmt.Errorf("reading kubeconfig %s: %w; fix the file or choose another with --kubeconfig", where, err)
	}
	ctxName := raw.CurrentContext
	if o.Context != "" {
		ctxName = o.Context
	}
	cfg, err := cc.ClientConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			return nil, fmt.Errorf("no cluster configured: kubeconfig %s is missing or empty; point --kubeconfig or $KUBECONFIG at your cluster's kubeconfig", where)
		}
		return nil, fmt.Errorf("kubeconfig %s, context %q: %w; choose a context with --context (see kubectl config get-contexts)", where, ctxName, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s, context %q: %w", where, ctxName, err)
	}
	return &Cluster{Config: cfg, Client: client, Context: ctxName, Server: cfg.Host, Kubeconfig: where}, nil
}

func describeFiles(rules *clientcmd.ClientConfigLoadingRules) string {
	if len(rules.Precedence) > 0 {
		return strings.Join(rules.Precedence, string(filepath.ListSeparator))
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".kube", "config")
	}
	return "~/.kube/config"
}

// Explain turns an API error into one that says what to do: an unreachable
// cluster names the kubeconfig and context tried; a missing namespace says
// how to create it. what describes the attempted operation.
func (c *Cluster) Explain(err error, what string) error {
	if err == nil {
		return nil
	}
	var status apierrors.APIStatus
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", what, err)
	case apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err):
		return fmt.Errorf("%s: %w; check the credentials of context %q in kubeconfig %s", what, err, c.Context, c.Kubeconfig)
	case errors.As(err, &status):
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: cannot reach the Kubernetes API server %s (kubeconfig %s, context %q): %w; check that the cluster is running, or choose another with --kubeconfig / --context",
		what, c.Server, c.Kubeconfig, c.Context, err)
}

// NamespaceNotFound is the message for a namespace that does not exist.
func NamespaceNotFound(ns string) error {
	return fmt.Errorf("namespace %q not found; create it with: kubectl create namespace %s (or list them with kubectl get namespaces)", ns, ns)
}
