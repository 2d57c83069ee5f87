package tracing

import (
	"context"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// The mesh attributes of a waypoint span: the labels of Istio's request
// metrics (source_principal, destination_service, response_flags, ...) as
// span attributes. The HTTP ones follow the OTel semantic conventions
// (http.request.method, url.path, server.address, ...).
const (
	AttrSourcePrincipal      = attribute.Key("mesh.source.principal") // SPIFFE ID
	AttrSourceWorkload       = attribute.Key("mesh.source.workload")
	AttrSourceNamespace      = attribute.Key("mesh.source.namespace")
	AttrDestinationPrincipal = attribute.Key("mesh.destination.principal") // SPIFFE ID
	AttrDestinationWorkload  = attribute.Key("mesh.destination.workload")
	AttrDestinationNamespace = attribute.Key("mesh.destination.namespace")
	AttrDestinationService   = attribute.Key("mesh.destination.service") // hostname
	AttrUpstreamAddress      = attribute.Key("mesh.upstream.address")    // the endpoint, ip:port
	AttrResponseFlags        = attribute.Key("mesh.response_flags")      // Envoy's, comma-separated: "-", NR, UH, UF, UT, DC, UO, RL, ...
	AttrPolicy               = attribute.Key("mesh.policy")              // the AuthorizationPolicy that decided
)

// propagator is W3C Trace Context (traceparent, tracestate).
var propagator propagation.TraceContext

// Span is one request's server span. The zero Span (tracing off) does
// nothing.
type Span struct {
	span trace.Span
}

// StartServer starts the SERVER span of a request whose headers are h, at
// start: the child of the caller's span when h carries a valid
// traceparent, else the root of a new trace. A nil Tracer returns the zero
// Span. The span is named name (OTel: the method, or "{method} {route}").
func (t *Tracer) StartServer(h http.Header, name string, start time.Time) Span {
	if t == nil {
		return Span{}
	}
	ctx := propagator.Extract(context.Background(), propagation.HeaderCarrier(h))
	_, s := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start))
	return Span{span: s}
}

// Recording reports whether the span was sampled: only then are its
// attributes worth building.
func (s Span) Recording() bool { return s.span != nil && s.span.IsRecording() }

// SpanContext is the span's identity (zero when tracing is off).
func (s Span) SpanContext() trace.SpanContext {
	if s.span == nil {
		return trace.SpanContext{}
	}
	return s.span.SpanContext()
}

// SetAttributes adds attributes to a recording span.
func (s Span) SetAttributes(kv ...attribute.KeyValue) {
	if s.span != nil {
		s.span.SetAttributes(kv...)
	}
}

// Inject makes h, the upstream request's header, carry the span's context:
// traceparent with the caller's trace id and this span's id as parent id,
// and tracestate as it came (dropped when it did not parse). With tracing
// off h is left as it is.
func (s Span) Inject(h http.Header) {
	if s.span == nil {
		return
	}
	sc := s.span.SpanContext()
	if !sc.IsValid() {
		return
	}
	h.Del("Tracestate")
	propagator.Inject(trace.ContextWithSpanContext(context.Background(), sc), propagation.HeaderCarrier(h))
}

// Outcome is how a request ended.
type Outcome struct {
	// StatusCode is the response status sent; 0 when none was.
	StatusCode int
	// Flags are Envoy's response flags, comma-separated ("-" when none).
	Flags string
	// Err describes a failure (the span status's description).
	Err string
	// End is when the request ended; zero means now.
	End time.Time
}

// cutShort reports whether flags (Envoy's, comma-separated) hold one that
// fails a request after its status was sent: the upstream failed (UF) or
// timed out (UT) mid-body.
func cutShort(flags string) bool {
	for f := range strings.SplitSeq(flags, ",") {
		if f == "UF" || f == "UT" {
			return true
		}
	}
	return false
}

// End ends the span with the request's outcome, after the OTel HTTP server
// conventions: http.response.status_code; status Error with error.type for
// a 5xx, for no response at all and for a response cut short by the
// upstream (4xx leave the status Unset: the client's error, not the
// server's); the response flags as mesh.response_flags.
func (s Span) End(o Outcome) {
	if s.span == nil {
		return
	}
	if s.span.IsRecording() {
		flags := o.Flags
		if flags == "" {
			flags = "-"
		}
		attrs := make([]attribute.KeyValue, 0, 3)
		attrs = append(attrs, AttrResponseFlags.String(flags))
		if o.StatusCode > 0 {
			attrs = append(attrs, statusAttr(o.StatusCode))
		}
		if o.StatusCode == 0 || o.StatusCode >= 500 || cutShort(flags) {
			attrs = append(attrs, errorType(o.StatusCode, flags))
			desc := o.Err
			if desc == "" && o.StatusCode >= 500 {
				desc = http.StatusText(o.StatusCode)
			}
			s.span.SetStatus(codes.Error, desc)
		}
		s.span.SetAttributes(attrs...)
	}
	if o.End.IsZero() {
		s.span.End()
		return
	}
	s.span.End(trace.WithTimestamp(o.End))
}
