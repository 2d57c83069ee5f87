// Command istiod-lite is the ambient mesh's control plane: it watches the
// cluster (package istiod-lite/controller) and serves the workload API to
// every ztunnel over Delta ADS (package istiod-lite/xds).
//
//	istiod-lite [--kubeconfig PATH] [--xds-addr 127.0.0.1:15012]
//	            [--root-namespace istio-system] [--trust-domain cluster.local]
//
// Without --kubeconfig (and without $KUBECONFIG) it uses the in-cluster
// service-account configuration. The xDS listener is PLAINTEXT for now: bind
// it to loopback or a trusted network until TLS with the mesh CA lands.
// Logs are JSON on stderr. SIGINT or SIGTERM stops both components and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambientmesh/ambient/istiod-lite/controller"
	"github.com/ambientmesh/ambient/istiod-lite/translate"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
)

type options struct {
	kubeconfig    string
	xdsAddr       string
	rootNamespace string
	trustDomain   string
	clusterID     string
	logLevel      slog.Level
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("istiod-lite", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig `path`; empty: in-cluster config")
	fs.StringVar(&o.xdsAddr, "xds-addr", "127.0.0.1:15012", "listen `address` of the (plaintext) xDS server")
	fs.StringVar(&o.rootNamespace, "root-namespace", controller.DefaultRootNamespace, "`namespace` of mesh-wide policies")
	fs.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "trust `domain` of workload identities")
	fs.StringVar(&o.clusterID, "cluster-id", "Kubernetes", "cluster `id` in workload uids")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "log `level` (debug, info, warn, error)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return o, nil
}

func main() {
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "istiod-lite:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: opts.logLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, log, nil); err != nil {
		log.Error("istiod-lite: exiting", "err", err)
		os.Exit(1)
	}
}

// run serves until ctx ends. ready, if not nil, receives the xDS listen
// address once listening.
func run(ctx context.Context, o options, log *slog.Logger, ready func(net.Addr)) error {
	var rc *rest.Config
	var err error
	if o.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("kube config (pass --kubeconfig outside a cluster): %w", err)
	}
	cache := xds.NewCache()
	ctrl, err := controller.New(controller.Config{
		RESTConfig:    rc,
		Cache:         cache,
		Translate:     translate.Config{TrustDomain: o.trustDomain, ClusterID: o.clusterID},
		RootNamespace: o.rootNamespace,
		Logger:        log,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.xdsAddr)
	if err != nil {
		return fmt.Errorf("xds: listen %s: %w", o.xdsAddr, err)
	}
	srv, err := xds.New(xds.Config{Cache: cache, Listener: ln, Logger: log})
	if err != nil {
		ln.Close()
		return err
	}
	log.Warn("istiod-lite: xDS served in plaintext", "addr", ln.Addr().String())
	if ready != nil {
		ready(ln.Addr())
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- srv.Run(ctx) }()
	go func() { errc <- ctrl.Run(ctx) }()
	var first error
	for range 2 {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
		cancel() // one component ending stops the other
	}
	return first
}
