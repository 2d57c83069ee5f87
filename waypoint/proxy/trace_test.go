package proxy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/ambientmesh/ambient/waypoint/proxy"
	"github.com/ambientmesh/ambient/waypoint/tracing"
	"github.com/ambientmesh/ambient/waypoint/tracing/tracingtest"
)

const (
	callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan  = "00f067aa0ba902b7"
)

// splitTraceparent splits a version-00 traceparent.
func splitTraceparent(t *testing.T, v string) (traceID, parentID, flags string) {
	t.Helper()
	parts := strings.Split(v, "-")
	if len(parts) != 4 || parts[0] != "00" || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		t.Fatalf("traceparent %q is not version 00", v)
	}
	return parts[1], parts[2], parts[3]
}

// TestWaypoint_Tracing runs the test mesh with a Tracer exporting to an
// in-process OTLP collector: one request's trace shows the waypoint's
// server span under the caller's trace id, and the backend sees the
// waypoint's span as its parent.
func TestWaypoint_Tracing(t *testing.T) {
	col := tracingtest.NewCollector(t)
	tr, err := tracing.New(tracing.Config{Endpoint: col.Addr, Insecure: true, SamplingPercent: 0,
		ServiceName: "waypoint.shop", BatchTimeout: 100 * time.Millisecond, ExportTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tr.Shutdown(ctx); err != nil {
			t.Errorf("tracer shutdown: %v", err)
		}
	})
	m := newTestMesh(t, func(c *proxy.Config) { c.Tracer = tr })
	c := m.httpClient(t, false)
	m.setL7(t, "")

	// exported waits until the waypoint has recorded the request to path
	// (its span ended before its flow record), flushes, and returns the
	// spans of trace traceID.
	exported := func(t *testing.T, path, traceID string) []tracingtest.Span {
		t.Helper()
		findFlow(t, m.wpLog, map[string]any{"reporter": "waypoint", "path": path})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tr.ForceFlush(ctx); err != nil {
			t.Fatal(err)
		}
		return col.Trace(traceID)
	}

	t.Run("a sampled caller's trace gets the waypoint's span; the backend sees it as parent", func(t *testing.T) {
		for _, h2 := range []bool{false, true} {
			path, proto := "/traced/h1", "1.1"
			if h2 {
				path, proto = "/traced/h2", "2"
			}
			r := do(t, m.httpClient(t, h2), "GET", path, map[string]string{"traceparent": "00-" + callerTrace + "-" + callerSpan + "-01"})
			if r.code != 200 {
				t.Fatalf("GET %s: %d %q", path, r.code, r.body)
			}
			tid, pid, flags := splitTraceparent(t, r.header.Get("X-Seen-Traceparent"))
			if tid != callerTrace || pid == callerSpan || flags != "01" {
				t.Fatalf("the backend saw traceparent %q; want trace id %s, a parent id other than the caller's %s, flags 01",
					r.header.Get("X-Seen-Traceparent"), callerTrace, callerSpan)
			}
			var s tracingtest.Span
			for _, sp := range exported(t, path, callerTrace) {
				if sp.SpanID() == pid {
					s = sp
				}
			}
			if s.Span == nil {
				t.Fatalf("no span %s (the backend's parent) at the collector in trace %s", pid, callerTrace)
			}
			if s.ParentID() != callerSpan || s.GetKind() != tracepb.Span_SPAN_KIND_SERVER || s.GetName() != "GET" {
				t.Errorf("span parent %s kind %v name %q; want parent %s (the caller's span), SERVER, GET", s.ParentID(), s.GetKind(), s.GetName(), callerSpan)
			}
			if s.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_UNSET {
				t.Errorf("span status %v for a 200", s.GetStatus())
			}
			backend := m.v1
			if r.body == "v2" {
				backend = m.v2
			}
			want := map[string]any{
				"http.request.method": "GET", "url.path": path, "url.scheme": "http",
				"http.response.status_code": int64(200), "network.protocol.version": proto,
				"server.address": serverVIP, "server.port": int64(80),
				"mesh.source.principal": id("client"), "mesh.source.workload": "client-1", "mesh.source.namespace": "shop",
				"mesh.destination.principal": id("server"), "mesh.destination.service": serverHost,
				"mesh.destination.workload": "server-" + r.body + "-1",
				"mesh.upstream.address":     backend.IP.String() + ":8080",
				"mesh.response_flags":       "-",
				"client.address":            m.client.IP.String(),
			}
			attrs := s.Attrs()
			for k, v := range want {
				if attrs[k] != v {
					t.Errorf("%s: attribute %s = %#v, want %#v", path, k, attrs[k], v)
				}
			}
			if s.Resource["service.name"] != "waypoint.shop" {
				t.Errorf("resource service.name %v, want waypoint.shop", s.Resource["service.name"])
			}
		}
	})

	t.Run("an unsampled caller at 0% sampling: propagated, nothing exported", func(t *testing.T) {
		const trace = "5bf92f3577b34da6a3ce929d0e0e4737"
		r := do(t, c, "GET", "/unsampled", map[string]string{"traceparent": "00-" + trace + "-" + callerSpan + "-00"})
		if r.code != 200 {
			t.Fatalf("%d %q", r.code, r.body)
		}
		tid, pid, flags := splitTraceparent(t, r.header.Get("X-Seen-Traceparent"))
		if tid != trace || pid == callerSpan || flags != "00" {
			t.Errorf("the backend saw traceparent %q; want trace id %s, the waypoint's parent id, flags 00", r.header.Get("X-Seen-Traceparent"), trace)
		}
		if got := exported(t, "/unsampled", trace); len(got) != 0 {
			t.Errorf("%d spans exported of an unsampled trace", len(got))
		}
	})

	t.Run("no traceparent at 100% sampling: a new trace, which the backend sees", func(t *testing.T) {
		if err := tr.SetSampling(100); err != nil {
			t.Fatal(err)
		}
		defer tr.SetSampling(0)
		r := do(t, c, "GET", "/fresh", nil)
		if r.code != 200 {
			t.Fatalf("%d %q", r.code, r.body)
		}
		tid, pid, flags := splitTraceparent(t, r.header.Get("X-Seen-Traceparent"))
		if flags != "01" {
			t.Errorf("the backend saw flags %s, want 01 (sampled)", flags)
		}
		got := exported(t, "/fresh", tid)
		if len(got) != 1 || got[0].SpanID() != pid || got[0].ParentID() != "" {
			t.Fatalf("collector has %d spans of the new trace %s; want one root span %s", len(got), tid, pid)
		}
	})

	t.Run("a local 503 is an error span with the response flags", func(t *testing.T) {
		m.setL7(t, serverRoute(`    backends: [{destination: {service: shop/nowhere.shop.svc.cluster.local, port: 80}, weight: 1}]
`))
		defer m.setL7(t, "")
		const trace = "6bf92f3577b34da6a3ce929d0e0e4738"
		r := do(t, c, "GET", "/nowhere", map[string]string{"traceparent": "00-" + trace + "-" + callerSpan + "-01"})
		if r.code != 503 {
			t.Fatalf("%d %q, want 503", r.code, r.body)
		}
		got := exported(t, "/nowhere", trace)
		if len(got) != 1 {
			t.Fatalf("%d spans of trace %s exported, want 1", len(got), trace)
		}
		s := got[0]
		if s.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_ERROR || s.Attrs()["error.type"] != "503" ||
			s.Attrs()["mesh.response_flags"] != "UH" || s.Attrs()["http.response.status_code"] != int64(503) {
			t.Errorf("span status %v, attributes %v; want Error, error.type 503, flags UH", s.GetStatus(), s.Attrs())
		}
	})
}
