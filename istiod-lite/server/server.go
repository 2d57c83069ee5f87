// Package server assembles istiod-lite: it loads the mesh CA from its
// Secret (package rootca), publishes the root ConfigMaps, and serves on one
// TLS 1.3 gRPC port (15012) both the CA (package caserver) and the Delta ADS
// workload API (package xds, fed by package controller), plus Prometheus
// metrics and a readiness endpoint over plain HTTP.
//
// The gRPC serving certificate is issued by the mesh CA itself (package
// servingcert) for istiod.<ns>.svc, istiod.<ns>.svc.cluster.local and any
// extra names, and renewed at half life, so clients verify it against the
// published istio-ca-root-cert. Every xDS stream must present a node-proxy
// ServiceAccount token (package grpcauth); the CA authenticates its own
// calls.
//
// Unless disabled, it also runs the waypoint deployment controller (package
// waypointctl), which turns Gateways of class istio-waypoint into waypoint
// Deployments dialling istiod.<ns>.svc:15012.
//
// Every replica serves the CA and xDS; the writers (the root ConfigMap
// publisher, the waypoint deployment controller and status) run on the one
// replica elected with a Lease (package leader), anew in each term, so
// replicas and rolling updates never have two writers. Readiness does not
// wait for the election.
//
// Readiness (GET /ready on the ready address) answers 200 only once the CA
// is loaded, the gRPC listener serves, the informers have synced and the xDS
// cache holds the first translation; otherwise 503 with the reasons.
//
// Lifecycle: [New] checks the Config; [Server.Run] binds every listener,
// loads the CA (failing closed on broken CA Secrets), starts everything and
// serves until ctx ends. Any component failing stops the others and its
// error is returned.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/istiod-lite/caserver"
	"github.com/ambientmesh/ambient/istiod-lite/controller"
	"github.com/ambientmesh/ambient/istiod-lite/grpcauth"
	"github.com/ambientmesh/ambient/istiod-lite/leader"
	"github.com/ambientmesh/ambient/istiod-lite/rootca"
	"github.com/ambientmesh/ambient/istiod-lite/servingcert"
	"github.com/ambientmesh/ambient/istiod-lite/translate"
	"github.com/ambientmesh/ambient/istiod-lite/waypointctl"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// Defaults of [Config].
const (
	DefaultNamespace      = "istio-system"
	DefaultGRPCAddr       = ":15012"
	DefaultMonitoringAddr = ":15014"
	DefaultReadyAddr      = ":8080"
	// DefaultServingCertTTL is the lifetime of the gRPC serving certificate.
	DefaultServingCertTTL = 24 * time.Hour
)

// Bounds of the listeners.
const (
	handshakeTimeout  = 10 * time.Second
	maxStreamsPerConn = 100
	shutdownGrace     = 3 * time.Second
	readHeaderTimeout = 5 * time.Second
	kubeTimeout       = 10 * time.Second
)

// Config configures istiod-lite.
type Config struct {
	// RESTConfig reaches the apiserver. Required.
	RESTConfig *rest.Config
	// Namespace is istiod-lite's own namespace: it holds the CA Secrets and
	// the root ConfigMap and names the serving certificate. Default
	// istio-system.
	Namespace string
	// TrustDomain of workload identities. Required.
	TrustDomain spiffeid.TrustDomain
	// ClusterID and RootNamespace configure the translation (see package
	// translate and controller).
	ClusterID, RootNamespace string
	// DefaultTunnelTransport is the tunnel transport of captured pods that
	// neither they nor their namespace annotate (translate.Config); H2 by
	// default.
	DefaultTunnelTransport workloadapi.TunnelTransport
	// NodeProxies may impersonate workloads at the CA and read xDS; nil
	// means istio-system/ztunnel.
	NodeProxies []identity.Workload
	// ExtraSANs are DNS names or IP addresses added to the serving
	// certificate.
	ExtraSANs []string
	// ServingCertTTL defaults to DefaultServingCertTTL.
	ServingCertTTL time.Duration
	// CAOptions tune the CA (leaf TTLs, root TTL of a new root).
	CAOptions ca.Options
	// Listen addresses; defaults above.
	GRPCAddr, MonitoringAddr, ReadyAddr string
	// RootCertOut, if set, receives the root certificate(s) as PEM.
	RootCertOut string
	// WaypointImage is the image of waypoint Deployments; default
	// waypointctl.DefaultImage. DisableWaypoints turns the waypoint
	// deployment controller off.
	WaypointImage    string
	DisableWaypoints bool
	// WaypointTracing is passed to every waypoint (OpenTelemetry over
	// OTLP; off without an endpoint).
	WaypointTracing waypointctl.Tracing
	// LeaderElection configures the election of the one replica that
	// writes (package leader): the Lease's name and timing, and this
	// replica's identity; Client, Namespace and Logger are filled in.
	// DisableLeaderElection makes this replica write without one: run only
	// one replica then.
	LeaderElection        leader.Config
	DisableLeaderElection bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Listening, if not nil, is called with the bound addresses once every
	// listener is bound and /ready answers, before the CA is loaded. Run
	// waits for it to return.
	Listening func(Addrs)
}

// Addrs are the bound listen addresses.
type Addrs struct {
	GRPC, Monitoring, Ready net.Addr
}

// Server is istiod-lite.
type Server struct {
	cfg Config
	log *slog.Logger
	reg *prometheus.Registry

	// mu guards the fields below, set as Run progresses.
	mu      sync.Mutex
	started bool
	ctrl    *controller.Controller
	cache   *xds.Cache
	serving bool
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Server, error) {
	if cfg.RESTConfig == nil {
		return nil, errors.New("server: Config.RESTConfig is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("server: Config.TrustDomain is required")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.GRPCAddr == "" {
		cfg.GRPCAddr = DefaultGRPCAddr
	}
	if cfg.MonitoringAddr == "" {
		cfg.MonitoringAddr = DefaultMonitoringAddr
	}
	if cfg.ReadyAddr == "" {
		cfg.ReadyAddr = DefaultReadyAddr
	}
	if cfg.ServingCertTTL <= 0 {
		cfg.ServingCertTTL = DefaultServingCertTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Server{cfg: cfg, log: cfg.Logger, reg: reg}, nil
}

// ServingNames are the serving certificate's SANs for namespace ns.
func ServingNames(ns string, extra []string) []string {
	return append([]string{"istiod." + ns + ".svc", "istiod." + ns + ".svc.cluster.local"}, extra...)
}

// Run serves until ctx ends; see the package doc. It may be called once.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	started := s.started
	s.started = true
	s.mu.Unlock()
	if started {
		return errors.New("server: Run called twice; build a new Server")
	}
	g := newGroup(ctx, "server: ")
	defer g.stop()

	grpcLn, err := net.Listen("tcp", s.cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("server: listen on --grpc-addr %s: %w", s.cfg.GRPCAddr, err)
	}
	defer grpcLn.Close()
	monLn, err := net.Listen("tcp", s.cfg.MonitoringAddr)
	if err != nil {
		return fmt.Errorf("server: listen on --monitoring-addr %s: %w", s.cfg.MonitoringAddr, err)
	}
	readyLn, err := net.Listen("tcp", s.cfg.ReadyAddr)
	if err != nil {
		monLn.Close()
		return fmt.Errorf("server: listen on --ready-addr %s: %w", s.cfg.ReadyAddr, err)
	}
	g.run("monitoring", func(ctx context.Context) error { return serveHTTP(ctx, monLn, s.metricsHandler()) })
	g.run("ready", func(ctx context.Context) error { return serveHTTP(ctx, readyLn, http.HandlerFunc(s.serveReady)) })
	if s.cfg.Listening != nil {
		s.cfg.Listening(Addrs{GRPC: grpcLn.Addr(), Monitoring: monLn.Addr(), Ready: readyLn.Addr()})
	}

	kube, err := kubernetes.NewForConfig(s.cfg.RESTConfig)
	if err != nil {
		return fmt.Errorf("server: kubernetes client for %s: %w", s.cfg.RESTConfig.Host, err)
	}
	authority, src, err := rootca.Load(g.ctx, rootca.Config{
		Client: kube, Namespace: s.cfg.Namespace, TrustDomain: s.cfg.TrustDomain, Options: s.cfg.CAOptions, Logger: s.log,
	})
	if err != nil {
		return err
	}
	s.log.Info("server: CA loaded", "source", string(src), "trustDomain", s.cfg.TrustDomain.String())
	if s.cfg.RootCertOut != "" {
		if err := rootca.WriteFile(s.cfg.RootCertOut, authority.RootsPEM()); err != nil {
			return fmt.Errorf("server: --root-cert-out: %w", err)
		}
	}
	s.registerCAMetrics(authority)
	var elector *leader.Elector
	if !s.cfg.DisableLeaderElection {
		ec := s.cfg.LeaderElection
		ec.Client, ec.Namespace, ec.Logger = kube, s.cfg.Namespace, s.log
		if elector, err = leader.New(ec); err != nil {
			return fmt.Errorf("server: %w", err)
		}
		s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "leader_election_master_status",
			Help:        "1 while this replica holds the Lease and runs the writers, else 0 (as Kubernetes components report it).",
			ConstLabels: prometheus.Labels{"name": elector.Name()},
		}, func() float64 {
			if elector.Leading() {
				return 1
			}
			return 0
		}))
	}
	certs, err := servingcert.New(servingcert.Config{
		Authority: authority, Names: ServingNames(s.cfg.Namespace, s.cfg.ExtraSANs), TTL: s.cfg.ServingCertTTL, Logger: s.log,
	})
	if err != nil {
		return err
	}
	var leading func() bool
	if elector != nil {
		leading = elector.Leading
	}
	gs, ctrl, err := s.buildServices(authority, certs, leading)
	if err != nil {
		return err
	}
	writers := func(ctx context.Context) error { return s.runWriters(ctx, kube, authority, ctrl) }
	if elector != nil {
		g.run("leader election", func(ctx context.Context) error { return elector.Run(ctx, writers) })
	} else {
		g.run("writers", writers)
	}
	g.run("controller", ctrl.Run)
	g.run("serving certificate", certs.Run)
	g.run("grpc", func(ctx context.Context) error { return s.serveGRPC(ctx, gs, grpcLn) })
	s.log.Info("server: serving", "grpc", grpcLn.Addr().String(), "monitoring", monLn.Addr().String(), "ready", readyLn.Addr().String())
	<-g.ctx.Done()
	return g.wait()
}

// runWriters runs what writes to the cluster, on one replica at a time
// (package leader): the root ConfigMap publisher, the waypoint deployment
// controller and, through ctrl, status. Each term builds them anew. It
// returns when ctx ends (nil) or one of them fails.
func (s *Server) runWriters(ctx context.Context, kube kubernetes.Interface, authority *ca.Authority, ctrl *controller.Controller) error {
	publisher, err := rootca.NewPublisher(rootca.PublisherConfig{Client: kube, Namespace: s.cfg.Namespace, AllNamespaces: true, RootsPEM: authority.RootsPEM(), Logger: s.log})
	if err != nil {
		return err
	}
	g := newGroup(ctx, "")
	g.run("root publisher", publisher.Run)
	if !s.cfg.DisableWaypoints {
		wctl, err := s.waypointController()
		if err != nil {
			g.stop()
			return err
		}
		g.run("waypoint controller", wctl.Run)
	}
	ctrl.Resync() // the status a predecessor left
	<-g.ctx.Done()
	if err := g.wait(); err != nil && ctx.Err() == nil {
		return err
	}
	return nil // the term ended: an informer cut off while syncing is no failure
}

// buildServices builds the TLS gRPC server carrying the CA and xDS
// services, and the controller that feeds the xDS cache; leading, if not
// nil, says when it writes status.
func (s *Server) buildServices(authority *ca.Authority, certs *servingcert.Source, leading func() bool) (*grpc.Server, *controller.Controller, error) {
	k, err := newKube(s.cfg.RESTConfig)
	if err != nil {
		return nil, nil, err
	}
	authn := &caserver.TokenReviewer{Kube: k}
	caMetrics, err := caserver.NewPrometheusMetrics(s.reg)
	if err != nil {
		return nil, nil, fmt.Errorf("server: CA metrics: %w", err)
	}
	caSrv, err := caserver.New(caserver.Config{
		Authority: authority, Authenticator: authn, Pods: &caserver.KubePods{Kube: k},
		NodeProxies: s.cfg.NodeProxies, Logger: s.log, Metrics: caMetrics,
	})
	if err != nil {
		return nil, nil, err
	}
	xdsMetrics, err := xds.NewPrometheusMetrics(s.reg)
	if err != nil {
		return nil, nil, fmt.Errorf("server: xds metrics: %w", err)
	}
	cache := xds.NewCache()
	ctrl, err := controller.New(controller.Config{
		RESTConfig: s.cfg.RESTConfig,
		Cache:      cache,
		Translate: translate.Config{TrustDomain: s.cfg.TrustDomain.Name(), ClusterID: s.cfg.ClusterID,
			DefaultTunnelTransport: s.cfg.DefaultTunnelTransport},
		RootNamespace: s.cfg.RootNamespace,
		Logger:        s.log,
		Leading:       leading,
	})
	if err != nil {
		return nil, nil, err
	}
	// Streams wait for the first translation, so that a ztunnel that
	// reconnects to a replica just started keeps what it holds.
	xdsSrv, err := xds.New(xds.Config{Cache: cache, Logger: s.log, Metrics: xdsMetrics, Ready: ctrl.Synced()})
	if err != nil {
		return nil, nil, err
	}
	auth, err := grpcauth.StreamInterceptor(grpcauth.Config{Authenticator: authn, NodeProxies: s.cfg.NodeProxies,
		IsWaypoint: ctrl.IsWaypoint, Logger: s.log})
	if err != nil {
		return nil, nil, err
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: certs.GetCertificate}
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.ConnectionTimeout(handshakeTimeout),
		grpc.MaxConcurrentStreams(maxStreamsPerConn),
		grpc.ChainStreamInterceptor(auth),
		// As Istio's: clients may ping every 15 s, even without streams.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	caSrv.Register(gs)
	xdsSrv.Register(gs)
	s.mu.Lock()
	s.ctrl, s.cache = ctrl, cache
	s.mu.Unlock()
	return gs, ctrl, nil
}

// waypointController builds the waypoint deployment controller: waypoints
// reach this istiod-lite through its Service istiod (port 15012) and verify
// the serving certificate's first name.
func (s *Server) waypointController() (*waypointctl.Controller, error) {
	name := ServingNames(s.cfg.Namespace, nil)[0]
	clusterID := s.cfg.ClusterID
	if clusterID == "" {
		clusterID = "Kubernetes"
	}
	return waypointctl.New(waypointctl.Config{
		RESTConfig: s.cfg.RESTConfig,
		Template: waypointctl.Template{
			Image:         s.cfg.WaypointImage,
			XDSAddress:    name + ":15012",
			XDSServerName: name,
			TrustDomain:   s.cfg.TrustDomain.Name(),
			ClusterID:     clusterID,
			Tracing:       s.cfg.WaypointTracing,
		},
		Logger: s.log,
	})
}

// serveGRPC serves ln until ctx ends, then stops gracefully, cutting off
// streams (xDS streams never end by themselves) after shutdownGrace.
func (s *Server) serveGRPC(ctx context.Context, gs *grpc.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	s.mu.Lock()
	s.serving = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.serving = false
		s.mu.Unlock()
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownGrace):
		gs.Stop()
		<-stopped
	}
	<-errc
	return nil
}

// newKube returns the caserver REST client for the same apiserver and
// credentials as rc.
func newKube(rc *rest.Config) (*caserver.Kube, error) {
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("server: HTTP client for %s: %w", rc.Host, err)
	}
	hc.Timeout = kubeTimeout
	host := rc.Host
	if !strings.Contains(host, "://") {
		host = "https://" + host
	}
	return &caserver.Kube{Server: strings.TrimSuffix(host, "/"), HTTPClient: hc}, nil
}

// group runs long-lived components under one context: the first to return
// cancels the others, and wait returns the first error.
type group struct {
	prefix string // of every error, before the component's name
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// mu guards err.
	mu  sync.Mutex
	err error
}

func newGroup(ctx context.Context, prefix string) *group {
	ctx, cancel := context.WithCancel(ctx)
	return &group{prefix: prefix, ctx: ctx, cancel: cancel}
}

// run starts f; its error is prefixed with the group's prefix and name.
func (g *group) run(name string, f func(context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer g.cancel()
		if err := f(g.ctx); err != nil {
			g.mu.Lock()
			if g.err == nil {
				g.err = fmt.Errorf("%s%s: %w", g.prefix, name, err)
			}
			g.mu.Unlock()
		}
	}()
}

// wait waits for every component to return, and returns the first error.
func (g *group) wait() error {
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// stop cancels every component and waits for them.
func (g *group) stop() {
	g.cancel()
	g.wg.Wait()
}
