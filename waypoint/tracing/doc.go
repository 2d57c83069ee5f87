// Package tracing gives the waypoint OpenTelemetry server spans, exported
// over OTLP/gRPC to a collector, with W3C Trace Context propagation
// (DESIGN §8): the "traces" third of the waypoint's telemetry, beside the
// flow records and Istio's request metrics of internal/telemetry.
//
// # Per request
//
// [Tracer.StartServer] reads the caller's traceparent and tracestate
// headers (W3C Trace Context, version 00: "00-<32 hex trace id>-<16 hex
// parent id>-<2 hex flags>") and starts a SERVER span that is the child of
// the caller's span: same trace id, the caller's span id as parent. Without
// a valid traceparent the span starts a new trace. [Span.Inject] writes the
// span's own context into the upstream request's headers, so the next hop
// sees the caller's trace id with the waypoint's span id as parent id, and
// the tracestate carried along (an invalid incoming tracestate is dropped,
// as the specification says). Other headers, baggage among them, are the
// proxy's to pass on untouched. [Span.End] records the outcome after the
// OTel HTTP semantic conventions: http.response.status_code, span status
// Error for 5xx (4xx stay Unset on a server span) and for a response cut
// short, error.type; the mesh attributes ([AttrSourcePrincipal] and the
// rest, the Istio telemetry's labels) are set by the caller.
//
// The zero [Span], which a nil *Tracer returns, does nothing and costs
// nothing: with tracing off the hot path neither allocates nor touches the
// headers. A span the sampler drops is not recording ([Span.Recording]):
// callers skip building its attributes, but it still gets a fresh span id
// and is propagated, with the sampled flag off, as Envoy does.
//
// # Sampling
//
// Parent-based, as Istio's: a caller's traceparent decides for its trace
// (sampled flag 01 records and exports, 00 does not), whatever the ratio.
// Only requests that start a trace are sampled at [Config.SamplingPercent]
// by trace id (the SDK's TraceIDRatioBased, so every hop of a trace that
// samples by ratio agrees). Istio's default is 1%, which is cmd/waypoint's
// flag default; the percentage can change at run time ([Tracer.SetSampling]).
//
// # Export
//
// Finished spans go through the SDK's batch span processor: a bounded
// queue ([Config.MaxQueue]; a span that finds it full is dropped, the
// request never waits), exported at least every [Config.BatchTimeout] by
// one goroutine, each export bounded by [Config.ExportTimeout]. Export
// failures are logged on Config.Logger, at most one line per 30s with the
// count of spans lost; they are not retried beyond the OTLP exporter's own
// retries. The resource names the waypoint: service.name is
// [Config.ServiceName] (cmd/waypoint uses "<gateway>.<namespace>", the
// canonical-service form Istio's proxies report) plus [Config.Attributes];
// the SDK merges OTEL_RESOURCE_ATTRIBUTES from the environment and the
// OTLP exporter honours the OTEL_EXPORTER_OTLP_* variables that the Config
// leaves unset (headers, compression, certificate).
//
// # Lifecycle
//
// [New] connects lazily (a collector that is down does not stop the
// waypoint). [Tracer.Run] waits for its context to end and then flushes
// and shuts down within [Config.ShutdownTimeout]; [Tracer.Shutdown] does
// the same at once. Spans that end after the shutdown are dropped, so the
// proxy's drain should end before the Tracer's context does.
package tracing
