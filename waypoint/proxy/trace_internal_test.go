package proxy

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/telemetry"
)

// TestTracingOff_NoAllocationsAndHeadersUntouched: with Config.Tracer nil
// the request path's tracing hooks neither allocate nor touch the
// upstream header.
func TestTracingOff_NoAllocationsAndHeadersUntouched(t *testing.T) {
	p := &Proxy{}
	r, err := http.NewRequest("GET", "http://10.96.0.10/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	r.Header.Set("Traceparent", tp)
	info := &tunnelInfo{authority: netip.MustParseAddrPort("10.96.0.10:80")}
	rec := &reqRecord{flow: telemetry.Flow{Start: time.Now()}, flags: flagNone}
	hdr := r.Header.Clone()
	allocs := testing.AllocsPerRun(100, func() {
		p.startTrace(rec, r, info)
		rec.trace.inject(hdr)
		p.endTrace(rec)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per request with tracing off, want 0", allocs)
	}
	if got := hdr.Get("Traceparent"); got != tp || len(hdr) != 1 {
		t.Errorf("upstream header %v, want the caller's traceparent untouched", hdr)
	}
}
