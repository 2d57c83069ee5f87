package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
)

// tcpLabels are the labels Istio's ztunnel puts on its TCP metrics.
var tcpLabels = []string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision",
	"source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_canonical_service", "destination_canonical_revision",
	"destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
}

// Metrics are the TCP metrics of a proxy, registered on an injected
// registry, and two of our own about the tunnel transports:
//
//	ambient_tunnel_connections_total{reporter, transport}
//	    the tunnelled connections of istio_tcp_connections_opened_total,
//	    by the transport that carried them (TransportHBONE or
//	    TransportHBONE3). Istio's metrics keep Istio's label set.
//	ambient_tunnel_quic_fallbacks_total
//	    QUIC tunnel dials that failed and were retried over HTTP/2.
//
// UDP flows (Flow.Protocol ProtocolUDP) are counted apart, with the same
// labels (request_protocol "udp"), since Istio has no UDP metrics and its
// TCP ones must keep meaning TCP: ambient_udp_flows_opened_total,
// ambient_udp_flows_closed_total, ambient_udp_sent_bytes_total and
// ambient_udp_received_bytes_total (UDP payload bytes).
type Metrics struct {
	opened, closed, sent, received             *prometheus.CounterVec
	udpOpened, udpClosed, udpSent, udpReceived *prometheus.CounterVec
	tunnels                                    *prometheus.CounterVec
	fallbacks                                  prometheus.Counter
	cluster                                    string
}

// NewMetrics registers the metrics on reg. cluster fills the *_cluster labels.
func NewMetrics(reg prometheus.Registerer, cluster string) (*Metrics, error) {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, tcpLabels)
	}
	m := &Metrics{
		opened:      counter("istio_tcp_connections_opened_total", "TCP connections opened."),
		closed:      counter("istio_tcp_connections_closed_total", "TCP connections closed."),
		sent:        counter("istio_tcp_sent_bytes_total", "Bytes sent during TCP connections (source to destination)."),
		received:    counter("istio_tcp_received_bytes_total", "Bytes received during TCP connections (destination to source)."),
		udpOpened:   counter("ambient_udp_flows_opened_total", "UDP flows opened through the mesh."),
		udpClosed:   counter("ambient_udp_flows_closed_total", "UDP flows ended (idle, closed or refused)."),
		udpSent:     counter("ambient_udp_sent_bytes_total", "UDP payload bytes sent during flows (source to destination)."),
		udpReceived: counter("ambient_udp_received_bytes_total", "UDP payload bytes received during flows (destination to source)."),
		tunnels: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ambient_tunnel_connections_total",
			Help: "Tunnelled connections opened, by the transport that carried them (hbone: HTTP/2 on TCP, hbone3: HTTP/3 on QUIC)."},
			[]string{"reporter", "transport"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{Name: "ambient_tunnel_quic_fallbacks_total",
			Help: "QUIC tunnel dials that failed before the peer answered and were retried over HTTP/2."}),
		cluster: cluster,
	}
	for _, c := range []prometheus.Collector{m.opened, m.closed, m.sent, m.received,
		m.udpOpened, m.udpClosed, m.udpSent, m.udpReceived, m.tunnels, m.fallbacks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Opened counts a connection when it is accepted (before its outcome is
// known), and a tunnelled one by its transport.
func (m *Metrics) Opened(f Flow) {
	if f.Protocol == ProtocolUDP {
		m.udpOpened.WithLabelValues(m.labels(f)...).Inc()
		return
	}
	m.opened.WithLabelValues(m.labels(f)...).Inc()
	if f.Transport == TransportHBONE || f.Transport == TransportHBONE3 {
		m.tunnels.WithLabelValues(f.Reporter, f.Transport).Inc()
	}
}

// QUICFallback counts a QUIC dial retried over HTTP/2.
func (m *Metrics) QUICFallback() { m.fallbacks.Inc() }

// Closed counts a finished connection and its bytes.
func (m *Metrics) Closed(f Flow) {
	closed, sent, received := m.closed, m.sent, m.received
	if f.Protocol == ProtocolUDP {
		closed, sent, received = m.udpClosed, m.udpSent, m.udpReceived
	}
	l := m.labels(f)
	closed.WithLabelValues(l...).Inc()
	sent.WithLabelValues(l...).Add(float64(f.BytesSent))
	received.WithLabelValues(l...).Add(float64(f.BytesRecv))
}

// labels renders f in tcpLabels order; unknown values are "unknown" as in Istio.
func (m *Metrics) labels(f Flow) []string {
	u := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	svcName, svcNS := splitService(f.Dst.Service)
	flags := "-"
	if f.Decision == Deny {
		flags = "DENIED"
	} else if f.Error != "" {
		flags = "CONNECT_FAILED"
	}
	security := f.Security
	if security == "" {
		security = "unknown"
	}
	protocol := "tcp"
	if f.Protocol != "" {
		protocol = f.Protocol
	}
	return []string{
		u(f.Reporter),
		u(f.Src.Workload), u(f.Src.App), u(f.Src.Version),
		u(f.Src.Namespace), u(trimSpiffe(f.Src.Identity)), u(f.Src.App), u(f.Src.Version), u(m.cluster),
		u(f.Dst.Service), u(svcNS), u(svcName),
		u(f.Dst.Workload), u(f.Dst.App), u(f.Dst.Version),
		u(f.Dst.Namespace), u(trimSpiffe(f.Dst.Identity)), u(f.Dst.App), u(f.Dst.Version),
		u(m.cluster),
		protocol, flags, security,
	}
}

// trimSpiffe drops "spiffe://": Istio's principal labels are
// "cluster.local/ns/N/sa/S".
func trimSpiffe(id string) string {
	const p = "spiffe://"
	if len(id) > len(p) && id[:len(p)] == p {
		return id[len(p):]
	}
	return id
}

// splitService splits "name.namespace.svc.cluster.local" into name and namespace.
func splitService(host string) (name, ns string) {
	first := -1
	for i := 0; i < len(host); i++ {
		if host[i] == '.' {
			if first < 0 {
				first = i
				continue
			}
			return host[:first], host[first+1 : i]
		}
	}
	return host, ""
}
