// Command ztunnel is the per-node tunnel of the ambient mesh (package
// ztunnel): it serves every enrolled pod of its node from inside the pod's
// network namespace.
//
// Until the xDS client exists the mesh comes from --local-config, a YAML file
// in the workload API's shape that is re-read when it changes (package
// ztunnel/localconfig), and pods are registered with --pod UID=NETNS_PATH or
// found in --netns-dir until the CNI plugin hands them over. Certificates are
// signed in-process by a CA loaded from --ca-cert/--ca-key, or by a
// self-signed CA generated at start whose root is written next to the config.
//
// Endpoints (package ztunnel/admin): --admin-addr (config dump, connections),
// --metrics-addr (Prometheus), --ready-addr (/healthz/ready). Logs are JSON on
// stderr; flow records are JSON lines on --flow-log (stdout by default).
// SIGINT or SIGTERM drains: every pod's capture rules are removed before the
// process exits 0.
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
	"strings"
	"syscall"
)

func main() {
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: opts.logLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, logger, os.Stdout); err != nil {
		logger.Error("ztunnel failed", "err", err.Error())
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		stop()
		os.Exit(1)
	}
}

// options are the parsed flags.
type options struct {
	node        string
	trustDomain string
	clusterID   string
	localConfig string
	caCert      string
	caKey       string
	caRoot      string
	adminAddr   string
	metricsAddr string
	readyAddr   string
	flowLog     string
	pods        podFlag
	netnsDir    string
	cniSocket   string
	cniStateDir string
	logLevel    slog.Level
}

// podFlag collects repeated --pod UID=NETNS_PATH.
type podFlag map[string]string

func (p podFlag) String() string {
	var parts []string
	for uid, path := range p {
		parts = append(parts, uid+"="+path)
	}
	return strings.Join(parts, ",")
}

func (p podFlag) Set(s string) error {
	i := strings.Index(s, "=") // uids have no "="; paths may
	if i <= 0 || i == len(s)-1 {
		return fmt.Errorf("want UID=NETNS_PATH, e.g. shop-frontend-1=/run/netns/frontend-1, got %q", s)
	}
	uid, path := s[:i], s[i+1:]
	if old, dup := p[uid]; dup && old != path {
		return fmt.Errorf("pod %q given twice (%s and %s)", uid, old, path)
	}
	p[uid] = path
	return nil
}

// parseFlags parses args; errors are usage errors.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	o := options{pods: podFlag{}}
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.node, "node", os.Getenv("NODE_NAME"), "this node's name: only workloads on it are served (default $NODE_NAME)")
	fs.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "the mesh's SPIFFE trust domain")
	fs.StringVar(&o.clusterID, "cluster-id", "Kubernetes", "cluster name for the *_cluster metric labels")
	fs.StringVar(&o.localConfig, "local-config", "", "YAML file describing the mesh (workloads, services, policies); re-read when it changes. Required until the xDS client exists")
	fs.StringVar(&o.caCert, "ca-cert", "", "PEM signing certificate (and chain) of the CA that issues pod certificates; with --ca-key")
	fs.StringVar(&o.caKey, "ca-key", "", "PEM private key of --ca-cert")
	fs.StringVar(&o.caRoot, "ca-root", "", "PEM root certificates, when --ca-cert is an intermediate")
	fs.StringVar(&o.adminAddr, "admin-addr", "127.0.0.1:15000", "admin endpoint (/config_dump, /debug/connections)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":15020", "Prometheus /metrics endpoint")
	fs.StringVar(&o.readyAddr, "ready-addr", ":15021", "readiness endpoint (/healthz/ready)")
	fs.StringVar(&o.flowLog, "flow-log", "-", "file to append one JSON line per connection to; - for stdout")
	fs.Var(o.pods, "pod", "register a pod: UID=NETNS_PATH (repeatable)")
	fs.StringVar(&o.netnsDir, "netns-dir", "", "directory of named network namespaces whose names are pod uids (URL-escaped); rescanned every few seconds")
	fs.StringVar(&o.cniSocket, "cni-socket", "", "unix socket the ambient-cni plugin hands pods over on (e.g. /var/run/ambient/ztunnel.sock); empty: off")
	fs.StringVar(&o.cniStateDir, "cni-state-dir", "/var/run/ambient/pods", "the plugin's pod state directory, scanned at start to recover pods after a restart (with --cni-socket)")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q; every setting is a flag (see -help)", fs.Args())
	}
	if o.node == "" {
		return o, errors.New("--node is required (or set NODE_NAME): the name of the node this ztunnel serves")
	}
	if o.localConfig == "" {
		return o, errors.New("--local-config is required: the xDS client does not exist yet, so the mesh must come from a YAML file")
	}
	if (o.caCert == "") != (o.caKey == "") {
		return o, errors.New("--ca-cert and --ca-key go together: give both, or neither to generate a self-signed CA")
	}
	if o.caRoot != "" && o.caCert == "" {
		return o, errors.New("--ca-root needs --ca-cert and --ca-key")
	}
	return o, nil
}
