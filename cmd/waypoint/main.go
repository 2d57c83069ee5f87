// Command waypoint is the mesh's shared L7 proxy (package waypoint/proxy):
// it terminates the HBONE tunnels ztunnels send for services bound to it,
// serves the HTTP inside with the routes and L7 AuthorizationPolicies of
// its Gateway and the services' resilience policies (DestinationRules,
// LocalTrafficPolicies), and forwards each request over HBONE to an
// endpoint.
//
// Its configuration comes from exactly one of two sources:
//
//   - --xds-address HOST:PORT (istiod-lite, as the Deployment istiod-lite's
//     waypoint controller creates passes it): one Delta ADS stream
//     (internal/istiodconn, shared with ztunnel) carries the mesh
//     (istio.workload.Address, istio.security.Authorization, into
//     internal/state) and the waypoint's L7 configuration
//     (ambient.waypoint.v1.ServiceRoutes, AuthorizationPolicy and
//     ServiceResilience). A push of any L7 type is compiled on the xDS
//     client's goroutine; one that does not decode or compile is NACKed
//     and the last good configuration stays in force. The certificate, for
//     the waypoint's own ServiceAccount identity, comes from istiod-lite's
//     CA at --ca-address (default --xds-address). Both connections trust
//     --ca-root-file, expect the server name --xds-server-name and
//     authenticate with the projected token of --token-file, as ztunnel's
//     do. Tunnels are served, and /healthz/ready answers 200, only once
//     every type has arrived (istiod-lite answers each subscription, empty
//     when it has no resources of the type) and the certificate is in hand.
//   - --local-config FILE: a YAML file in the shape of ztunnel's local
//     config plus routes, authorizationPolicies and resilience lists
//     (package waypoint/wpconfig), re-read when it changes. The
//     certificate is signed by an in-process CA loaded from
//     --ca-cert/--ca-key, the CA the ztunnels trust.
//
// Either way a new L7 configuration is compiled off the request path and
// swapped in atomically, so requests in flight finish under the old one.
//
// --gateway NAMESPACE/NAME names the waypoint's Gateway (policy targetRefs,
// Gateway routes); it defaults to $POD_NAMESPACE/$SERVICE_ACCOUNT, since
// istiod-lite names the waypoint's ServiceAccount after its Gateway. The
// identity is spiffe://TD/ns/NS/sa/SA of --namespace and --service-account
// (default $POD_NAMESPACE and $SERVICE_ACCOUNT, else the Gateway's).
//
// Listeners: --hbone-addr (:15008, TCP for HBONE and UDP for HBONE/3), --admin-addr (127.0.0.1:15000,
// /config_dump, /debug/connections), --metrics-addr (:15020, Prometheus: istio_requests_total,
// istio_request_duration_milliseconds, istio_request_bytes,
// istio_response_bytes, and with --xds-address the istio_xds_* and
// istio_agent_* client metrics), --ready-addr (:15021, /healthz/ready).
// Logs are JSON on stderr; one flow record per request goes to --flow-log
// (stdout by default). With --otlp-endpoint HOST:PORT each request also
// gets an OpenTelemetry server span (package waypoint/tracing), exported
// over OTLP/gRPC (TLS, or plaintext with --otlp-insecure), named
// service.name "<gateway>.<namespace>" as Istio names a proxy's
// canonical service; the span is the child of the caller's W3C traceparent
// and the upstream's traceparent names it. Sampling is parent-based:
// a caller's sampled flag decides, other requests start a sampled trace at
// --trace-sampling percent (default 1, Istio's). SIGINT or SIGTERM stops accepting tunnels, lets
// in-flight requests finish (--drain-timeout) and exits 0.
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
)

// defaultGOGC is the waypoint's garbage-collection target unless $GOGC
// says otherwise. Unlike ztunnel's, its heap is small and its data path
// allocates per request (net/http's parsed headers and URLs, both ways),
// so at Go's default (100) collections run every few hundred requests. A
// larger target trades a few MiB of heap for fewer of them; the memory
// limit still bounds the heap, since the Deployment sets GOMEMLIMIT from
// the container's.
const defaultGOGC = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGOGC)
	}
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
	// With --xds-address: istiod-lite's addresses and credentials.
	xdsAddress, caAddress string
	caRootFile, tokenFile string
	xdsServerName         string
	podName               string
	hboneAddr             string
	adminAddr             string
	metricsAddr           string
	readyAddr             string
	flowLog               string
	flowLogFlush          time.Duration
	drainTimeout          time.Duration
	tunnelCongestion      string // TCP congestion control of the HBONE sockets
	logLevel              slog.Level
	procs                 int // pinned GOMAXPROCS; 0 sizes it to the load

	// Tracing (tracing.go): off without otlpEndpoint.
	otlpEndpoint  string
	otlpInsecure  bool
	traceSampling float64
}

// parseFlags parses args; errors are usage errors.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var gateway string
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&gateway, "gateway", defaultGateway(), "the waypoint's Gateway as NAMESPACE/NAME (policy targetRefs and Gateway routes name it); default $POD_NAMESPACE/$SERVICE_ACCOUNT (istiod-lite names the ServiceAccount after the Gateway)")
	fs.StringVar(&o.gatewayClass, "gateway-class", "istio-waypoint", "the Gateway's class (GatewayClass policy targetRefs)")
	fs.StringVar(&o.rootNamespace, "root-namespace", "istio-system", "the mesh's root namespace (GatewayClass-targeted policies live there)")
	fs.StringVar(&o.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the waypoint pod's namespace (default $POD_NAMESPACE, else the Gateway's)")
	fs.StringVar(&o.serviceAccount, "service-account", os.Getenv("SERVICE_ACCOUNT"), "the waypoint pod's ServiceAccount (default $SERVICE_ACCOUNT, else the Gateway's name, as Istio names it)")
	fs.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "the mesh's SPIFFE trust domain")
	fs.StringVar(&o.clusterID, "cluster-id", "Kubernetes", "cluster name for the *_cluster metric labels")
	fs.StringVar(&o.localConfig, "local-config", "", "YAML file with the mesh, routes and authorizationPolicies; re-read when it changes. Exclusive with --xds-address")
	fs.StringVar(&o.xdsAddress, "xds-address", "", "istiod-lite's xDS address, e.g. istiod.istio-system.svc:15012: the mesh, routes and policies come from there. Exclusive with --local-config")
	fs.StringVar(&o.caAddress, "ca-address", "", "istiod-lite's CA address for the waypoint's certificate (default --xds-address)")
	fs.StringVar(&o.caRootFile, "ca-root-file", caclient.DefaultRootFile, "PEM root certificates that sign istiod-lite's serving certificate (with --xds-address); re-read when it changes")
	fs.StringVar(&o.tokenFile, "token-file", caclient.DefaultTokenFile, "projected ServiceAccount token (audience istio-ca) sent to istiod-lite (with --xds-address); re-read for every request")
	fs.StringVar(&o.xdsServerName, "xds-server-name", caclient.DefaultServerName, "DNS name istiod-lite's serving certificate must carry (with --xds-address)")
	fs.StringVar(&o.caCert, "ca-cert", "", "PEM signing certificate of the mesh CA (the one the ztunnels use) that signs the waypoint's certificate, with --local-config; with --ca-key")
	fs.StringVar(&o.caKey, "ca-key", "", "PEM private key of --ca-cert")
	fs.StringVar(&o.caRoot, "ca-root", "", "PEM root certificates, when --ca-cert is an intermediate")
	fs.StringVar(&o.hboneAddr, "hbone-addr", ":15008", "HBONE listener: TCP (HTTP/2) and UDP (HBONE/3, QUIC)")
	fs.StringVar(&o.adminAddr, "admin-addr", "127.0.0.1:15000", "admin endpoint (/config_dump, /debug/connections)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":15020", "Prometheus /metrics endpoint")
	fs.StringVar(&o.readyAddr, "ready-addr", ":15021", "readiness endpoint (/healthz/ready)")
	fs.StringVar(&o.flowLog, "flow-log", "-", "file to append one JSON line per request to; - for stdout")
	fs.DurationVar(&o.flowLogFlush, "flow-log-flush-interval", time.Second, "how long flow records may wait to be written together (as Envoy's access log flush interval); 0 writes each at once")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests may finish")
	fs.StringVar(&o.tunnelCongestion, "tunnel-congestion-control", "", "TCP congestion control of the HBONE connections the waypoint accepts on --hbone-addr and of its own upstream connections, e.g. bbr to keep a lossy node link busy; empty: the kernel's default")
	fs.StringVar(&o.otlpEndpoint, "otlp-endpoint", "", "OpenTelemetry collector HOST:PORT speaking OTLP/gRPC (e.g. otel-collector.observability:4317): each sampled request's server span is exported there and the upstream gets a W3C traceparent naming it; empty (the default) turns tracing off and passes traceparent through untouched")
	fs.Func("gomaxprocs", gomaxprocs.FlagHelp+" (default auto)", func(v string) (err error) {
		o.procs, err = gomaxprocs.ParseFlag(v)
		return err
	})
	fs.BoolVar(&o.otlpInsecure, "otlp-insecure", false, "speak plaintext gRPC to --otlp-endpoint, as most in-cluster collectors on 4317 expect; without it, TLS verified against the system roots")
	fs.Float64Var(&o.traceSampling, "trace-sampling", 1, "percent (0-100) of requests without a caller's traceparent that start a sampled trace (Istio's default is 1); a caller's sampled flag is honoured whatever this says")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "debug, info, warn or error")
	o.podName = os.Getenv("POD_NAME")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q; every setting is a flag (see -help)", fs.Args())
	}
	if gateway == "" {
		return o, errors.New("--gateway NAMESPACE/NAME is required (or set POD_NAMESPACE and SERVICE_ACCOUNT, as the waypoint's Deployment does): the waypoint's Gateway, e.g. shop/waypoint")
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
	if err := checkTracing(o); err != nil {
		return o, err
	}
	if o.flowLogFlush < 0 {
		return o, fmt.Errorf("--flow-log-flush-interval %v: want 0 (write each record at once) or a positive duration", o.flowLogFlush)
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
	return o, nil
}

// defaultGateway is $POD_NAMESPACE/$SERVICE_ACCOUNT when both are set.
func defaultGateway() string {
	ns, sa := os.Getenv("POD_NAMESPACE"), os.Getenv("SERVICE_ACCOUNT")
	if ns == "" || sa == "" {
		return ""
	}
	return ns + "/" + sa
}

// checkConfigSource checks that exactly one config source is given and that
// the flags given belong to it; set holds the flags given explicitly. With
// --local-config the waypoint needs the CA the ztunnels trust.
func checkConfigSource(o options, set map[string]bool) error {
	if err := istiodconn.CheckSource(istiodconn.SourceFlags{
		LocalConfig: o.localConfig, XDSAddress: o.xdsAddress,
		CARootFile: o.caRootFile, TokenFile: o.tokenFile, XDSServerName: o.xdsServerName, Set: set,
	}); err != nil {
		return err
	}
	if o.xdsAddress == "" && (o.caCert == "" || o.caKey == "") {
		return errors.New("--ca-cert and --ca-key are required with --local-config: the waypoint's certificate must come from the CA the ztunnels trust")
	}
	return nil
}
