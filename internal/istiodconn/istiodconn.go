// Package istiodconn is a proxy's link to istiod-lite, shared by ztunnel
// and the waypoint: from the flags both binaries take (--xds-address,
// --ca-address, --ca-root-file, --xds-server-name, --token-file,
// --cluster-id) it builds the Delta ADS client (internal/xdsclient) feeding
// the proxy's state store and the CA client (internal/caclient) signing its
// certificates, with Istio's client metrics.
//
// Both connections use TLS 1.3 trusting the roots of the root file
// (re-read when it changes) and expecting the server name; both send the
// projected ServiceAccount token of the token file (audience istio-ca),
// re-read for every request. [Dial] checks the root and token files at once,
// so a missing mount fails the proxy at start with the flag to fix, but
// nothing connects until the clients are used.
package istiodconn

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
)

// Config says where istiod-lite is and how to reach it. The error messages
// name the proxies' flags.
type Config struct {
	// XDSAddress is the xDS target (--xds-address), CAAddress the CA's
	// (--ca-address; default XDSAddress).
	XDSAddress, CAAddress string
	// RootFile (--ca-root-file) holds the PEM roots of istiod-lite's
	// serving certificate, whose DNS name is ServerName (--xds-server-name).
	RootFile, ServerName string
	// TokenFile (--token-file) is the projected ServiceAccount token.
	TokenFile string
	// ClusterID is sent to the CA as clusterid.
	ClusterID string
	// NodeID identifies the proxy on the xDS stream (informational).
	NodeID string
	// Store receives the workload API. Required.
	Store *state.Store
	// Extra are further xDS types and their sinks (the waypoint's).
	Extra []xdsclient.Extra
	// Registerer receives the client metrics. Required.
	Registerer prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Conn is the link: XDS must be Run; CA signs.
type Conn struct {
	XDS    *xdsclient.Client
	CA     *caclient.Client
	caConn *grpc.ClientConn
}

// Dial checks the credentials of the root and token files and builds the
// xDS and CA clients; nothing connects until they are used.
func Dial(cfg Config) (*Conn, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CAAddress == "" {
		cfg.CAAddress = cfg.XDSAddress
	}
	if cfg.Registerer == nil {
		return nil, errors.New("istiodconn: Config.Registerer is required")
	}
	creds, err := caclient.NewTransportCredentials(caclient.TLSOptions{
		RootFile: cfg.RootFile, ServerName: cfg.ServerName, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	// Fail at start on a missing token rather than on every request.
	if _, err := caclient.ReadToken(cfg.TokenFile); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	caConn, err := grpc.NewClient(cfg.CAAddress, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("--ca-address %s: %w", cfg.CAAddress, err)
	}
	ca, err := caclient.New(caclient.Config{
		Conn: caConn, TokenFile: cfg.TokenFile, ClusterID: cfg.ClusterID,
		Metrics: m.ca, Logger: cfg.Logger,
	})
	if err != nil {
		caConn.Close()
		return nil, err
	}
	xc, err := xdsclient.New(xdsclient.Config{
		Target: cfg.XDSAddress,
		DialOptions: []grpc.DialOption{
			grpc.WithTransportCredentials(creds),
			grpc.WithPerRPCCredentials(caclient.TokenCredentials{File: cfg.TokenFile}),
		},
		Store:   cfg.Store,
		Extra:   cfg.Extra,
		NodeID:  cfg.NodeID,
		Logger:  cfg.Logger,
		Metrics: m.xds,
	})
	if err != nil {
		caConn.Close()
		return nil, fmt.Errorf("--xds-address %s: %w", cfg.XDSAddress, err)
	}
	return &Conn{XDS: xc, CA: ca, caConn: caConn}, nil
}

// Close closes the CA connection; the xDS client closes its own when its
// Run returns.
func (c *Conn) Close() { c.caConn.Close() }

// metrics are the Prometheus metrics of the xDS and CA clients, named as
// Istio's ztunnel and istio-agent name them.
type metrics struct {
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

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
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
	return &metrics{xds: x, ca: c}, nil
}
