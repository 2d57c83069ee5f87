// Package clusterdns is the local cluster's DNS server, the documented
// alternative to CoreDNS: a small authoritative server (miekg/dns, UDP and
// TCP) for the cluster domain, fed by informers on Services and
// EndpointSlices. It answers what Kubernetes' DNS specification asks of a
// cluster DNS:
//
//	<svc>.<ns>.svc.<domain>          A/AAAA: the ClusterIPs; for a headless
//	                                 service the ready endpoints' addresses;
//	                                 CNAME for an ExternalName service
//	<host>.<svc>.<ns>.svc.<domain>   A/AAAA of the endpoint with that hostname
//	                                 (or, without one, its address with dashes:
//	                                 10-0-1-5)
//	_<port>._<proto>.<svc>.<ns>.svc.<domain>
//	                                 SRV for a named port: the service's name
//	                                 (ClusterIP) or each ready endpoint
//	                                 (headless), addresses in the additional
//	                                 section
//
// An unknown name in the domain gets NXDOMAIN with the zone's SOA in the
// authority section (a known name without records of the asked type,
// NOERROR and the SOA); every answer is authoritative with TTL 5s. Names
// match case-insensitively. Over UDP an answer that exceeds 512 bytes (or
// the client's EDNS0 size) is truncated with the TC bit, and the client
// retries over TCP.
//
// Names outside the cluster domain are REFUSED: the local cluster has no
// upstream resolver to forward to. A deployment on a real cluster would
// forward them (CoreDNS's forward plugin to the node's resolv.conf); this
// server is meant for the local cluster only, where pods resolve service
// names through it and nothing else. Pod records (<ip>.<ns>.pod.<domain>)
// and reverse (PTR) zones are not served.
//
// The decision is the pure function Answer over a View; Server is the
// shell: listeners, informers (slimmed by a transform) that keep an
// Index, /ready (200 once the informers have synced; until then every
// query gets SERVFAIL) and /metrics (clusterdns_queries_total by rcode).
package clusterdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Config configures a Server.
type Config struct {
	Client kubernetes.Interface
	// Domain is the cluster domain; default "cluster.local".
	Domain string
	// Listen is the DNS address for UDP and TCP; default ":53". Ignored
	// for a transport whose PacketConn or Listener is given.
	Listen     string
	PacketConn net.PacketConn // optional UDP socket
	Listener   net.Listener   // optional TCP listener
	// ReadyAddr serves /ready, MetricsAddr /metrics (both paths on each
	// when they are equal); empty: not served. HTTPListener, if set,
	// serves both instead.
	ReadyAddr, MetricsAddr string
	HTTPListener           net.Listener
	// Registry receives the metrics; default a new registry.
	Registry *prometheus.Registry
	Logger   *slog.Logger
}

// Server serves the cluster domain. Create it with New.
type Server struct {
	cfg     Config
	domain  string
	log     *slog.Logger
	index   *Index
	synced  atomic.Bool
	queries *prometheus.CounterVec
}

// New validates cfg and returns a server.
func New(cfg Config) (*Server, error) {
	if cfg.Client == nil {
		return nil, errors.New("clusterdns: Config.Client is required")
	}
	if cfg.Domain == "" {
		cfg.Domain = "cluster.local"
	}
	if _, ok := dns.IsDomainName(cfg.Domain); !ok {
		return nil, fmt.Errorf("clusterdns: bad domain %q", cfg.Domain)
	}
	if cfg.Listen == "" {
		cfg.Listen = ":53"
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:    cfg,
		domain: dns.Fqdn(strings.ToLower(cfg.Domain)),
		log:    cfg.Logger,
		index:  NewIndex(nil),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clusterdns_queries_total",
			Help: "DNS queries answered, by response code.",
		}, []string{"rcode"}),
	}
	if err := cfg.Registry.Register(s.queries); err != nil {
		return nil, fmt.Errorf("clusterdns: metrics: %w", err)
	}
	return s, nil
}

// Ready reports whether the informers have synced.
func (s *Server) Ready() bool { return s.synced.Load() }

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	var resp *dns.Msg
	if !s.Ready() {
		resp = new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
	} else {
		resp = Answer(req, tcp, s.domain, s.index)
	}
	s.queries.WithLabelValues(dns.RcodeToString[resp.Rcode]).Inc()
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("writing a DNS response", "err", err)
	}
}

// HTTPHandler serves /ready and /metrics.
func (s *Server) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if !s.Ready() {
			http.Error(w, "informers not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	return mux
}

// slim drops what DNS does not read from the informers' objects.
func slim(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
		m.SetAnnotations(nil)
		m.SetOwnerReferences(nil)
	}
	switch o := obj.(type) {
	case *v1.Service:
		o.Status = v1.ServiceStatus{}
		o.Spec.Selector = nil
	case *discoveryv1.EndpointSlice:
		for i := range o.Endpoints {
			o.Endpoints[i].TargetRef = nil
			o.Endpoints[i].DeprecatedTopology = nil
			o.Endpoints[i].Hints = nil
		}
	}
	return obj, nil
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, 0, informers.WithTransform(slim))
	svcInf := factory.Core().V1().Services().Informer()
	sliceInf := factory.Discovery().V1().EndpointSlices().Informer()
	if _, err := svcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.serviceChanged,
		UpdateFunc: func(_, o any) { s.serviceChanged(o) },
		DeleteFunc: s.serviceDeleted,
	}); err != nil {
		return fmt.Errorf("clusterdns: service informer: %w", err)
	}
	if _, err := sliceInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.sliceChanged,
		UpdateFunc: func(_, o any) { s.sliceChanged(o) },
		DeleteFunc: s.sliceDeleted,
	}); err != nil {
		return fmt.Errorf("clusterdns: endpointslice informer: %w", err)
	}

	pc, ln := s.cfg.PacketConn, s.cfg.Listener
	var err error
	if pc == nil {
		if pc, err = net.ListenPacket("udp", s.cfg.Listen); err != nil {
			return fmt.Errorf("clusterdns: listen udp %s: %w", s.cfg.Listen, err)
		}
	}
	if ln == nil {
		if ln, err = net.Listen("tcp", s.cfg.Listen); err != nil {
			pc.Close()
			return fmt.Errorf("clusterdns: listen tcp %s: %w", s.cfg.Listen, err)
		}
	}
	servers := []*dns.Server{
		{PacketConn: pc, Handler: s, UDPSize: dns.DefaultMsgSize},
		{Listener: ln, Handler: s, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second},
	}
	httpServers, err := s.httpServers()
	if err != nil {
		pc.Close()
		ln.Close()
		return err
	}

	factory.Start(ctx.Done())
	var wg sync.WaitGroup
	errs := make(chan error, len(servers)+len(httpServers))
	started := make(chan struct{}, len(servers))
	for _, srv := range servers {
		srv.NotifyStartedFunc = func() { started <- struct{}{} }
		wg.Go(func() { errs <- serveDNS(srv) })
	}
	for _, hs := range httpServers {
		wg.Go(func() { errs <- serveHTTP(hs.srv, hs.ln) })
	}
	wg.Go(func() {
		if cache.WaitForCacheSync(ctx.Done(), svcInf.HasSynced, sliceInf.HasSynced) {
			s.synced.Store(true)
			s.log.Info("informers synced: serving", "domain", s.domain, "dns", pc.LocalAddr())
		}
	})
	// Shutdown fails on a server not started yet: wait for both.
	var runErr error
	for range servers {
		select {
		case <-started:
		case runErr = <-errs:
		}
	}
	if runErr == nil {
		select {
		case <-ctx.Done():
		case runErr = <-errs:
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		_ = srv.ShutdownContext(sctx)
	}
	for _, hs := range httpServers {
		_ = hs.srv.Shutdown(sctx)
	}
	factory.Shutdown()
	wg.Wait()
	return runErr
}

type httpServer struct {
	srv *http.Server
	ln  net.Listener
}

func (s *Server) httpServers() ([]httpServer, error) {
	h := s.HTTPHandler()
	mk := func(ln net.Listener) httpServer {
		return httpServer{&http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}, ln}
	}
	if s.cfg.HTTPListener != nil {
		return []httpServer{mk(s.cfg.HTTPListener)}, nil
	}
	var out []httpServer
	for _, addr := range uniq(s.cfg.ReadyAddr, s.cfg.MetricsAddr) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, o := range out {
				o.ln.Close()
			}
			return nil, fmt.Errorf("clusterdns: listen %s: %w", addr, err)
		}
		out = append(out, mk(ln))
	}
	return out, nil
}

func uniq(addrs ...string) []string {
	var out []string
	for _, a := range addrs {
		if a != "" && (len(out) == 0 || out[0] != a) {
			out = append(out, a)
		}
	}
	return out
}

// serveDNS runs one DNS server until it is shut down.
func serveDNS(srv *dns.Server) error {
	if err := srv.ActivateAndServe(); err != nil && !strings.Contains(err.Error(), "closed") {
		return fmt.Errorf("clusterdns: dns server: %w", err)
	}
	return nil
}

// serveHTTP runs the readiness and metrics server until it is shut down.
func serveHTTP(srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("clusterdns: http server: %w", err)
	}
	return nil
}

func (s *Server) serviceChanged(obj any) {
	if svc, ok := obj.(*v1.Service); ok {
		if v, ok := ServiceFromAPI(svc); ok {
			s.index.SetService(v)
		}
	}
}

func (s *Server) serviceDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if svc, ok := obj.(*v1.Service); ok {
		s.index.DeleteService(svc.Namespace, svc.Name)
	}
}

func (s *Server) sliceChanged(obj any) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	if v, ok := SliceFromAPI(sl); ok {
		s.index.SetSlice(v)
	} else {
		s.index.DeleteSlice(sl.Namespace, sl.Name)
	}
}

func (s *Server) sliceDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if sl, ok := obj.(*discoveryv1.EndpointSlice); ok {
		s.index.DeleteSlice(sl.Namespace, sl.Name)
	}
}
