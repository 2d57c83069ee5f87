// Package admin serves ztunnel's local HTTP endpoints, each on a listener
// the caller provides:
//
//	admin (127.0.0.1:15000)
//	  GET /config_dump         the mesh state and certificates, in the JSON
//	                           shape of Istio ztunnel's config dump, so
//	                           `istioctl ztunnel-config` reads it: top-level
//	                           workloads, services, policies, certificates
//	  GET /debug/connections   the served pods, their open connections and
//	                           pooled tunnels (with RTT, congestion window
//	                           and loss as the transport measures them)
//	  GET /debug/flows         flow records as JSON lines (the flow log's
//	                           format): the last ones kept, then with
//	                           ?follow=1 live ones; ?history=N keeps the
//	                           last N (see FlowsHandler)
//	  GET /ready               as /healthz/ready
//	metrics (:15020)
//	  GET /metrics             Prometheus text from the injected Gatherer
//	readiness (:15021)
//	  GET /healthz/ready       200 once ztunnel is ready, 503 before
//
// The handlers read everything through a [Source], so tests use small fakes
// or a real state.Store; [NewSource] adapts a running ztunnel.
package admin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/certs"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/ztunnel"
)

// Source is what the admin handlers read.
type Source interface {
	// Ready reports whether ztunnel has config and serves every enrolled pod.
	Ready() bool
	// Debug lists the served pods and their open connections.
	Debug() ztunnel.DebugSnapshot
	// View is the current mesh state.
	View() *state.View
	// Certificates is each held identity's certificate state.
	Certificates() []Certificate
}

// NewSource adapts a ztunnel, its store and its certificate manager.
func NewSource(z *ztunnel.Ztunnel, store *state.Store, m *certs.Manager) Source {
	return &source{z: z, store: store, certs: m}
}

type source struct {
	z     *ztunnel.Ztunnel
	store *state.Store
	certs *certs.Manager
}

func (s *source) Ready() bool                  { return s.z.Ready() }
func (s *source) Debug() ztunnel.DebugSnapshot { return s.z.Debug() }
func (s *source) View() *state.View            { return s.store.Current() }
func (s *source) Certificates() []Certificate  { return ManagerCertificates(s.certs) }

// ManagerCertificates describes the identities m holds, sorted by identity:
// the current certificate chain (leaf, intermediates, then the trust
// domain's roots) of each, or why there is none.
func ManagerCertificates(m *certs.Manager) []Certificate {
	ids := m.Identities()
	slices.SortFunc(ids, func(a, b spiffeid.ID) int { return cmp.Compare(a.String(), b.String()) })
	out := make([]Certificate, 0, len(ids))
	for _, id := range ids {
		c := Certificate{Identity: id.String(), State: "Initializing", CertChain: []Cert{}}
		src, ok := m.Source(id)
		if !ok {
			out = append(out, c)
			continue
		}
		svid, err := src.GetX509SVID()
		if err != nil {
			c.State = "Unavailable: " + err.Error()
			out = append(out, c)
			continue
		}
		c.State = "Available"
		for _, cert := range svid.Certificates {
			c.CertChain = append(c.CertChain, NewCert(cert))
		}
		if b, err := src.GetX509BundleForTrustDomain(id.TrustDomain()); err == nil {
			for _, root := range b.X509Authorities() {
				c.CertChain = append(c.CertChain, NewCert(root))
			}
		}
		out = append(out, c)
	}
	return out
}

// AdminHandler serves /config_dump, /debug/connections and /ready.
func AdminHandler(src Source) http.Handler { return adminMux(src, nil, nil) }

// adminMux is AdminHandler plus /debug/flows when flows is set.
func adminMux(src Source, flows *telemetry.Feed, stop <-chan struct{}) *http.ServeMux {
	mux := http.NewServeMux()
	if flows != nil {
		mux.Handle("GET /debug/flows", FlowsHandler(flows, stop))
	}
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, BuildDump(src.View(), src.Certificates()))
	})
	mux.HandleFunc("GET /debug/connections", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, src.Debug())
	})
	mux.Handle("GET /ready", ReadyHandler(src))
	// Profiles, as Istio's ztunnel offers on its localhost admin port.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// Readiness is what ReadyHandler needs; *ztunnel.Ztunnel satisfies it.
type Readiness interface{ Ready() bool }

// ReadyHandler answers 200 when r is ready and 503 otherwise.
func ReadyHandler(r Readiness) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !r.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
}

// ReadinessHandler serves /healthz/ready.
func ReadinessHandler(r Readiness) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /healthz/ready", ReadyHandler(r))
	return mux
}

// MetricsHandler serves /metrics from g.
func MetricsHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, "admin: encoding: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

// Config configures a Server. Each listener is optional: a nil one is not
// served.
type Config struct {
	// Admin serves AdminHandler (127.0.0.1:15000 in production).
	Admin net.Listener
	// Metrics serves MetricsHandler (:15020).
	Metrics net.Listener
	// Readiness serves ReadinessHandler (:15021).
	Readiness net.Listener
	// Source is what the handlers read. Required.
	Source Source
	// Flows, when set, is served as /debug/flows on the admin listener;
	// the FlowLog of the ztunnel publishes to it.
	Flows *telemetry.Feed
	// Gatherer provides /metrics; required when Metrics is set.
	Gatherer prometheus.Gatherer
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Server serves the three endpoints until its context ends.
type Server struct {
	cfg Config
}

// New checks cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("admin: Source is required")
	}
	if cfg.Metrics != nil && cfg.Gatherer == nil {
		return nil, errors.New("admin: a Gatherer is required to serve metrics")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg}, nil
}

// shutdownTimeout bounds how long in-flight requests may finish.
const shutdownTimeout = 2 * time.Second

// Run serves on every configured listener until ctx ends, then shuts the
// servers down and closes the listeners. It returns the first serving error
// other than the shutdown itself.
func (s *Server) Run(ctx context.Context) error {
	type served struct {
		ln net.Listener
		h  http.Handler
	}
	var all []served
	stop := make(chan struct{}) // closed at shutdown: ends /debug/flows streams
	if s.cfg.Admin != nil {
		all = append(all, served{s.cfg.Admin, adminMux(s.cfg.Source, s.cfg.Flows, stop)})
	}
	if s.cfg.Metrics != nil {
		all = append(all, served{s.cfg.Metrics, MetricsHandler(s.cfg.Gatherer)})
	}
	if s.cfg.Readiness != nil {
		all = append(all, served{s.cfg.Readiness, ReadinessHandler(s.cfg.Source)})
	}
	errs := make(chan error, len(all))
	var wg sync.WaitGroup
	servers := make([]*http.Server, 0, len(all))
	for _, a := range all {
		srv := &http.Server{
			Handler:           a.h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
		}
		servers = append(servers, srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveHTTP(srv, a.ln, errs)
		}()
		s.cfg.Logger.Info("admin: serving", "addr", a.ln.Addr().String())
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	close(stop)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	for _, srv := range servers {
		srv.Shutdown(sctx)
	}
	wg.Wait()
	return err
}

// serveHTTP is one listener's serving goroutine, named for stack dumps.
func serveHTTP(srv *http.Server, ln net.Listener, errs chan<- error) {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		errs <- err
	}
}
