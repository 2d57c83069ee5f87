// Command istiod-lite is the ambient mesh's control plane (package
// istiod-lite/server): the mesh CA and the workload API for every ztunnel,
// both on one TLS 1.3 gRPC port.
//
//	istiod-lite [--kubeconfig PATH] [--namespace istio-system]
//	            [--grpc-addr :15012] [--monitoring-addr :15014] [--ready-addr :8080]
//	            [--tls-san NAME-OR-IP]... [--node-proxy NS/SA]... [--root-cert-out PATH]
//	            [--root-namespace istio-system] [--trust-domain cluster.local]
//	            [--cluster-id Kubernetes] [--waypoint-image ambient/waypoint:dev]
//	            [--waypoint-controller=true] [--waypoint-otlp-endpoint HOST:PORT]
//	            [--waypoint-otlp-insecure] [--waypoint-trace-sampling 1]
//	            [--default-tunnel-transport h2] [--leader-elect=true]
//	            [--leader-elect-lease-duration 15s] [--leader-elect-renew-deadline 10s]
//	            [--leader-elect-retry-period 2s] [--log-level info]
//
// At start it loads the CA from Secret "cacerts" in --namespace (Istio's
// plug-in CA; refusing to start if it is malformed), else from
// "istio-ca-secret", which it creates with a new self-signed root when
// missing, and publishes the root in ConfigMap "istio-ca-root-cert".
//
// The gRPC port serves istio.v1.auth.IstioCertificateService and Delta ADS
// with a certificate for istiod.<namespace>.svc (and
// .svc.cluster.local, plus every --tls-san) issued by that CA. Both require
// a ServiceAccount token ("authorization: Bearer ...", audience istio-ca);
// xDS additionally requires a node-proxy account (default
// istio-system/ztunnel). Prometheus metrics are on --monitoring-addr
// /metrics; GET /ready on --ready-addr answers 200 once the CA, the gRPC
// listener and the first cluster sync are in place.
//
// It also deploys each Gateway of class istio-waypoint as a waypoint
// (ServiceAccount, Deployment of --waypoint-image, Service) and writes the
// Gateway's status, as Istio's deployment controller does;
// --waypoint-controller=false turns that off. --waypoint-otlp-endpoint,
// --waypoint-otlp-insecure and --waypoint-trace-sampling are passed to
// every waypoint as its --otlp-endpoint, --otlp-insecure and
// --trace-sampling (OpenTelemetry spans over OTLP/gRPC; off by default).
//
// --default-tunnel-transport (h2 or quic) is the tunnel transport of
// captured pods when neither the pod nor its namespace has the annotation
// ambientmesh.io/tunnel-transport (same values; see istiod-lite/translate).
//
// Every replica serves the CA and xDS. What writes to the cluster (the
// root ConfigMaps, the waypoints and status) runs on one replica at a
// time, elected with Lease istiod-lite-leader in --namespace (package
// istiod-lite/leader), so istiod-lite can run several replicas and roll
// updates without two writers; --leader-elect=false writes without an
// election, for a single replica.
//
// --namespace defaults to $POD_NAMESPACE, else istio-system. This
// replica's identity in the Lease is $POD_NAME, else the host name and
// pid. Without --kubeconfig (and without $KUBECONFIG) it uses the
// in-cluster configuration. --xds-addr is a deprecated alias of
// --grpc-addr. Logs, client-go's included, are JSON on stderr. SIGINT or
// SIGTERM stops everything and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/istiod-lite/controller"
	"github.com/ambientmesh/ambient/istiod-lite/leader"
	"github.com/ambientmesh/ambient/istiod-lite/server"
	"github.com/ambientmesh/ambient/istiod-lite/translate"
	"github.com/ambientmesh/ambient/istiod-lite/waypointctl"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

type options struct {
	kubeconfig     string
	namespace      string
	grpcAddr       string
	monitoringAddr string
	readyAddr      string
	tlsSANs        []string
	nodeProxies    []identity.Workload
	rootCertOut    string
	rootNamespace  string
	trustDomain    string
	clusterID      string
	waypointImage  string
	waypoints      bool
	logLevel       slog.Level
	// defaultTransport is the tunnel transport of pods that neither they
	// nor their namespace annotate (ambientmesh.io/tunnel-transport).
	defaultTransport workloadapi.TunnelTransport

	// Passed to every waypoint: OpenTelemetry tracing.
	waypointTracing waypointctl.Tracing

	// leaderElect elects the replica that writes; election holds the
	// Lease's timing.
	leaderElect bool
	election    leader.Config
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	o := options{namespace: os.Getenv("POD_NAMESPACE"), election: leader.Config{Identity: os.Getenv("POD_NAME")}}
	if o.namespace == "" {
		o.namespace = server.DefaultNamespace
	}
	fs := flag.NewFlagSet("istiod-lite", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig `path`; empty: in-cluster config")
	fs.StringVar(&o.namespace, "namespace", o.namespace, "istiod-lite's `namespace`: CA Secrets, root ConfigMap, serving certificate name (default $POD_NAMESPACE or istio-system)")
	fs.StringVar(&o.grpcAddr, "grpc-addr", server.DefaultGRPCAddr, "listen `address` of the TLS gRPC server (CA and xDS)")
	fs.Func("xds-addr", "deprecated alias of --grpc-addr", func(s string) error { o.grpcAddr = s; return nil })
	fs.StringVar(&o.monitoringAddr, "monitoring-addr", server.DefaultMonitoringAddr, "listen `address` of Prometheus /metrics")
	fs.StringVar(&o.readyAddr, "ready-addr", server.DefaultReadyAddr, "listen `address` of GET /ready")
	fs.Func("tls-san", "extra DNS `name or IP` in the gRPC serving certificate (repeatable)", func(s string) error {
		if s == "" {
			return errors.New("empty name")
		}
		o.tlsSANs = append(o.tlsSANs, s)
		return nil
	})
	fs.Func("node-proxy", "`namespace/serviceaccount` of node proxies allowed xDS and impersonation (repeatable; default istio-system/ztunnel)", func(s string) error {
		ns, sa, ok := strings.Cut(s, "/")
		if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
			return fmt.Errorf("%q is not namespace/serviceaccount", s)
		}
		o.nodeProxies = append(o.nodeProxies, identity.Workload{Namespace: ns, ServiceAccount: sa})
		return nil
	})
	fs.StringVar(&o.rootCertOut, "root-cert-out", "", "if set, write the root certificate(s) as PEM to this `file`")
	fs.StringVar(&o.rootNamespace, "root-namespace", controller.DefaultRootNamespace, "`namespace` of mesh-wide policies")
	fs.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "trust `domain` of workload identities")
	fs.StringVar(&o.clusterID, "cluster-id", "Kubernetes", "cluster `id` in workload uids")
	fs.StringVar(&o.waypointImage, "waypoint-image", waypointctl.DefaultImage, "`image` of the waypoint Deployments istiod-lite creates")
	fs.BoolVar(&o.waypoints, "waypoint-controller", true, "deploy Gateways of class istio-waypoint as waypoints (false: leave them alone)")
	fs.StringVar(&o.waypointTracing.OTLPEndpoint, "waypoint-otlp-endpoint", "", "OpenTelemetry collector `host:port` (OTLP/gRPC) every waypoint exports its request spans to (the waypoints' --otlp-endpoint); empty: tracing off")
	fs.BoolVar(&o.waypointTracing.OTLPInsecure, "waypoint-otlp-insecure", false, "waypoints speak plaintext gRPC to --waypoint-otlp-endpoint (their --otlp-insecure); without it TLS")
	fs.Float64Var(&o.waypointTracing.SamplingPercent, "waypoint-trace-sampling", 1, "`percent` (0-100) of requests without a caller's traceparent that start a sampled trace at the waypoints (their --trace-sampling; Istio's default is 1)")
	fs.Func("default-tunnel-transport", "tunnel `transport` (h2 or quic) of captured pods that neither they nor their namespace annotate with "+translate.AnnotationTunnelTransport+" (default h2; QUIC falls back to h2 where blocked)", func(s string) error {
		t, err := translate.ParseTunnelTransport(s)
		o.defaultTransport = t
		return err
	})
	fs.BoolVar(&o.leaderElect, "leader-elect", true, "elect, with Lease "+leader.DefaultName+" in --namespace, the one replica that writes root ConfigMaps, waypoints and status (false: this replica writes; run only one)")
	fs.DurationVar(&o.election.LeaseDuration, "leader-elect-lease-duration", leader.DefaultLeaseDuration, "`duration` after which a leader that stopped renewing is replaced")
	fs.DurationVar(&o.election.RenewDeadline, "leader-elect-renew-deadline", leader.DefaultRenewDeadline, "`duration` the leader retries renewing before it stops writing")
	fs.DurationVar(&o.election.RetryPeriod, "leader-elect-retry-period", leader.DefaultRetryPeriod, "`duration` between attempts to acquire or renew the Lease")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "log `level` (debug, info, warn, error)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if _, err := spiffeid.TrustDomainFromString(o.trustDomain); err != nil {
		return o, fmt.Errorf("--trust-domain %q: %w", o.trustDomain, err)
	}
	if o.namespace == "" {
		return o, errors.New("--namespace is empty")
	}
	if o.waypoints && o.waypointImage == "" {
		return o, errors.New("--waypoint-image is empty")
	}
	if e := o.election; o.leaderElect && !(e.RetryPeriod > 0 && e.RenewDeadline > e.RetryPeriod && e.LeaseDuration > e.RenewDeadline) {
		return o, fmt.Errorf("--leader-elect-lease-duration %v, --leader-elect-renew-deadline %v, --leader-elect-retry-period %v: want lease duration > renew deadline > retry period > 0",
			e.LeaseDuration, e.RenewDeadline, e.RetryPeriod)
	}
	if p := o.waypointTracing.SamplingPercent; math.IsNaN(p) || p < 0 || p > 100 {
		return o, fmt.Errorf("--waypoint-trace-sampling %v: want a percentage from 0 to 100 (Istio's default is 1)", p)
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
	// client-go's own logs (the leader election's, the informers'), JSON too.
	klog.SetSlogLogger(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, log, nil); err != nil {
		log.Error("istiod-lite: exiting", "err", err)
		os.Exit(1)
	}
}

// run serves until ctx ends. listening, if not nil, receives the bound
// addresses before the CA is loaded (see server.Config.Listening).
func run(ctx context.Context, o options, log *slog.Logger, listening func(server.Addrs)) error {
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
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %w", o.trustDomain, err)
	}
	srv, err := server.New(server.Config{
		RESTConfig:             rc,
		Namespace:              o.namespace,
		TrustDomain:            td,
		ClusterID:              o.clusterID,
		RootNamespace:          o.rootNamespace,
		DefaultTunnelTransport: o.defaultTransport,
		NodeProxies:            o.nodeProxies,
		ExtraSANs:              o.tlsSANs,
		GRPCAddr:               o.grpcAddr,
		MonitoringAddr:         o.monitoringAddr,
		ReadyAddr:              o.readyAddr,
		RootCertOut:            o.rootCertOut,
		WaypointImage:          o.waypointImage,
		DisableWaypoints:       !o.waypoints,
		WaypointTracing:        o.waypointTracing,
		LeaderElection:         o.election,
		DisableLeaderElection:  !o.leaderElect,
		Logger:                 log,
		Listening:              listening,
	})
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}
