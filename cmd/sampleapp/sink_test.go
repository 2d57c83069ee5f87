package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// getSpans reads GET /spans (with query q) from base.
func getSpans(t *testing.T, base, q string) SpansReply {
	t.Helper()
	resp, err := http.Get(base + "/spans" + q)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /spans%s: %s %q: %s", q, resp.Status, resp.Header.Get("Content-Type"), body)
	}
	var r SpansReply
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("GET /spans%s: %v: %s", q, err, body)
	}
	return r
}

// TestSink_ShowsSpansSentByTheOTLPExporter: a span exported by the real
// OTel SDK over OTLP/gRPC to --otlp-sink-addr is on GET /spans with its
// ids, parent, kind, sender and attributes as strings.
func TestSink_ShowsSpansSentByTheOTLPExporter(t *testing.T) {
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	otlpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, Config{OTLPSink: otlpLn.Addr().String()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, Listeners{HTTP: httpLn, OTLP: otlpLn}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	base := "http://" + httpLn.Addr().String()

	exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(otlpLn.Addr().String()), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "waypoint.shop"))))
	// The caller's span, as a traceparent would carry it.
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	pid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	parent := trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: pid, TraceFlags: trace.FlagsSampled, Remote: true}))
	_, span := tp.Tracer("test").Start(parent, "GET", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		attribute.String("mesh.source.principal", "spiffe://cluster.local/ns/shop/sa/curl"),
		attribute.Int("http.response.status_code", 503),
		attribute.Bool("b", true),
		attribute.Float64("f", 1.5),
		attribute.StringSlice("s", []string{"x", "y"}),
	))
	span.SetStatus(codes.Error, "Service Unavailable")
	sc := span.SpanContext()
	span.End()
	// Unrelated: another trace.
	_, other := tp.Tracer("test").Start(context.Background(), "other")
	other.End()
	if err := tp.Shutdown(context.Background()); err != nil { // flushes, closes the exporter
		t.Fatalf("export: %v", err)
	}

	all := getSpans(t, base, "")
	if all.Received != 2 || all.Kept != 2 || len(all.Spans) != 2 {
		t.Fatalf("GET /spans: received %d, kept %d, %d spans; want both spans", all.Received, all.Kept, len(all.Spans))
	}
	got := getSpans(t, base, "?traceId=4BF92F3577B34DA6A3CE929D0E0E4736")
	if len(got.Spans) != 1 {
		t.Fatalf("GET /spans?traceId=…: %+v, want the one span of the trace", got)
	}
	r := got.Spans[0]
	want := SpanRecord{
		TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", SpanID: sc.SpanID().String(), ParentSpanID: "00f067aa0ba902b7",
		Name: "GET", Kind: "SERVER", Service: "waypoint.shop", Status: "ERROR", StatusMessage: "Service Unavailable",
		Attributes: map[string]string{
			"mesh.source.principal":     "spiffe://cluster.local/ns/shop/sa/curl",
			"http.response.status_code": "503",
			"b":                         "true",
			"f":                         "1.5",
			"s":                         `["x","y"]`,
		},
	}
	if r.Start.IsZero() || r.End.Before(r.Start) || time.Since(r.Start) > time.Minute {
		t.Errorf("start %v, end %v: want the span's times", r.Start, r.End)
	}
	r.Start, r.End = time.Time{}, time.Time{}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("span (-want +got):\n%s", diff)
	}
}

// span is an OTLP span of trace tid with id sid and n attributes.
func span(tid byte, sid byte, n int) *tracepb.Span {
	s := &tracepb.Span{TraceId: []byte{15: tid}, SpanId: []byte{7: sid}, Name: fmt.Sprint("span-", sid), Kind: tracepb.Span_SPAN_KIND_CLIENT}
	for i := range n {
		s.Attributes = append(s.Attributes, &commonpb.KeyValue{Key: fmt.Sprint("k", i),
			Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "v"}}})
	}
	return s
}

func exportReq(service string, spans ...*tracepb.Span) *coltracepb.ExportTraceServiceRequest {
	return &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name",
			Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: service}}}}},
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: spans}},
	}}}
}

// TestSink_KeepsTheLastSpansOnly: memory is bounded by --otlp-sink-spans;
// the oldest go first, the count of received spans goes on.
func TestSink_KeepsTheLastSpansOnly(t *testing.T) {
	k := newSpanSink(3)
	for _, req := range []*coltracepb.ExportTraceServiceRequest{
		exportReq("a", span(1, 1, 0), span(1, 2, 0)),
		exportReq("b", span(2, 3, 0), span(1, 4, 0), span(2, 5, 0)),
	} {
		if _, err := k.Export(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(r SpansReply) (out []string) {
		for _, s := range r.Spans {
			out = append(out, s.Service+"/"+s.SpanID[14:])
		}
		return out
	}
	all := k.spans("")
	if all.Received != 5 || all.Kept != 3 || !cmp.Equal(ids(all), []string{"b/03", "b/04", "b/05"}) {
		t.Errorf("received %d kept %d %v; want 5 received, the last 3 kept oldest first", all.Received, all.Kept, ids(all))
	}
	if got := ids(k.spans(strings.Repeat("0", 30) + "02")); !cmp.Equal(got, []string{"b/03", "b/05"}) {
		t.Errorf("trace 02: %v, want its two kept spans", got)
	}
}

// TestSpanRecord_BoundsAndStringifies: attribute values of every type as
// strings; names, keys and values cut, attributes beyond the limit counted.
func TestSpanRecord_BoundsAndStringifies(t *testing.T) {
	val := func(v *commonpb.AnyValue) *commonpb.KeyValue { return &commonpb.KeyValue{Key: "k", Value: v} }
	arr := &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: []*commonpb.AnyValue{
		{Value: &commonpb.AnyValue_IntValue{IntValue: 1}}, {Value: &commonpb.AnyValue_StringValue{StringValue: "a"}}}}}}
	kvl := &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{Values: []*commonpb.KeyValue{
		{Key: "x", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: false}}}}}}}
	for _, c := range []struct {
		v    *commonpb.AnyValue
		want string
	}{
		{&commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: -7}}, "-7"},
		{&commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: math.Inf(1)}}, "+Inf"},
		{&commonpb.AnyValue{Value: &commonpb.AnyValue_BytesValue{BytesValue: []byte{0xca, 0xfe}}}, "cafe"},
		{arr, `[1,"a"]`},
		{kvl, `{"x":false}`},
		{&commonpb.AnyValue{}, ""},
		{&commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: strings.Repeat("é", 200)}}, strings.Repeat("é", maxSinkValue/2)},
	} {
		r := spanRecord(&tracepb.Span{Attributes: []*commonpb.KeyValue{val(c.v)}}, "")
		if got := r.Attributes["k"]; got != c.want {
			t.Errorf("%v: %q, want %q", c.v, got, c.want)
		}
	}
	s := span(1, 1, maxSinkAttrs+5)
	s.Name = strings.Repeat("n", 1000)
	s.DroppedAttributesCount = 2
	r := spanRecord(s, "svc")
	if len(r.Attributes) != maxSinkAttrs || r.DroppedAttributes != 7 || len(r.Name) != maxSinkKey || r.ParentSpanID != "" || r.Kind != "CLIENT" {
		t.Errorf("%d attributes, %d dropped, name of %d bytes, parent %q, kind %q; want %d, 7, %d, none, CLIENT",
			len(r.Attributes), r.DroppedAttributes, len(r.Name), r.ParentSpanID, r.Kind, maxSinkAttrs, maxSinkKey)
	}
}

func TestSpans_OnlyWithTheSinkAndAValidTraceID(t *testing.T) {
	plain := httptest.NewServer(newServer(t, Config{}).Handler())
	defer plain.Close()
	sink := httptest.NewServer(newServer(t, Config{OTLPSink: ":0"}).Handler())
	defer sink.Close()
	if r := getSpans(t, sink.URL, ""); r.Spans == nil || len(r.Spans) != 0 || r.Received != 0 {
		t.Errorf("empty sink: %+v, want an empty list", r)
	}
	for _, c := range []struct {
		url  string
		want int
	}{
		{plain.URL + "/spans", http.StatusNotFound},
		{sink.URL + "/spans?traceId=xyz", http.StatusBadRequest},
		{sink.URL + "/spans?traceId=4bf92f3577b34da6", http.StatusBadRequest},
	} {
		resp, err := http.Get(c.url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("GET %s: %s, want %d", c.url, resp.Status, c.want)
		}
	}
}

func TestServe_OTLPListenerNeedsTheSink(t *testing.T) {
	var lns [2]net.Listener
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = ln
	}
	err := newServer(t, Config{}).Serve(context.Background(), Listeners{HTTP: lns[0], OTLP: lns[1]})
	if err == nil || !strings.Contains(err.Error(), "OTLPSink") {
		t.Errorf("Serve = %v, want an error naming Config.OTLPSink", err)
	}
}

func TestParseFlags_OTLPSink(t *testing.T) {
	none := func(string) string { return "" }
	cfg, err := parseFlags([]string{"--otlp-sink-addr=:4317", "--otlp-sink-spans=50"}, none, io.Discard)
	if err != nil || cfg.OTLPSink != ":4317" || cfg.SinkSpans != 50 {
		t.Errorf("parseFlags: %+v, %v", cfg, err)
	}
	if cfg, err := parseFlags(nil, none, io.Discard); err != nil || cfg.OTLPSink != "" || cfg.SinkSpans != DefaultSinkSpans {
		t.Errorf("defaults: %+v, %v; want no sink, %d spans", cfg, err, DefaultSinkSpans)
	}
	for _, n := range []string{"0", "-1", "100001"} {
		if _, err := parseFlags([]string{"--otlp-sink-spans=" + n}, none, io.Discard); err == nil || !strings.Contains(err.Error(), "--otlp-sink-spans") {
			t.Errorf("--otlp-sink-spans=%s: %v, want an error naming the flag", n, err)
		}
	}
}

// TestRoot_ShowsTheTraceparentReceived: a tracing proxy in front names its
// span in the traceparent; the reply shows what arrived.
func TestRoot_ShowsTheTraceparentReceived(t *testing.T) {
	ts := httptest.NewServer(newServer(t, Config{}).Handler())
	defer ts.Close()
	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/", nil)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req.Header.Set("traceparent", tp)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r Reply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.TraceParent != tp {
		t.Errorf("reply traceparent %q (%v), want %q", r.TraceParent, err, tp)
	}
	if r := getReply(t, ts.URL+"/", http.StatusOK); r.TraceParent != "" {
		t.Errorf("reply without a traceparent shows %q", r.TraceParent)
	}
}
