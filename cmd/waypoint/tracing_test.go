package main

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/waypoint/tracing"
	"github.com/ambientmesh/ambient/waypoint/tracing/tracingtest"
)

func TestParseFlags_TracingOffByDefaultAtIstiosSampling(t *testing.T) {
	base := []string{"--gateway", "shop/waypoint", "--local-config", "x", "--ca-cert", "c", "--ca-key", "k"}
	o, err := parseFlags(base, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.otlpEndpoint != "" || o.otlpInsecure || o.traceSampling != 1 {
		t.Errorf("defaults: endpoint %q insecure %v sampling %v; want off, TLS, 1%%", o.otlpEndpoint, o.otlpInsecure, o.traceSampling)
	}
	tr, stop, err := startTracing(o, slog.New(slog.DiscardHandler))
	if err != nil || tr != nil {
		t.Fatalf("startTracing without --otlp-endpoint = %v, %v; want no Tracer", tr, err)
	}
	stop()
	for _, bad := range []string{"-1", "100.1", "NaN"} {
		_, err := parseFlags(append(base, "--otlp-endpoint", "collector:4317", "--trace-sampling", bad), io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--trace-sampling") {
			t.Errorf("--trace-sampling %s: %v, want an error naming the flag", bad, err)
		}
	}
}

// TestStartTracing_NamesTheWaypointAndFlushesOnStop: the resource names
// the waypoint "<gateway>.<namespace>", and stop exports what is left.
func TestStartTracing_NamesTheWaypointAndFlushesOnStop(t *testing.T) {
	col := tracingtest.NewCollector(t)
	o, err := parseFlags([]string{"--gateway", "shop/waypoint", "--local-config", "x", "--ca-cert", "c", "--ca-key", "k",
		"--otlp-endpoint", col.Addr, "--otlp-insecure", "--trace-sampling", "100"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o.podName = "waypoint-7d9f-abcde"
	tr, stop, err := startTracing(o, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	sp := tr.StartServer(http.Header{}, "GET", time.Now())
	sp.End(tracing.Outcome{StatusCode: 200})
	stop()
	got := col.Trace(sp.SpanContext().TraceID().String())
	if len(got) != 1 {
		t.Fatalf("after stop the collector has %d spans of the trace, want 1", len(got))
	}
	want := map[string]any{"service.name": "waypoint.shop", "service.namespace": "shop", "k8s.namespace.name": "shop",
		"k8s.pod.name": "waypoint-7d9f-abcde", "service.instance.id": "waypoint-7d9f-abcde"}
	for k, v := range want {
		if got[0].Resource[k] != v {
			t.Errorf("resource %s = %v, want %v", k, got[0].Resource[k], v)
		}
	}
}
