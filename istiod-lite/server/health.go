package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
)

// serveHTTP serves h on ln until ctx ends, then shuts down.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: readHeaderTimeout}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}
	return nil
}

// metricsHandler serves /metrics from the server's registry.
func (s *Server) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Timeout: 10 * time.Second}))
	return mux
}

// registerCAMetrics exports the CA's expiry as Istio does.
func (s *Server) registerCAMetrics(a *ca.Authority) {
	root := a.Bundle().X509Authorities()
	s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "citadel_server_root_cert_expiry_timestamp",
		Help: "The unix timestamp, in seconds, when the CA's first root certificate expires.",
	}, func() float64 { return float64(root[0].NotAfter.Unix()) }))
	s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "citadel_server_cert_chain_expiry_timestamp",
		Help: "The unix timestamp, in seconds, when the CA's signing certificate expires.",
	}, func() float64 { return float64(a.Certificate().NotAfter.Unix()) }))
}

// notReady returns why the server is not ready, or nothing.
func (s *Server) notReady() []string {
	s.mu.Lock()
	ctrl, cache, serving := s.ctrl, s.cache, s.serving
	s.mu.Unlock()
	if ctrl == nil {
		return []string{"CA not loaded yet"}
	}
	var why []string
	if !serving {
		why = append(why, "gRPC listener not serving")
	}
	select {
	case <-ctrl.Synced():
		if cache.Len(xds.TypeAddress) == 0 {
			why = append(why, "xDS cache empty")
		}
	default:
		why = append(why, "informers not synced")
	}
	return why
}

// serveReady answers GET /ready: 200 "ok" when ready, else 503 with the
// reasons.
func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/ready" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if why := s.notReady(); len(why) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s\n", strings.Join(why, "; "))
		return
	}
	fmt.Fprintln(w, "ok")
}
