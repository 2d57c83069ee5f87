package proxy

import (
	"net"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/ambientmesh/ambient/waypoint/tracing"
)

// reqTrace is a request's part in tracing: its server span, the zero Span
// when Config.Tracer is nil.
type reqTrace struct {
	span tracing.Span
}

// startTrace starts rec's span from the caller's trace context, with the
// request's HTTP and source attributes when it is sampled. With tracing
// off it returns at once.
func (p *Proxy) startTrace(rec *reqRecord, r *http.Request, info *tunnelInfo) {
	if p.cfg.Tracer == nil {
		return
	}
	method, known := spanMethod(r.Method)
	rec.trace.span = p.cfg.Tracer.StartServer(r.Header, method, rec.flow.Start)
	if !rec.trace.span.Recording() {
		return
	}
	attrs := make([]attribute.KeyValue, 0, 16)
	if known {
		attrs = append(attrs, semconv.HTTPRequestMethodKey.String(r.Method))
	} else {
		attrs = append(attrs, semconv.HTTPRequestMethodOther, semconv.HTTPRequestMethodOriginal(r.Method))
	}
	attrs = append(attrs, semconv.URLScheme("http"), semconv.URLPath(r.URL.EscapedPath()),
		semconv.NetworkProtocolVersion(protoVersion(r)))
	host, port := r.Host, int(info.authority.Port())
	if h, ps, err := net.SplitHostPort(r.Host); err == nil {
		host = h
		if n, err := strconv.Atoi(ps); err == nil {
			port = n
		}
	}
	if host != "" {
		attrs = append(attrs, semconv.ServerAddress(host))
	}
	attrs = append(attrs, semconv.ServerPort(port))
	if info.peerAddr.IsValid() {
		attrs = append(attrs, semconv.NetworkPeerAddress(info.peerAddr.Addr().Unmap().String()),
			semconv.NetworkPeerPort(int(info.peerAddr.Port())))
	}
	switch {
	case info.remote.IsValid():
		attrs = append(attrs, semconv.ClientAddress(info.remote.String()))
	case info.peerAddr.IsValid():
		attrs = append(attrs, semconv.ClientAddress(info.peerAddr.Addr().Unmap().String()))
	}
	if ua := r.UserAgent(); ua != "" {
		attrs = append(attrs, semconv.UserAgentOriginal(ua))
	}
	src := rec.flow.Src
	attrs = appendNonEmpty(attrs, tracing.AttrSourcePrincipal, src.Identity)
	attrs = appendNonEmpty(attrs, tracing.AttrSourceWorkload, src.Workload)
	attrs = appendNonEmpty(attrs, tracing.AttrSourceNamespace, src.Namespace)
	rec.trace.span.SetAttributes(attrs...)
}

// endTrace ends rec's span with the response and where the request went.
func (p *Proxy) endTrace(rec *reqRecord) {
	sp := rec.trace.span
	if sp.Recording() {
		dst := rec.flow.Dst
		attrs := make([]attribute.KeyValue, 0, 10)
		attrs = appendNonEmpty(attrs, tracing.AttrDestinationService, dst.Service)
		attrs = appendNonEmpty(attrs, tracing.AttrDestinationPrincipal, dst.Identity)
		attrs = appendNonEmpty(attrs, tracing.AttrDestinationWorkload, dst.Workload)
		attrs = appendNonEmpty(attrs, tracing.AttrDestinationNamespace, dst.Namespace)
		attrs = appendNonEmpty(attrs, tracing.AttrUpstreamAddress, dst.Addr)
		attrs = appendNonEmpty(attrs, tracing.AttrPolicy, rec.flow.Policy)
		attrs = append(attrs, semconv.HTTPRequestBodySize(int(rec.flow.BytesSent)), semconv.HTTPResponseBodySize(int(rec.flow.BytesRecv)))
		if n, err := strconv.Atoi(rec.grpc); err == nil && n >= 0 && n < len(grpcCodes) {
			attrs = append(attrs, semconv.RPCResponseStatusCode(grpcCodes[n]))
		}
		sp.SetAttributes(attrs...)
	}
	sp.End(tracing.Outcome{StatusCode: rec.flow.ResponseCode, Flags: rec.flags, Err: rec.flow.Error,
		End: rec.flow.Start.Add(rec.flow.Duration)})
}

// inject makes the upstream request's header h carry the span's context
// (the caller's trace id, the waypoint span as parent); with tracing off
// the caller's traceparent passes untouched.
func (t *reqTrace) inject(h http.Header) { t.span.Inject(h) }

// grpcCodes name gRPC's status codes as rpc.response.status_code has them.
var grpcCodes = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

func appendNonEmpty(attrs []attribute.KeyValue, k attribute.Key, v string) []attribute.KeyValue {
	if v == "" {
		return attrs
	}
	return append(attrs, k.String(v))
}

// spanMethod is the span's name after the OTel HTTP conventions: the
// method when it is a known one, else "HTTP".
func spanMethod(m string) (name string, known bool) {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m, true
	}
	return "HTTP", false
}

func protoVersion(r *http.Request) string {
	switch {
	case r.ProtoMajor == 2:
		return "2"
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "1.0"
	}
	return "1.1"
}
