package telemetry

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// awkward are strings encoding/json escapes in every way it has.
var awkward = []string{"", "plain", `quo"te`, `back\slash`, "<script>&amp;</script>", "tab\tnl\ncr\rbs\bff\f",
	"ctl\x00\x01\x1f\x7f", "bad utf8 \xff\xfe end", "truncated \xe2\x80", "sep\u2028par\u2029", "ünïcødé ✓ 😀",
	"/path?q=1#frag", "spiffe://cluster.local/ns/shop/sa/frontend"}

func TestFlow_AppendJSONIsMarshalJSON(t *testing.T) {
	flows := []Flow{sample, {}, flowN(7)}
	for i, s := range awkward {
		f := sample
		f.Src.Workload, f.Dst.Service, f.Path, f.Error, f.Method = s, s, s, s, awkward[(i+1)%len(awkward)]
		f.ResponseCode, f.ResponseFlags, f.Protocol, f.Policy = i*37, s, s, s
		f.Duration = time.Duration(i) * 1234567 * time.Nanosecond
		f.Start = time.Date(2026, 11, 25, 23, 0, i, i*1000003, time.FixedZone("X", 3600*i))
		flows = append(flows, f)
	}
	for _, d := range []time.Duration{time.Microsecond, 999 * time.Nanosecond, time.Hour * 24 * 365 * 200, -5 * time.Millisecond, 1<<63 - 1} {
		f := sample
		f.Duration = d
		flows = append(flows, f)
	}
	for _, f := range flows {
		want, err := f.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		got, ok := f.appendJSON(nil)
		if !ok || !bytes.Equal(got, want) {
			t.Errorf("appendJSON = %s (%v)\nMarshalJSON = %s", got, ok, want)
		}
	}
}

func TestFlow_AppendJSONRefusesWhatMarshalJSONRefuses(t *testing.T) {
	f := sample
	f.Start = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := f.MarshalJSON(); err == nil {
		t.Fatal("MarshalJSON accepted the year 10000")
	}
	if _, ok := f.appendJSON(nil); ok {
		t.Error("appendJSON accepted the year 10000")
	}
	var buf bytes.Buffer
	if err := NewFlowLog(&buf).Record(f); err == nil || buf.Len() != 0 {
		t.Errorf("Record: %v, wrote %q; want MarshalJSON's error and nothing written", err, buf.String())
	}
}

func FuzzFlow_AppendJSON(f *testing.F) {
	for _, s := range awkward {
		f.Add(s, int64(len(s))*1e6, len(s))
	}
	f.Fuzz(func(t *testing.T, s string, d int64, code int) {
		fl := sample
		fl.Src.Identity, fl.Dst.Addr, fl.Path, fl.Duration, fl.ResponseCode = s, s, s, time.Duration(d), code
		want, err := fl.MarshalJSON()
		got, ok := fl.appendJSON(nil)
		if err != nil || !ok || !bytes.Equal(got, want) {
			t.Fatalf("appendJSON = %s (%v)\nMarshalJSON = %s (%v)", got, ok, want, err)
		}
	})
}

func TestFlowLog_RecordAllocatesNothing(t *testing.T) {
	buffered := NewBufferedFlowLog(io.Discard, time.Hour)
	defer buffered.Close()
	for range 100 { // grow the buffer and arm the flush timer
		buffered.Record(sample)
	}
	buffered.Flush()
	buffered.Record(sample)
	for name, l := range map[string]*FlowLog{"unbuffered": NewFlowLog(io.Discard), "buffered": buffered} {
		if n := testing.AllocsPerRun(50, func() { l.Record(sample) }); n != 0 {
			t.Errorf("%s: %v allocations per Record, want 0", name, n)
		}
	}
}

// observeByLabels is Observe without the cache: the series looked up by
// their labels.
func (m *HTTPMetrics) observeByLabels(r Request) {
	l := m.labels(r)
	m.requests.WithLabelValues(l...).Inc()
	m.duration.WithLabelValues(l...).Observe(float64(r.Duration) / float64(time.Millisecond))
	m.reqBytes.WithLabelValues(l...).Observe(float64(r.BytesSent))
	m.respBytes.WithLabelValues(l...).Observe(float64(r.BytesRecv))
}

// requestKinds are requests differing in each label's input.
func requestKinds() []Request {
	base := Request{Flow: sample, Protocol: "http"}
	base.Reporter, base.ResponseCode = "waypoint", 200
	var out []Request
	for i, mod := range []func(*Request){
		func(*Request) {},
		func(r *Request) { r.Src.Workload = "" },
		func(r *Request) { r.Src.App = "other" },
		func(r *Request) { r.Src.Version = "v9" },
		func(r *Request) { r.Src.Namespace = "other" },
		func(r *Request) { r.Src.Identity = "spiffe://cluster.local/ns/x/sa/y" },
		func(r *Request) { r.Src.Addr = "10.0.0.9:1" }, // no label: the same series as the first
		func(r *Request) { r.Dst.Service = "other.x.svc.cluster.local" },
		func(r *Request) { r.Dst.Workload = "backend-2" },
		func(r *Request) { r.Dst.App = "" },
		func(r *Request) { r.Dst.Version = "" },
		func(r *Request) { r.Dst.Namespace = "x" },
		func(r *Request) { r.Dst.Identity = "" },
		func(r *Request) { r.Protocol = "" },
		func(r *Request) { r.Protocol = "grpc"; r.GRPCStatus = "14" },
		func(r *Request) { r.ResponseCode = 0 },
		func(r *Request) { r.ResponseCode = 503; r.Flags = "UF,URX" },
		func(r *Request) { r.Flags = "-" },
		func(r *Request) { r.Security = "" },
		func(r *Request) { r.Reporter = "" },
	} {
		r := base
		mod(&r)
		r.Duration, r.BytesSent, r.BytesRecv = time.Duration(i)*time.Millisecond, int64(i*100), int64(i*1000)
		out = append(out, r)
	}
	return out
}

func TestHTTPMetrics_CachedSeriesAreTheLabelledOnes(t *testing.T) {
	regs := [2]*prometheus.Registry{prometheus.NewRegistry(), prometheus.NewRegistry()}
	var ms [2]*HTTPMetrics
	for i := range ms {
		var err error
		if ms[i], err = NewHTTPMetrics(regs[i], "Kubernetes"); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		for _, r := range requestKinds() {
			ms[0].Observe(r)
			ms[1].observeByLabels(r)
		}
	}
	got, want := samplesOf(t, regs[0]), samplesOf(t, regs[1])
	// Three kinds have the first one's labels: another address, protocol
	// "" (http) and flags "-" (none).
	if distinct := len(requestKinds()) - 3; len(want) != 4*distinct {
		t.Fatalf("%d series by labels, want %d", len(want), 4*distinct)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d series, want %d", len(got), len(want))
	}
}

// samplesOf renders every series of reg: name and labels → value (a
// counter's; a histogram's count, sum and buckets).
func samplesOf(t *testing.T, reg *prometheus.Registry) map[string]string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var k strings.Builder
			k.WriteString(mf.GetName())
			for _, l := range m.GetLabel() {
				fmt.Fprintf(&k, ",%s=%q", l.GetName(), l.GetValue())
			}
			v := fmt.Sprint(m.GetCounter().GetValue())
			if h := m.GetHistogram(); h != nil {
				v = fmt.Sprint(h.GetSampleCount(), h.GetSampleSum())
				for _, b := range h.GetBucket() {
					v += fmt.Sprintf(" %v:%d", b.GetUpperBound(), b.GetCumulativeCount())
				}
			}
			out[k.String()] = v
		}
	}
	return out
}

func TestHTTPMetrics_CacheIsBounded(t *testing.T) {
	m, err := NewHTTPMetrics(prometheus.NewRegistry(), "Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	r := requestKinds()[0]
	for i := range maxCachedSeries + 10 {
		r.Src.Workload = fmt.Sprintf("client-%d", i)
		m.Observe(r)
	}
	m.Observe(r) // beyond the bound: counted all the same
	if n := len(m.series); n != maxCachedSeries {
		t.Errorf("%d series cached, want %d", n, maxCachedSeries)
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues(m.labels(r)...)); got != 2 {
		t.Errorf("an uncached series counted %v requests, want 2", got)
	}
}

func TestHTTPMetrics_ObserveOfAKnownKindAllocatesNothing(t *testing.T) {
	m, err := NewHTTPMetrics(prometheus.NewRegistry(), "Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	r := requestKinds()[0]
	m.Observe(r)
	if n := testing.AllocsPerRun(100, func() { m.Observe(r) }); n != 0 {
		t.Errorf("%v allocations per Observe, want 0", n)
	}
}
