// Command clusterdns is the local cluster's DNS server (see package
// clusterdns): authoritative for the cluster domain, fed by the API
// server's Services and EndpointSlices, REFUSED for every other name.
//
//	clusterdns [--kubeconfig FILE] [--listen :53] [--domain cluster.local]
//	           [--ready-addr :8181] [--metrics-addr :9153]
//
// Without --kubeconfig (and $KUBECONFIG) it uses the in-cluster config.
// manifests/cluster/clusterdns.yaml runs it as the kube-dns Service
// (10.96.0.10). SIGINT or SIGTERM stops it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambientmesh/ambient/clusterdns"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(ctx, os.Args[1:], os.Stderr, log); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "clusterdns:", err)
		os.Exit(1)
	}
}

type options struct {
	kubeconfig  string
	listen      string
	domain      string
	readyAddr   string
	metricsAddr string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("clusterdns", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; empty: in-cluster config")
	fs.StringVar(&o.listen, "listen", ":53", "DNS address (UDP and TCP)")
	fs.StringVar(&o.domain, "domain", "cluster.local", "cluster domain served")
	fs.StringVar(&o.readyAddr, "ready-addr", ":8181", "address of /ready (200 once synced); empty: off")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":9153", "address of /metrics; empty: off")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return o, nil
}

func run(ctx context.Context, args []string, stderr io.Writer, log *slog.Logger) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %q: %w (pass --kubeconfig, set KUBECONFIG or run in a pod)", o.kubeconfig, err)
	}
	rc.UserAgent = "clusterdns"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	srv, err := clusterdns.New(clusterdns.Config{
		Client:      client,
		Domain:      o.domain,
		Listen:      o.listen,
		ReadyAddr:   o.readyAddr,
		MetricsAddr: o.metricsAddr,
		Logger:      log,
	})
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}
