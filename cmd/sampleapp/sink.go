package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // exporters may compress (OTEL_EXPORTER_OTLP_COMPRESSION=gzip)
)

// The trace sink (--otlp-sink-addr): the sample also serves the OTLP/gRPC
// TraceService, the way an OpenTelemetry collector receives spans on 4317,
// and keeps the last --otlp-sink-spans spans it was sent, oldest
// overwritten first. GET /spans on the HTTP port shows them as JSON
// (SpansReply), oldest first; ?traceId=<32 hex> keeps one trace's. It is
// a stand-in for a collector and a tracing backend, small enough to read
// in a test or with curl; it exports nothing further.

// Limits of the sink: together they bound its memory (about
// maxSinkAttrs × (maxSinkKey + maxSinkValue) per span, worst case).
const (
	DefaultSinkSpans = 1000
	maxSinkSpans     = 100000
	maxSinkAttrs     = 64  // attributes kept per span; the rest are counted in DroppedAttributes
	maxSinkKey       = 128 // bytes of an attribute key or a span name
	maxSinkValue     = 256 // bytes of an attribute value
	maxSinkRecvMsg   = 4 << 20
	maxSinkStreams   = 64
)

// SpanRecord is one received span as GET /spans shows it: ids in hex as
// W3C traceparent spells them, the kind without its prefix (SERVER,
// CLIENT, ...), every attribute's value as a string.
type SpanRecord struct {
	TraceID      string `json:"traceId"`
	SpanID       string `json:"spanId"`
	ParentSpanID string `json:"parentSpanId,omitempty"` // empty for a root span
	Name         string `json:"name"`
	Kind         string `json:"kind"`
	// Service is the resource's service.name: who sent the span.
	Service       string    `json:"service"`
	Start         time.Time `json:"start"`
	End           time.Time `json:"end"`
	Status        string    `json:"status"` // UNSET, OK or ERROR
	StatusMessage string    `json:"statusMessage,omitempty"`
	// Attributes are the span's own (not the resource's), values as
	// strings: integers and floats in decimal, booleans true/false, arrays
	// and maps as JSON, bytes in hex; cut at 256 bytes.
	Attributes        map[string]string `json:"attributes,omitempty"`
	DroppedAttributes int               `json:"droppedAttributes,omitempty"`
}

// SpansReply is the body of GET /spans.
type SpansReply struct {
	// Received counts every span the sink was sent, Kept those it still
	// holds (the last ones, at most --otlp-sink-spans).
	Received uint64       `json:"received"`
	Kept     int          `json:"kept"`
	Spans    []SpanRecord `json:"spans"`
}

// spanSink is the OTLP TraceService keeping the last spans it receives.
type spanSink struct {
	coltracepb.UnimplementedTraceServiceServer
	max int

	mu       sync.Mutex   // guards the fields below
	ring     []SpanRecord // len ≤ max; once full, next is the oldest
	next     int
	received uint64
}

func newSpanSink(max int) *spanSink {
	return &spanSink{max: max}
}

// newSinkServer is the gRPC server of the sink.
func newSinkServer(sink *spanSink) *grpc.Server {
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(maxSinkRecvMsg), grpc.MaxConcurrentStreams(maxSinkStreams))
	coltracepb.RegisterTraceServiceServer(srv, sink)
	return srv
}

// Export is the TraceService's one method: it keeps every span of req.
func (k *spanSink) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	recs := spanRecords(req)
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, r := range recs {
		k.addLocked(r)
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (k *spanSink) addLocked(r SpanRecord) {
	k.received++
	if len(k.ring) < k.max {
		k.ring = append(k.ring, r)
		return
	}
	k.ring[k.next] = r
	k.next = (k.next + 1) % k.max
}

// spans returns the kept spans of trace traceID (every kept span when
// empty), oldest first.
func (k *spanSink) spans(traceID string) SpansReply {
	k.mu.Lock()
	defer k.mu.Unlock()
	rep := SpansReply{Received: k.received, Kept: len(k.ring), Spans: []SpanRecord{}}
	for i := range k.ring {
		r := k.ring[(k.next+i)%len(k.ring)]
		if traceID == "" || r.TraceID == traceID {
			rep.Spans = append(rep.Spans, r)
		}
	}
	return rep
}

// serveSpans answers GET /spans[?traceId=...].
func (k *spanSink) serveSpans(w http.ResponseWriter, r *http.Request) {
	tid := strings.ToLower(r.URL.Query().Get("traceId"))
	if b, err := hex.DecodeString(tid); tid != "" && (err != nil || len(b) != 16) {
		http.Error(w, "sampleapp: traceId="+strconv.Quote(tid)+": want 32 hex digits, as in a traceparent", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(k.spans(tid)) //nolint:errcheck // the client went away
}

// spanRecords turns an export request into records (a pure function).
func spanRecords(req *coltracepb.ExportTraceServiceRequest) []SpanRecord {
	var out []SpanRecord
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = clip(attrString(kv.GetValue()), maxSinkValue)
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				out = append(out, spanRecord(s, service))
			}
		}
	}
	return out
}

func spanRecord(s *tracepb.Span, service string) SpanRecord {
	r := SpanRecord{
		TraceID:       hex.EncodeToString(s.GetTraceId()),
		SpanID:        hex.EncodeToString(s.GetSpanId()),
		ParentSpanID:  hex.EncodeToString(s.GetParentSpanId()),
		Name:          clip(s.GetName(), maxSinkKey),
		Kind:          strings.TrimPrefix(s.GetKind().String(), "SPAN_KIND_"),
		Service:       service,
		Start:         time.Unix(0, int64(s.GetStartTimeUnixNano())).UTC(),
		End:           time.Unix(0, int64(s.GetEndTimeUnixNano())).UTC(),
		Status:        strings.TrimPrefix(s.GetStatus().GetCode().String(), "STATUS_CODE_"),
		StatusMessage: clip(s.GetStatus().GetMessage(), maxSinkValue),
	}
	attrs := s.GetAttributes()
	if len(attrs) > 0 {
		r.Attributes = make(map[string]string, min(len(attrs), maxSinkAttrs))
	}
	for i, kv := range attrs {
		if i >= maxSinkAttrs {
			r.DroppedAttributes = len(attrs) - maxSinkAttrs
			break
		}
		r.Attributes[clip(kv.GetKey(), maxSinkKey)] = clip(attrString(kv.GetValue()), maxSinkValue)
	}
	r.DroppedAttributes += int(s.GetDroppedAttributesCount())
	return r
}

// attrString is an attribute value as a string.
func attrString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	case *commonpb.AnyValue_BytesValue:
		return hex.EncodeToString(x.BytesValue)
	case *commonpb.AnyValue_ArrayValue, *commonpb.AnyValue_KvlistValue:
		b, err := json.Marshal(attrJSON(v))
		if err != nil { // a NaN or an infinity inside
			return fmt.Sprint(attrJSON(v))
		}
		return string(b)
	}
	return ""
}

// attrJSON is a value as encoding/json marshals it.
func attrJSON(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_ArrayValue:
		out := []any{}
		for _, e := range x.ArrayValue.GetValues() {
			out = append(out, attrJSON(e))
		}
		return out
	case *commonpb.AnyValue_KvlistValue:
		out := map[string]any{}
		for _, kv := range x.KvlistValue.GetValues() {
			out[kv.GetKey()] = attrJSON(kv.GetValue())
		}
		return out
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	}
	return attrString(v)
}

// clip cuts s to at most n bytes, on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
