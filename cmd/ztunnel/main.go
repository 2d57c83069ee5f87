// Command ztunnel is the per-node tunnel of the ambient mesh (package
// ztunnel): it serves every enrolled pod of its node from inside the pod's
// network namespace.
//
// The mesh comes from exactly one of two sources:
//
//   - --xds-address HOST:PORT (istiod-lite, e.g. istiod.istio-system.svc:15012):
//     the workload API over Delta ADS (package internal/xdsclient), and pod
//     certificates from istiod-lite's CA (package internal/caclient) at
//     --ca-address, which defaults to the same address. Both connections use
//     TLS 1.3, trust the roots of --ca-root-file (re-read when it changes)
//     and expect the server name --xds-server-name; both authenticate with
//     the projected ServiceAccount token of --token-file (audience istio-ca),
//     re-read for every request. /healthz/ready stays 503 until the first
//     configuration of every type has arrived.
//   - --local-config FILE: a YAML file in the workload API's shape that is
//     re-read when it changes (package ztunnel/localconfig). Certificates are
//     then signed in-process by a CA loaded from --ca-cert/--ca-key, or by a
//     self-signed CA generated at start whose root is written next to the
//     config.
//
// Pods are registered with --pod UID=NETNS_PATH, found in --netns-dir, or
// handed over by the ambient-cni plugin on --cni-socket.
//
// Endpoints (package ztunnel/admin): --admin-addr (config dump, connections),
// --metrics-addr (Prometheus), --ready-addr (/healthz/ready). Logs are JSON on
// stderr; flow records are JSON lines on --flow-log (stdout by default).
// SIGINT or SIGTERM drains open connections and exits 0. The pods' capture
// rules stay (fail closed: a captured pod's connections are refused until
// the next ztunnel serves it, never carried in plaintext past its policies);
// --remove-capture-on-exit removes them instead.
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
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/ambientmesh/ambient/internal/caclient"
	"github.com/ambientmesh/ambient/internal/gomaxprocs"
	"github.com/ambientmesh/ambient/internal/istiodconn"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/ztunnel"
)

// defaultGOGC is ztunnel's garbage-collection target unless $GOGC says
// otherwise. Its heap is mostly long-lived per-connection state and its data
// path allocates next to nothing (pooled buffers), so collections are rare
// and cheap, while Go's default target (100) lets the process keep up to
// twice its live heap resident — on every node of the cluster.
const defaultGOGC = 50

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGOGC)
	}
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
	// With --xds-address: istiod-lite's addresses and credentials.
	xdsAddress    string
	caAddress     string
	caRootFile    string
	tokenFile     string
	xdsServerName string
	// With --local-config: the in-process CA.
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
	// removeCapture removes the pods' capture rules on exit.
	removeCapture bool
	// captureUDP carries the pods' UDP through the mesh.
	captureUDP bool
	// procs pins GOMAXPROCS; 0 sizes it to the load.
	procs int
	// drainTimeout bounds the drain on SIGTERM; udpIdleTimeout ends a
	// silent UDP flow.
	drainTimeout, udpIdleTimeout time.Duration
	// tunnelCongestion is the HBONE tunnels' TCP congestion control.
	tunnelCongestion string
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
	fs.StringVar(&o.clusterID, "cluster-id", "Kubernetes", "cluster name for the *_cluster metric labels; with --xds-address also sent to istiod-lite's CA as clusterid")
	fs.StringVar(&o.localConfig, "local-config", "", "YAML file describing the mesh (workloads, services, policies); re-read when it changes. Exclusive with --xds-address")
	fs.StringVar(&o.xdsAddress, "xds-address", "", "istiod-lite's xDS address, e.g. istiod.istio-system.svc:15012: the mesh comes from there. Exclusive with --local-config")
	fs.StringVar(&o.caAddress, "ca-address", "", "istiod-lite's CA address for pod certificates (default --xds-address)")
	fs.StringVar(&o.caRootFile, "ca-root-file", caclient.DefaultRootFile, "PEM root certificates that sign istiod-lite's serving certificate (with --xds-address); re-read when it changes")
	fs.StringVar(&o.tokenFile, "token-file", caclient.DefaultTokenFile, "projected ServiceAccount token (audience istio-ca) sent to istiod-lite (with --xds-address); re-read for every request")
	fs.StringVar(&o.xdsServerName, "xds-server-name", caclient.DefaultServerName, "DNS name istiod-lite's serving certificate must carry (with --xds-address)")
	fs.StringVar(&o.caCert, "ca-cert", "", "PEM signing certificate (and chain) of the in-process CA that issues pod certificates with --local-config; with --ca-key")
	fs.StringVar(&o.caKey, "ca-key", "", "PEM private key of --ca-cert")
	fs.StringVar(&o.caRoot, "ca-root", "", "PEM root certificates, when --ca-cert is an intermediate")
	fs.StringVar(&o.adminAddr, "admin-addr", "127.0.0.1:15000", "admin endpoint (/config_dump, /debug/connections)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":15020", "Prometheus /metrics endpoint")
	fs.StringVar(&o.readyAddr, "ready-addr", ":15021", "readiness endpoint (/healthz/ready)")
	fs.StringVar(&o.flowLog, "flow-log", "-", "file to append one JSON line per connection to; - for stdout")
	fs.Var(o.pods, "pod", "register a pod: UID=NETNS_PATH (repeatable)")
	fs.StringVar(&o.netnsDir, "netns-dir", "", "directory of named network namespaces whose names are pod uids (URL-escaped); rescanned every few seconds")
	fs.StringVar(&o.cniSocket, "cni-socket", "", "unix socket the ambient-cni plugin hands pods over on (e.g. /var/run/ambient/ztunnel.sock); empty: off")
	fs.BoolVar(&o.removeCapture, "remove-capture-on-exit", false, "remove every pod's capture rules on exit, so pods talk in plaintext while no ztunnel runs; by default they stay and the pods' connections are refused until the next ztunnel takes over (fail closed)")
	fs.BoolVar(&o.captureUDP, "capture-udp", false, "also capture the pods' outbound UDP (DNS to port 53 excepted) and carry it through the mesh with CONNECT-UDP, and accept UDP tunnels for them; off by default for now: enable it on every node at once, since a node without it refuses UDP tunnels")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 5*time.Second, "on SIGTERM, how long the pods' open connections and UDP flows may finish while the pods stay served; keep it below the pod's termination grace period")
	fs.DurationVar(&o.udpIdleTimeout, "udp-idle-timeout", ztunnel.DefaultUDPIdleTimeout, "with --capture-udp, end a UDP flow once no datagram crossed it either way for this long")
	fs.StringVar(&o.tunnelCongestion, "tunnel-congestion-control", "", "TCP congestion control of the HBONE tunnels the pods dial and accept, e.g. bbr to keep a lossy node link busy; empty: the node's default (net.ipv4.tcp_congestion_control), as the apps' own sockets keep")
	fs.StringVar(&o.cniStateDir, "cni-state-dir", "/var/run/ambient/pods", "the plugin's pod state directory, scanned at start to recover pods after a restart (with --cni-socket)")
	fs.Func("gomaxprocs", gomaxprocs.FlagHelp+" (default auto)", func(v string) (err error) {
		o.procs, err = gomaxprocs.ParseFlag(v)
		return err
	})
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
	if o.drainTimeout <= 0 || o.udpIdleTimeout <= 0 {
		return o, fmt.Errorf("--drain-timeout and --udp-idle-timeout must be positive (got %v and %v)", o.drainTimeout, o.udpIdleTimeout)
	}
	if o.tunnelCongestion != "" {
		if err := netns.CheckCongestionControl(o.tunnelCongestion); err != nil {
			return o, fmt.Errorf("--tunnel-congestion-control: %w", err)
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if err := checkConfigSource(o, set); err != nil {
		return o, err
	}
	if o.xdsAddress != "" && o.caAddress == "" {
		o.caAddress = o.xdsAddress
	}
	if (o.caCert == "") != (o.caKey == "") {
		return o, errors.New("--ca-cert and --ca-key go together: give both, or neither to generate a self-signed CA")
	}
	if o.caRoot != "" && o.caCert == "" {
		return o, errors.New("--ca-root needs --ca-cert and --ca-key")
	}
	return o, nil
}

// checkConfigSource checks that exactly one config source is given and that
// the flags given belong to it; set holds the flags given explicitly.
func checkConfigSource(o options, set map[string]bool) error {
	return istiodconn.CheckSource(istiodconn.SourceFlags{
		LocalConfig: o.localConfig, XDSAddress: o.xdsAddress,
		CARootFile: o.caRootFile, TokenFile: o.tokenFile, XDSServerName: o.xdsServerName, Set: set,
	})
}
