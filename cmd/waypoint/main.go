// Command waypoint is the mesh's shared L7 proxy (package waypoint/proxy):
// it terminates the HBONE tunnels ztunnels send for services bound to it,
// serves the HTTP inside with the routes and L7 AuthorizationPolicies of
// its Gateway, and forwards each request over HBONE to an endpoint.
//
// The mesh and the L7 configuration come from --local-config FILE: a YAML
// file in the shape of ztunnel's local config plus routes and
// authorizationPolicies lists (package waypoint/wpconfig), re-read when it
// changes; a new version is compiled off the request path and swapped in
// atomically, so requests in flight finish under the old one. The
// waypoint's certificate (identity spiffe://TD/ns/NS/sa/SA, --namespace and
// --service-account) is signed by an in-process CA loaded from
// --ca-cert/--ca-key, the CA the ztunnels trust. Certificates arrive
// through a signer (cmd/waypoint's certSigner, identity.SignFunc), the seam
// where istiod-lite's CA client (internal/caclient) plugs in once the
// waypoint's configuration comes over xDS.
//
// Listeners: --hbone-addr (:15008), --admin-addr (127.0.0.1:15000,
// /config_dump), --metrics-addr (:15020, Prometheus: istio_requests_total,
// istio_request_duration_milliseconds, istio_request_bytes,
// istio_response_bytes), --ready-addr (:15021, /healthz/ready). Logs are
// JSON on stderr; one flow record per request goes to --flow-log (stdout by
// default). SIGINT or SIGTERM stops accepting tunnels, lets in-flight
// requests finish (--drain-timeout) and exits 0.
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
	"time"
)

func main() {
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: opts.logLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, logger, os.Stdout); err != nil {
		logger.Error("waypoint failed", "err", err.Error())
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		stop()
		os.Exit(1)
	}
}

// options are the parsed flags.
type options struct {
	gatewayNS, gatewayName string
	gatewayClass           string
	rootNamespace          string
	namespace              string
	serviceAccount         string
	trustDomain            string
	clusterID              string
	localConfig            string
	caCert, caKey, caRoot  string
	hboneAddr              string
	adminAddr              string
	metricsAddr            string
	readyAddr              string
	flowLog                string
	drainTimeout           time.Duration
	logLevel               slog.Level
}

// parseFlags parses args; errors are usage errors.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var gateway string
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&gateway, "gateway", "", "the waypoint's Gateway as NAMESPACE/NAME (policy targetRefs and Gateway routes name it). Required")
	fs.StringVar(&o.gatewayClass, "gateway-class", "istio-waypoint", "the Gateway's class (GatewayClass policy targetRefs)")
	fs.StringVar(&o.rootNamespace, "root-namespace", "istio-system", "the mesh's root namespace (GatewayClass-targeted policies live there)")
	fs.StringVar(&o.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the waypoint pod's namespace (default $POD_NAMESPACE, else the Gateway's)")
	fs.StringVar(&o.serviceAccount, "service-account", os.Getenv("SERVICE_ACCOUNT"), "the waypoint pod's ServiceAccount (default $SERVICE_ACCOUNT, else the Gateway's name, as Istio names it)")
	fs.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "the mesh's SPIFFE trust domain")
	fs.StringVar(&o.clusterID, "cluster-id", "Kubernetes", "cluster name for the *_cluster metric labels")
	fs.StringVar(&o.localConfig, "local-config", "", "YAML file with the mesh, routes and authorizationPolicies; re-read when it changes. Required")
	fs.StringVar(&o.caCert, "ca-cert", "", "PEM signing certificate of the mesh CA (the one the ztunnels use) that signs the waypoint's certificate. Required, with --ca-key")
	fs.StringVar(&o.caKey, "ca-key", "", "PEM private key of --ca-cert")
	fs.StringVar(&o.caRoot, "ca-root", "", "PEM root certificates, when --ca-cert is an intermediate")
	fs.StringVar(&o.hboneAddr, "hbone-addr", ":15008", "HBONE listener")
	fs.StringVar(&o.adminAddr, "admin-addr", "127.0.0.1:15000", "admin endpoint (/config_dump)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":15020", "Prometheus /metrics endpoint")
	fs.StringVar(&o.readyAddr, "ready-addr", ":15021", "readiness endpoint (/healthz/ready)")
	fs.StringVar(&o.flowLog, "flow-log", "-", "file to append one JSON line per request to; - for stdout")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests may finish")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q; every setting is a flag (see -help)", fs.Args())
	}
	ns, name, ok := strings.Cut(gateway, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return o, fmt.Errorf("--gateway %q: want NAMESPACE/NAME of the waypoint's Gateway, e.g. shop/waypoint", gateway)
	}
	o.gatewayNS, o.gatewayName = ns, name
	if o.namespace == "" {
		o.namespace = ns
	}
	if o.serviceAccount == "" {
		o.serviceAccount = name
	}
	if o.localConfig == "" {
		return o, errors.New("--local-config FILE is required: the waypoint reads its mesh, routes and policies from it (configuration over xDS is not supported yet)")
	}
	if o.caCert == "" || o.caKey == "" {
		return o, errors.New("--ca-cert and --ca-key are required: the waypoint's certificate must come from the CA the ztunnels trust")
	}
	return o, nil
}
