package main

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/ambientmesh/ambient/internal/caclient"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/xdsclient"
	"github.com/ambientmesh/ambient/ztunnel/admin"
)

// istiod is ztunnel's link to istiod-lite: the xDS client feeding the store
// and the CA client signing pod certificates.
type istiod struct {
	xds    *xdsclient.Client
	ca     *caclient.Client
	caConn *grpc.ClientConn
}

// dialIstiod checks the credentials of --ca-root-file and --token-file and
// builds the xDS and CA clients; nothing connects until they are used.
func dialIstiod(o options, store *state.Store, reg prometheus.Registerer, logger *slog.Logger) (*istiod, error) {
	creds, err := caclient.NewTransportCredentials(caclient.TLSOptions{
		RootFile: o.caRootFile, ServerName: o.xdsServerName, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	// Fail at start on a missing token rather than on every request.
	if _, err := caclient.ReadToken(o.tokenFile); err != nil {
		return nil, err
	}
	m, err := newIstiodMetrics(reg)
	if err != nil {
		return nil, err
	}
	caConn, err := grpc.NewClient(o.caAddress, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("--ca-address %s: %w", o.caAddress, err)
	}
	ca, err := caclient.New(caclient.Config{
		Conn: caConn, TokenFile: o.tokenFile, ClusterID: o.clusterID,
		Metrics: m.ca, Logger: logger,
	})
	if err != nil {
		caConn.Close()
		return nil, err
	}
	xc, err := xdsclient.New(xdsclient.Config{
		Target: o.xdsAddress,
		DialOptions: []grpc.DialOption{
			grpc.WithTransportCredentials(creds),
			grpc.WithPerRPCCredentials(caclient.TokenCredentials{File: o.tokenFile}),
		},
		Store:   store,
		NodeID:  xdsNodeID(o.node),
		Logger:  logger,
		Metrics: m.xds,
	})
	if err != nil {
		caConn.Close()
		return nil, fmt.Errorf("--xds-address %s: %w", o.xdsAddress, err)
	}
	return &istiod{xds: xc, ca: ca, caConn: caConn}, nil
}

// Close closes the CA connection; the xDS client closes its own when its
// Run returns.
func (i *istiod) Close() { i.caConn.Close() }

// xdsNodeID identifies this ztunnel to istiod-lite. It is informational
// (istiod-lite authenticates the token, not the node ID).
func xdsNodeID(node string) string { return "ztunnel~" + node }

// readyWhenSynced holds readiness back until the xDS client has received
// every resource type once, so an empty store is never taken for an empty
// mesh.
type readyWhenSynced struct {
	admin.Source
	synced func() bool
}

func (r readyWhenSynced) Ready() bool { return r.synced() && r.Source.Ready() }

// istiodMetrics are the Prometheus metrics of the xDS and CA clients, named
// as Istio's ztunnel and istio-agent name them.
type istiodMetrics struct {
	xds *xdsMetrics
	ca  *caMetrics
}

type xdsMetrics struct {
	messages, rejected *prometheus.CounterVec
	connected          prometheus.Gauge
	terminations       prometheus.Counter
}

// Response implements xdsclient.Metrics.
func (m *xdsMetrics) Response(typeURL string, _, _ int, err error) {
	m.messages.WithLabelValues(typeURL).Inc()
	if err != nil {
		m.rejected.WithLabelValues(typeURL).Inc()
	}
}

// Connected implements xdsclient.Metrics.
func (m *xdsMetrics) Connected(up bool) {
	if up {
		m.connected.Set(1)
		return
	}
	m.connected.Set(0)
	m.terminations.Inc()
}

type caMetrics struct {
	requests, failed, latencyMS prometheus.Counter
}

// Request implements caclient.Metrics.
func (m *caMetrics) Request(d time.Duration, err error) {
	m.requests.Inc()
	m.latencyMS.Add(float64(d) / float64(time.Millisecond))
	if err != nil {
		m.failed.Inc()
	}
}

func newIstiodMetrics(reg prometheus.Registerer) (*istiodMetrics, error) {
	csr := prometheus.Labels{"request_type": "csr"}
	x := &xdsMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_xds_message_total", Help: "xDS responses received, by type URL.",
		}, []string{"url"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_xds_message_rejected_total", Help: "xDS responses rejected (NACKed), by type URL.",
		}, []string{"url"}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "istio_xds_connected", Help: "1 while an xDS stream to istiod-lite is open.",
		}),
		terminations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "istio_xds_connection_terminations_total", Help: "xDS streams that ended.",
		}),
	}
	c := &caMetrics{
		requests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "istio_agent_num_outgoing_requests", Help: "Certificate signing requests sent to the CA.", ConstLabels: csr,
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "istio_agent_num_failed_outgoing_requests", Help: "Certificate signing requests that failed.", ConstLabels: csr,
		}),
		latencyMS: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "istio_agent_outgoing_latency", Help: "Total latency of certificate signing requests, in milliseconds.", ConstLabels: csr,
		}),
	}
	var errs []error
	for _, col := range []prometheus.Collector{x.messages, x.rejected, x.connected, x.terminations, c.requests, c.failed, c.latencyMS} {
		errs = append(errs, reg.Register(col))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("registering the istiod client metrics: %w", err)
	}
	return &istiodMetrics{xds: x, ca: c}, nil
}
