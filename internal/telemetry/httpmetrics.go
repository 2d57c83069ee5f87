package telemetry

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// httpLabels are the labels Istio puts on its HTTP request metrics
// (https://istio.io/latest/docs/reference/config/metrics/).
var httpLabels = []string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision",
	"source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_canonical_service", "destination_canonical_revision",
	"destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// HTTPMetrics are Istio's request metrics (the waypoint's), registered on an
// injected registry.
type HTTPMetrics struct {
	requests                      *prometheus.CounterVec
	duration, reqBytes, respBytes *prometheus.HistogramVec
	cluster                       string
}

// Request is one finished HTTP request for [HTTPMetrics.Observe]: its flow
// record (peers, decision, bytes, duration, response code) and what the
// flow does not carry.
type Request struct {
	Flow
	// Protocol is "http" or "grpc", Istio's request_protocol.
	Protocol string
	// GRPCStatus is the grpc-status trailer, if any.
	GRPCStatus string
	// Flags are Envoy's response flags ("UT", "UF", "NR", "URX"; "-" or
	// empty for none); a denied request is "-" with code 403 as in Istio.
	Flags string
}

// NewHTTPMetrics registers istio_requests_total,
// istio_request_duration_milliseconds, istio_request_bytes and
// istio_response_bytes on reg. cluster fills the *_cluster labels.
func NewHTTPMetrics(reg prometheus.Registerer, cluster string) (*HTTPMetrics, error) {
	hist := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, httpLabels)
	}
	// Istio's default buckets.
	durationBuckets := []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	sizeBuckets := prometheus.ExponentialBuckets(1, 10, 9)
	m := &HTTPMetrics{
		requests:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "Requests handled."}, httpLabels),
		duration:  hist("istio_request_duration_milliseconds", "Request duration in milliseconds.", durationBuckets),
		reqBytes:  hist("istio_request_bytes", "Request body sizes in bytes.", sizeBuckets),
		respBytes: hist("istio_response_bytes", "Response body sizes in bytes.", sizeBuckets),
		cluster:   cluster,
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.reqBytes, m.respBytes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Observe counts one finished request.
func (m *HTTPMetrics) Observe(r Request) {
	l := m.labels(r)
	m.requests.WithLabelValues(l...).Inc()
	m.duration.WithLabelValues(l...).Observe(float64(r.Duration) / float64(time.Millisecond))
	m.reqBytes.WithLabelValues(l...).Observe(float64(r.BytesSent))
	m.respBytes.WithLabelValues(l...).Observe(float64(r.BytesRecv))
}

func (m *HTTPMetrics) labels(r Request) []string {
	u := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	f := r.Flow
	svcName, svcNS := splitService(f.Dst.Service)
	flags := r.Flags
	if flags == "" {
		flags = "-"
	}
	code := "0"
	if f.ResponseCode != 0 {
		code = strconv.Itoa(f.ResponseCode)
	}
	security := f.Security
	if security == "" {
		security = "unknown"
	}
	proto := r.Protocol
	if proto == "" {
		proto = "http"
	}
	grpcStatus := r.GRPCStatus
	if grpcStatus == "" {
		grpcStatus = "unknown"
	}
	return []string{
		u(f.Reporter),
		u(f.Src.Workload), u(f.Src.App), u(f.Src.Version),
		u(f.Src.Namespace), u(trimSpiffe(f.Src.Identity)), u(f.Src.App), u(f.Src.Version), u(m.cluster),
		u(f.Dst.Service), u(svcNS), u(svcName),
		u(f.Dst.Workload), u(f.Dst.App), u(f.Dst.Version),
		u(f.Dst.Namespace), u(trimSpiffe(f.Dst.Identity)), u(f.Dst.App), u(f.Dst.Version),
		u(m.cluster),
		proto, code, grpcStatus, flags, security,
	}
}
