// Package telemetry records what the data plane carried: one JSON flow
// record per connection and Prometheus metrics with Istio's names and labels,
// so existing Istio dashboards and Kiali read them unchanged.
//
// A flow record is one line of JSON, written when a connection closes:
//
//	{"start":"2026-11-25T23:00:00.1Z","reporter":"destination",
//	 "src.workload":"frontend-1","src.namespace":"shop",
//	 "src.identity":"spiffe://cluster.local/ns/shop/sa/frontend","src.addr":"10.244.1.5:41234",
//	 "dst.workload":"backend-1","dst.namespace":"shop","dst.service":"backend.shop.svc.cluster.local",
//	 "dst.identity":"spiffe://cluster.local/ns/shop/sa/backend","dst.addr":"10.244.2.7:8080",
//	 "bytes_sent":512,"bytes_received":1024,"duration_ms":12.5,
//	 "decision":"allow","policy":"shop/allow-frontend","security":"mutual_tls","transport":"hbone"}
//
// A FlowLog may also publish each line to a Feed: the last lines in a
// bounded ring plus live subscribers, each with a bounded buffer; a
// subscriber that falls behind is cut off and counted, never waited for.
// ztunnel serves it as GET /debug/flows on its admin port.
//
// Metrics (labels as Istio's ztunnel sets them):
//
//	istio_tcp_connections_opened_total
//	istio_tcp_connections_closed_total
//	istio_tcp_sent_bytes_total
//	istio_tcp_received_bytes_total
//
// and, beyond Istio's, ambient_tunnel_connections_total{reporter,transport}
// and ambient_tunnel_quic_fallbacks_total (see [Metrics]). Flow.Transport
// names a tunnel's transport: "hbone" (HTTP/2 on TCP, Istio's) or "hbone3"
// (HTTP/3 on QUIC).
package telemetry
