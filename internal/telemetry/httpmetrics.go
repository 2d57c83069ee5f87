package telemetry

import (
	"strconv"
	"sync"
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
//
// Observe finds the four series of a request through a cache keyed by
// the fields its labels are made of, so a request of a known kind renders
// no label and hashes no label value: at most maxCachedSeries kinds are
// cached, the others looked up by their labels each time. (No series is
// ever deleted from the vectors, so a cached one stays theirs.)
type HTTPMetrics struct {
	requests                      *prometheus.CounterVec
	duration, reqBytes, respBytes *prometheus.HistogramVec
	cluster                       string

	mu     sync.RWMutex // guards series
	series map[seriesKey]*httpSeries
}

// maxCachedSeries bounds HTTPMetrics' cache of series.
const maxCachedSeries = 4096

// seriesKey is what the labels of a request are made of (the cluster
// aside, which is the HTTPMetrics'): the Request's fields as they are,
// before "unknown" and the other defaults are filled in.
type seriesKey struct {
	reporter                                                  string
	srcWorkload, srcApp, srcVersion, srcNamespace, srcID      string
	dstService, dstWorkload, dstApp, dstVersion, dstNamespace string
	dstID, protocol, grpcStatus, flags, security              string
	code                                                      int
}

func keyOf(r *Request) seriesKey {
	return seriesKey{
		reporter:    r.Reporter,
		srcWorkload: r.Src.Workload, srcApp: r.Src.App, srcVersion: r.Src.Version, srcNamespace: r.Src.Namespace, srcID: r.Src.Identity,
		dstService: r.Dst.Service, dstWorkload: r.Dst.Workload, dstApp: r.Dst.App, dstVersion: r.Dst.Version, dstNamespace: r.Dst.Namespace,
		dstID: r.Dst.Identity, protocol: r.Protocol, grpcStatus: r.GRPCStatus, flags: r.Flags, security: r.Security,
		code: r.ResponseCode,
	}
}

// httpSeries are the four series of one label set.
type httpSeries struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
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
		series:    make(map[seriesKey]*httpSeries),
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
	s := m.seriesOf(&r)
	s.requests.Inc()
	s.duration.Observe(float64(r.Duration) / float64(time.Millisecond))
	s.reqBytes.Observe(float64(r.BytesSent))
	s.respBytes.Observe(float64(r.BytesRecv))
}

// seriesOf returns r's series, from the cache when they are there.
func (m *HTTPMetrics) seriesOf(r *Request) *httpSeries {
	k := keyOf(r)
	m.mu.RLock()
	s := m.series[k]
	m.mu.RUnlock()
	if s != nil {
		return s
	}
	l := m.labels(*r)
	s = &httpSeries{
		requests: m.requests.WithLabelValues(l...),
		duration: m.duration.WithLabelValues(l...), reqBytes: m.reqBytes.WithLabelValues(l...), respBytes: m.respBytes.WithLabelValues(l...),
	}
	m.mu.Lock()
	if len(m.series) < maxCachedSeries {
		m.series[k] = s
	}
	m.mu.Unlock()
	return s
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
