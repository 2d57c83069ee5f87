package xds

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics receives the server's events. Implementations must be safe for
// concurrent use and must not block.
type Metrics interface {
	// Push is called for every response sent: its type, number of
	// resources plus removals, and the time from the first change it
	// carries (or from the request it answers) to the send.
	Push(typeURL string, items int, latency time.Duration)
	// Connected is called with +1 when a stream opens and -1 when it ends.
	Connected(delta int)
	// Drop is called when the server cuts off a stream; reason is
	// "queue_full" or "ack_timeout".
	Drop(reason string)
	// Nack is called for every NACK received.
	Nack(typeURL string)
}

type nopMetrics struct{}

func (nopMetrics) Push(string, int, time.Duration) {}
func (nopMetrics) Connected(int)                   {}
func (nopMetrics) Drop(string)                     {}
func (nopMetrics) Nack(string)                     {}

type promMetrics struct {
	pushes  *prometheus.CounterVec
	latency *prometheus.HistogramVec
	clients prometheus.Gauge
	drops   *prometheus.CounterVec
	nacks   *prometheus.CounterVec
}

// NewPrometheusMetrics registers the server's metrics on reg:
// xds_pushes_total, xds_push_latency_seconds, xds_connected_clients,
// xds_stream_drops_total and xds_nacks_total.
func NewPrometheusMetrics(reg prometheus.Registerer) (Metrics, error) {
	m := &promMetrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xds_pushes_total", Help: "Delta xDS responses sent, by type.",
		}, []string{"type"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "xds_push_latency_seconds", Help: "Time from a change to the response carrying it.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"type"}),
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xds_connected_clients", Help: "Open Delta ADS streams.",
		}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xds_stream_drops_total", Help: "Streams cut off by the server, by reason.",
		}, []string{"reason"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xds_nacks_total", Help: "NACKs received, by type.",
		}, []string{"type"}),
	}
	for _, c := range []prometheus.Collector{m.pushes, m.latency, m.clients, m.drops, m.nacks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *promMetrics) Push(t string, _ int, d time.Duration) {
	m.pushes.WithLabelValues(t).Inc()
	m.latency.WithLabelValues(t).Observe(d.Seconds())
}
func (m *promMetrics) Connected(d int)    { m.clients.Add(float64(d)) }
func (m *promMetrics) Drop(reason string) { m.drops.WithLabelValues(reason).Inc() }
func (m *promMetrics) Nack(t string)      { m.nacks.WithLabelValues(t).Inc() }
