package tracing_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"

	"github.com/ambientmesh/ambient/internal/logtest"
	"github.com/ambientmesh/ambient/waypoint/tracing"
	"github.com/ambientmesh/ambient/waypoint/tracing/tracingtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan  = "00f067aa0ba902b7"
)

func traceparent(flags string) string { return "00-" + callerTrace + "-" + callerSpan + "-" + flags }

func newTracer(t *testing.T, c *tracingtest.Collector, percent float64, mod ...func(*tracing.Config)) *tracing.Tracer {
	t.Helper()
	cfg := tracing.Config{Endpoint: c.Addr, Insecure: true, SamplingPercent: percent, ServiceName: "waypoint.shop",
		Attributes: []attribute.KeyValue{attribute.String("service.namespace", "shop")}, ExportTimeout: 5 * time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	tr, err := tracing.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tr.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return tr
}

func flush(t *testing.T, tr *tracing.Tracer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
}

// parseTraceparent splits a version-00 traceparent.
func parseTraceparent(t *testing.T, v string) (traceID, parentID, flags string) {
	t.Helper()
	parts := strings.Split(v, "-")
	if len(parts) != 4 || parts[0] != "00" || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		t.Fatalf("traceparent %q is not version 00", v)
	}
	return parts[1], parts[2], parts[3]
}

func TestStartServer_ChildOfCallerExportedWithItsTraceID(t *testing.T) {
	c := tracingtest.NewCollector(t)
	tr := newTracer(t, c, 0)
	in := http.Header{"Traceparent": {traceparent("01")}, "Tracestate": {"vendor=abc,other=x"}}
	start := time.Now().Add(-50 * time.Millisecond)
	sp := tr.StartServer(in, "GET", start)
	if !sp.Recording() {
		t.Fatal("a span whose caller sampled its trace does not record at 0% sampling")
	}
	sp.SetAttributes(attribute.String("http.request.method", "GET"))
	up := http.Header{"Traceparent": {traceparent("01")}, "Tracestate": {"vendor=abc,other=x"}}
	sp.Inject(up)
	tid, pid, flags := parseTraceparent(t, up.Get("Traceparent"))
	if tid != callerTrace || flags != "01" {
		t.Errorf("upstream traceparent %q: want trace id %s and flags 01", up.Get("Traceparent"), callerTrace)
	}
	if pid == callerSpan || pid != sp.SpanContext().SpanID().String() {
		t.Errorf("upstream parent id %s: want the waypoint span's %s, not the caller's", pid, sp.SpanContext().SpanID())
	}
	if got := up.Values("Tracestate"); len(got) != 1 || got[0] != "vendor=abc,other=x" {
		t.Errorf("upstream tracestate %q, want the caller's", got)
	}
	end := time.Now()
	sp.End(tracing.Outcome{StatusCode: 200, Flags: "-", End: end})
	flush(t, tr)

	spans := c.Trace(callerTrace)
	if len(spans) != 1 {
		t.Fatalf("collector has %d spans of trace %s, want 1 (all: %d)", len(spans), callerTrace, len(c.Spans()))
	}
	s := spans[0]
	if s.ParentID() != callerSpan || s.SpanID() != pid || s.GetKind() != tracepb.Span_SPAN_KIND_SERVER || s.GetName() != "GET" {
		t.Errorf("span %s parent %s kind %v name %q; want span %s, parent %s, SERVER, GET", s.SpanID(), s.ParentID(), s.GetKind(), s.GetName(), pid, callerSpan)
	}
	if s.GetTraceState() != "vendor=abc,other=x" {
		t.Errorf("span tracestate %q", s.GetTraceState())
	}
	if s.GetStartTimeUnixNano() != uint64(start.UnixNano()) || s.GetEndTimeUnixNano() != uint64(end.UnixNano()) {
		t.Errorf("span times %d..%d, want %d..%d", s.GetStartTimeUnixNano(), s.GetEndTimeUnixNano(), start.UnixNano(), end.UnixNano())
	}
	want := map[string]any{"http.request.method": "GET", "http.response.status_code": int64(200), "mesh.response_flags": "-"}
	for k, v := range want {
		if got := s.Attrs()[k]; got != v {
			t.Errorf("attribute %s = %#v, want %#v", k, got, v)
		}
	}
	if _, ok := s.Attrs()["error.type"]; ok || s.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_UNSET {
		t.Errorf("a 200 has status %v and error.type %v; want Unset and none", s.GetStatus(), s.Attrs()["error.type"])
	}
	if s.Resource["service.name"] != "waypoint.shop" || s.Resource["service.namespace"] != "shop" {
		t.Errorf("resource %v: want service.name waypoint.shop, service.namespace shop", s.Resource)
	}
}

// TestSampling_ParentBasedWithRatioForRoots: the caller's sampled flag
// decides for its trace whatever the ratio; requests without a
// traceparent start a trace sampled at the ratio. Every span is propagated
// with its own id, the flag telling the decision.
func TestSampling_ParentBasedWithRatioForRoots(t *testing.T) {
	c := tracingtest.NewCollector(t)
	for _, tc := range []struct {
		name       string
		in         string
		percent    float64
		exported   bool
		fromCaller bool // the trace is the caller's
	}{
		{"caller sampled, 0%", traceparent("01"), 0, true, true},
		{"caller sampled, 100%", traceparent("01"), 100, true, true},
		{"caller not sampled, 0%", traceparent("00"), 0, false, true},
		{"caller not sampled, 100%", traceparent("00"), 100, false, true},
		{"no caller, 0%", "", 0, false, false},
		{"no caller, 100%", "", 100, true, false},
		{"invalid traceparent, 100%: a new trace", "00-" + strings.Repeat("0", 32) + "-" + callerSpan + "-01", 100, true, false},
		{"upper-case hex is invalid, 0%: a new unsampled trace", "00-" + strings.ToUpper(callerTrace) + "-" + callerSpan + "-01", 0, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracer(t, c, tc.percent)
			in := http.Header{}
			if tc.in != "" {
				in.Set("Traceparent", tc.in)
			}
			sp := tr.StartServer(in, "GET", time.Now())
			if sp.Recording() != tc.exported {
				t.Errorf("recording %v, want %v", sp.Recording(), tc.exported)
			}
			up := in.Clone()
			sp.Inject(up)
			tid, pid, flags := parseTraceparent(t, up.Get("Traceparent"))
			if tc.fromCaller && tid != callerTrace {
				t.Errorf("trace id %s, want the caller's %s", tid, callerTrace)
			}
			if !tc.fromCaller && tid == callerTrace {
				t.Errorf("trace id %s: want a new trace", tid)
			}
			if pid == callerSpan {
				t.Errorf("parent id is the caller's span, want the waypoint's")
			}
			if wantFlags := map[bool]string{true: "01", false: "00"}[tc.exported]; flags != wantFlags {
				t.Errorf("flags %s, want %s", flags, wantFlags)
			}
			sp.End(tracing.Outcome{StatusCode: 200})
			flush(t, tr)
			var got []tracingtest.Span
			for _, s := range c.Trace(tid) {
				if s.SpanID() == pid {
					got = append(got, s)
				}
			}
			if tc.exported != (len(got) == 1) {
				t.Fatalf("collector has %d spans %s of trace %s; exported should be %v", len(got), pid, tid, tc.exported)
			}
			if tc.exported && !tc.fromCaller && got[0].ParentID() != "" {
				t.Errorf("a new trace's span has parent %s", got[0].ParentID())
			}
		})
	}
}

func TestEnd_StatusAfterHTTPServerConventions(t *testing.T) {
	c := tracingtest.NewCollector(t)
	tr := newTracer(t, c, 100)
	for _, tc := range []struct {
		o         tracing.Outcome
		wantErr   bool
		errorType string
		message   string
	}{
		{tracing.Outcome{StatusCode: 200, Flags: "-"}, false, "", ""},
		{tracing.Outcome{StatusCode: 404, Flags: "NR"}, false, "", ""},
		{tracing.Outcome{StatusCode: 403}, false, "", ""},
		{tracing.Outcome{StatusCode: 503, Flags: "UF", Err: "dial refused"}, true, "503", "dial refused"},
		{tracing.Outcome{StatusCode: 504, Flags: "UT"}, true, "504", "Gateway Timeout"},
		{tracing.Outcome{StatusCode: 200, Flags: "UF", Err: "reading the response: EOF"}, true, "UF", "reading the response: EOF"},
		{tracing.Outcome{StatusCode: 200, Flags: "UT,DI"}, true, "UT,DI", ""},
		{tracing.Outcome{StatusCode: 200, Flags: "DI"}, false, "", ""},
		{tracing.Outcome{StatusCode: 429, Flags: "RL"}, false, "", ""},
		{tracing.Outcome{StatusCode: 0, Flags: "DC"}, true, "DC", ""},
		{tracing.Outcome{StatusCode: 0}, true, "_OTHER", ""},
	} {
		t.Run(fmt.Sprintf("%d %s", tc.o.StatusCode, tc.o.Flags), func(t *testing.T) {
			sp := tr.StartServer(http.Header{}, "GET", time.Now())
			sp.End(tc.o)
			flush(t, tr)
			got := c.Trace(sp.SpanContext().TraceID().String())
			if len(got) != 1 {
				t.Fatalf("%d spans exported, want 1", len(got))
			}
			s := got[0]
			wantCode := tracepb.Status_STATUS_CODE_UNSET
			if tc.wantErr {
				wantCode = tracepb.Status_STATUS_CODE_ERROR
			}
			if s.GetStatus().GetCode() != wantCode || s.GetStatus().GetMessage() != tc.message {
				t.Errorf("status %v %q, want %v %q", s.GetStatus().GetCode(), s.GetStatus().GetMessage(), wantCode, tc.message)
			}
			et, _ := s.Attrs()["error.type"].(string)
			if et != tc.errorType {
				t.Errorf("error.type %q, want %q", et, tc.errorType)
			}
			sc, hasCode := s.Attrs()["http.response.status_code"]
			if hasCode != (tc.o.StatusCode > 0) || (hasCode && sc != int64(tc.o.StatusCode)) {
				t.Errorf("http.response.status_code %v, want %d (absent for 0)", sc, tc.o.StatusCode)
			}
			wantFlags := tc.o.Flags
			if wantFlags == "" {
				wantFlags = "-"
			}
			if s.Attrs()["mesh.response_flags"] != wantFlags {
				t.Errorf("mesh.response_flags %v, want %q", s.Attrs()["mesh.response_flags"], wantFlags)
			}
		})
	}
}

func TestInject_DropsAnInvalidTracestate(t *testing.T) {
	c := tracingtest.NewCollector(t)
	tr := newTracer(t, c, 0)
	in := http.Header{"Traceparent": {traceparent("01")}, "Tracestate": {"not a valid=list=,,"}}
	sp := tr.StartServer(in, "GET", time.Now())
	up := in.Clone()
	sp.Inject(up)
	if v, ok := up["Tracestate"]; ok {
		t.Errorf("upstream tracestate %q, want none: the caller's did not parse", v)
	}
	if tid, _, _ := parseTraceparent(t, up.Get("Traceparent")); tid != callerTrace {
		t.Errorf("trace id %s, want the caller's", tid)
	}
	sp.End(tracing.Outcome{StatusCode: 200})
}

// TestNilTracer_CostsNothing: tracing off neither allocates nor touches the
// headers.
func TestNilTracer_CostsNothing(t *testing.T) {
	var tr *tracing.Tracer
	in := http.Header{"Traceparent": {traceparent("01")}, "Tracestate": {"vendor=abc"}}
	up := in.Clone()
	allocs := testing.AllocsPerRun(100, func() {
		sp := tr.StartServer(in, "GET", time.Time{})
		if sp.Recording() {
			sp.SetAttributes()
		}
		sp.Inject(up)
		sp.End(tracing.Outcome{StatusCode: 200, Flags: "-"})
	})
	if allocs != 0 {
		t.Errorf("%v allocations per request with tracing off, want 0", allocs)
	}
	if up.Get("Traceparent") != traceparent("01") || up.Get("Tracestate") != "vendor=abc" {
		t.Errorf("tracing off changed the headers: %v", up)
	}
	if sc := tr.StartServer(in, "GET", time.Time{}).SpanContext(); sc.IsValid() {
		t.Errorf("tracing off gave a span context %v", sc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tr.Run(ctx); err != nil || tr.ForceFlush(ctx) != nil || tr.Shutdown(ctx) != nil || tr.SetSampling(5) != nil {
		t.Error("a nil Tracer's lifecycle methods fail")
	}
}

func TestRun_FlushesWhenItsContextEnds(t *testing.T) {
	c := tracingtest.NewCollector(t)
	tr, err := tracing.New(tracing.Config{Endpoint: c.Addr, Insecure: true, SamplingPercent: 100, ServiceName: "waypoint.shop",
		BatchTimeout: time.Hour, ShutdownTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	sp := tr.StartServer(http.Header{}, "GET", time.Now())
	sp.End(tracing.Outcome{StatusCode: 200})
	if n := len(c.Spans()); n != 0 {
		t.Fatalf("%d spans exported before the batch is due", n)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return within 15s of its context ending")
	}
	if got := c.Trace(sp.SpanContext().TraceID().String()); len(got) != 1 {
		t.Fatalf("after Run returned the collector has %d of the span's trace, want 1", len(got))
	}
	// Spans after the shutdown are dropped, quietly.
	tr.StartServer(http.Header{}, "GET", time.Now()).End(tracing.Outcome{StatusCode: 200})
}

func TestExportFailure_IsLoggedOnTheTracersLogger(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	var log logtest.Buffer
	tr, err := tracing.New(tracing.Config{Endpoint: addr, Insecure: true, SamplingPercent: 100, ServiceName: "waypoint.shop",
		ExportTimeout: 300 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tr.Shutdown(ctx)
	}()
	tr.StartServer(http.Header{}, "GET", time.Now()).End(tracing.Outcome{StatusCode: 200})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr.ForceFlush(ctx)
	if s := log.String(); !strings.Contains(s, "level=WARN") || !strings.Contains(s, "spans_lost=1") || !strings.Contains(s, addr) {
		t.Errorf("log %q: want a warning naming %s and 1 span lost", s, addr)
	}
}

func TestConfig_Checked(t *testing.T) {
	for _, tc := range []struct {
		cfg  tracing.Config
		want string
	}{
		{tracing.Config{ServiceName: "w"}, "Endpoint"},
		{tracing.Config{Endpoint: "127.0.0.1:4317"}, "ServiceName"},
		{tracing.Config{Endpoint: "127.0.0.1:4317", ServiceName: "w", SamplingPercent: -1}, "0 to 100"},
		{tracing.Config{Endpoint: "127.0.0.1:4317", ServiceName: "w", SamplingPercent: 100.5}, "0 to 100"},
		{tracing.Config{Endpoint: "127.0.0.1:4317", ServiceName: "w", SamplingPercent: math.NaN()}, "0 to 100"},
	} {
		if _, err := tracing.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error about %s", tc.cfg, err, tc.want)
		}
	}
}

func TestSetSampling_ChangesTheRatioForNewTraces(t *testing.T) {
	c := tracingtest.NewCollector(t)
	tr := newTracer(t, c, 0)
	if tr.StartServer(http.Header{}, "GET", time.Now()).Recording() {
		t.Fatal("0%: a new trace was sampled")
	}
	if err := tr.SetSampling(100); err != nil {
		t.Fatal(err)
	}
	if !tr.StartServer(http.Header{}, "GET", time.Now()).Recording() || tr.Sampling() != 100 {
		t.Fatal("after SetSampling(100) a new trace was not sampled")
	}
	if err := tr.SetSampling(101); err == nil || tr.Sampling() != 100 {
		t.Errorf("SetSampling(101) = %v, sampling now %v; want an error and 100 kept", err, tr.Sampling())
	}
}
