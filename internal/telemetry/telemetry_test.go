package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ambientmesh/ambient/internal/metricstest"
)

var sample = Flow{
	Start:    time.Date(2026, 11, 25, 23, 0, 0, 0, time.UTC),
	Reporter: "destination",
	Src: Peer{Workload: "frontend-1", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/frontend",
		App: "frontend", Addr: "10.244.1.5:41234"},
	Dst: Peer{Workload: "backend-1", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/backend",
		App: "backend", Version: "v1", Addr: "10.244.2.7:8080", Service: "backend.shop.svc.cluster.local"},
	BytesSent: 512, BytesRecv: 1024, Duration: 12500 * time.Microsecond,
	Decision: Allow, Policy: "shop/allow-frontend", Security: "mutual_tls", Transport: "hbone",
}

func TestFlowLog_OneJSONLinePerFlow(t *testing.T) {
	var buf bytes.Buffer
	log := NewFlowLog(&buf)
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() { defer wg.Done(); log.Record(sample) }()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 50 {
		t.Fatalf("got %d lines, want 50", len(lines))
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"src.identity": "spiffe://cluster.local/ns/shop/sa/frontend", "dst.service": "backend.shop.svc.cluster.local",
		"bytes_sent": 512.0, "bytes_received": 1024.0, "duration_ms": 12.5, "decision": "allow",
		"policy": "shop/allow-frontend", "reporter": "destination", "start": "2026-11-25T23:00:00Z",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestMetrics_IstioNamesAndLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	m.Opened(sample)
	m.Closed(sample)
	denied := sample
	denied.Decision, denied.BytesSent, denied.BytesRecv = Deny, 0, 0
	m.Opened(denied)
	m.Closed(denied)

	const want = `
# HELP istio_tcp_sent_bytes_total Bytes sent during TCP connections (source to destination).
# TYPE istio_tcp_sent_bytes_total counter
istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls",destination_app="backend",destination_canonical_revision="v1",destination_canonical_service="backend",destination_cluster="Kubernetes",destination_principal="cluster.local/ns/shop/sa/backend",destination_service="backend.shop.svc.cluster.local",destination_service_name="backend",destination_service_namespace="shop",destination_version="v1",destination_workload="backend-1",destination_workload_namespace="shop",reporter="destination",request_protocol="tcp",response_flags="-",source_app="frontend",source_canonical_revision="unknown",source_canonical_service="frontend",source_cluster="Kubernetes",source_principal="cluster.local/ns/shop/sa/frontend",source_version="unknown",source_workload="frontend-1",source_workload_namespace="shop"} 512
istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls",destination_app="backend",destination_canonical_revision="v1",destination_canonical_service="backend",destination_cluster="Kubernetes",destination_principal="cluster.local/ns/shop/sa/backend",destination_service="backend.shop.svc.cluster.local",destination_service_name="backend",destination_service_namespace="shop",destination_version="v1",destination_workload="backend-1",destination_workload_namespace="shop",reporter="destination",request_protocol="tcp",response_flags="DENIED",source_app="frontend",source_canonical_revision="unknown",source_canonical_service="frontend",source_cluster="Kubernetes",source_principal="cluster.local/ns/shop/sa/frontend",source_version="unknown",source_workload="frontend-1",source_workload_namespace="shop"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "istio_tcp_sent_bytes_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "istio_tcp_connections_opened_total"); n != 2 {
		t.Fatalf("opened series = %d, want 2", n)
	}
}

func TestSplitService(t *testing.T) {
	for host, want := range map[string][2]string{
		"backend.shop.svc.cluster.local": {"backend", "shop"},
		"backend":                        {"backend", ""},
		"":                               {"", ""},
	} {
		if n, ns := splitService(host); n != want[0] || ns != want[1] {
			t.Errorf("splitService(%q) = %q, %q, want %q", host, n, ns, want)
		}
	}
}

// TestMetrics_TunnelTransportsCountedApart: tunnelled connections are
// counted by transport in a metric of our own (Istio's keep Istio's
// labels); other connections are not; fallbacks have their own counter.
func TestMetrics_TunnelTransportsCountedApart(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []string{TransportHBONE3, TransportHBONE3, TransportHBONE, "passthrough", "plaintext"} {
		f := sample
		f.Transport = tr
		m.Opened(f)
	}
	m.QUICFallback()
	const want = `
# HELP ambient_tunnel_connections_total Tunnelled connections opened, by the transport that carried them (hbone: HTTP/2 on TCP, hbone3: HTTP/3 on QUIC).
# TYPE ambient_tunnel_connections_total counter
ambient_tunnel_connections_total{reporter="destination",transport="hbone"} 1
ambient_tunnel_connections_total{reporter="destination",transport="hbone3"} 2
# HELP ambient_tunnel_quic_fallbacks_total QUIC tunnel dials that failed before the peer answered and were retried over HTTP/2.
# TYPE ambient_tunnel_quic_fallbacks_total counter
ambient_tunnel_quic_fallbacks_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ambient_tunnel_connections_total", "ambient_tunnel_quic_fallbacks_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "istio_tcp_connections_opened_total"); n != 1 {
		t.Fatalf("Istio's series = %d, want 1: the transport is not one of its labels", n)
	}
}

func TestMetrics_UDPFlowsCountedApartFromTCP(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	udp := sample
	udp.Protocol, udp.Transport = ProtocolUDP, TransportHBONE3
	m.Opened(udp)
	m.Closed(udp)
	m.Opened(sample)
	m.Closed(sample)
	for name, want := range map[string]float64{
		"ambient_udp_flows_opened_total": 1, "ambient_udp_flows_closed_total": 1,
		"ambient_udp_sent_bytes_total": 512, "ambient_udp_received_bytes_total": 1024,
		"istio_tcp_connections_opened_total": 1, "istio_tcp_sent_bytes_total": 512,
	} {
		if got := metricstest.Sum(t, reg, name, nil); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// The UDP series say so; the tunnel-connection counter is TCP's alone.
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "ambient_udp_flows_opened_total" {
			continue
		}
		for _, l := range mf.GetMetric()[0].GetLabel() {
			if l.GetName() == "request_protocol" && l.GetValue() != "udp" {
				t.Errorf("request_protocol = %q, want udp", l.GetValue())
			}
		}
	}
	if got := metricstest.Sum(t, reg, "ambient_tunnel_connections_total", nil); got != 1 {
		t.Errorf("ambient_tunnel_connections_total = %v, want 1 (the TCP connection; a UDP flow is not one)", got)
	}
}

// lockedBuffer counts the writes it takes.
type lockedBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
	err    error
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.writes++
	if b.err != nil {
		return 0, b.err
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) state() (lines, writes int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), "\n"), b.writes
}

func TestBufferedFlowLog_WritesLinesTogether(t *testing.T) {
	var out lockedBuffer
	log := NewBufferedFlowLog(&out, time.Hour)
	for range 100 {
		log.Record(sample)
	}
	if lines, writes := out.state(); lines != 0 || writes != 0 {
		t.Fatalf("before the interval: %d lines in %d writes, want none", lines, writes)
	}
	if err := log.Flush(); err != nil {
		t.Fatal(err)
	}
	if lines, writes := out.state(); lines != 100 || writes != 1 {
		t.Fatalf("after Flush: %d lines in %d writes, want 100 in 1", lines, writes)
	}
	// A full buffer is written without waiting for the interval.
	n := flowLogBuffer/len(mustJSON(t, sample)) + 1
	for range n {
		log.Record(sample)
	}
	if lines, writes := out.state(); lines != 100+n || writes != 2 {
		t.Fatalf("after %d more: %d lines in %d writes, want %d in 2", n, lines, writes, 100+n)
	}
	// Close writes the rest, and later records go out at once.
	log.Record(sample)
	log.Close()
	log.Record(sample)
	if lines, _ := out.state(); lines != 102+n {
		t.Fatalf("after Close: %d lines, want %d", lines, 102+n)
	}
}

func TestBufferedFlowLog_FlushesAfterTheInterval(t *testing.T) {
	var out lockedBuffer
	log := NewBufferedFlowLog(&out, 10*time.Millisecond)
	log.Record(sample)
	deadline := time.Now().Add(10 * time.Second)
	for lines, _ := out.state(); lines != 1; lines, _ = out.state() {
		if time.Now().After(deadline) {
			t.Fatal("the line was not written within 10 s of a 10 ms interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBufferedFlowLog_ReportsAFailedWriteOnce(t *testing.T) {
	out := lockedBuffer{err: errors.New("disk full")}
	log := NewBufferedFlowLog(&out, time.Hour)
	log.Record(sample)
	if err := log.Flush(); err == nil || err.Error() != "disk full" {
		t.Fatalf("Flush = %v, want disk full", err)
	}
	log.Record(sample)
	if err := log.Flush(); err == nil {
		t.Fatal("second failing Flush = nil")
	}
	out.mu.Lock()
	out.err = nil
	out.mu.Unlock()
	if err := log.Record(sample); err != nil {
		t.Fatalf("Record after the sink recovered = %v (an error is reported once)", err)
	}
}

func mustJSON(t *testing.T, f Flow) []byte {
	t.Helper()
	b, err := f.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// TestFlow_ProtocolOnlyForUDP: a UDP flow's record says "protocol": "udp";
// a TCP flow's record has no protocol field, as before there was one.
func TestFlow_ProtocolOnlyForUDP(t *testing.T) {
	tcp, err := sample.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(tcp, []byte(`"protocol"`)) {
		t.Errorf("TCP flow record has a protocol field: %s", tcp)
	}
	udp := sample
	udp.Protocol = ProtocolUDP
	b, err := udp.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["protocol"] != "udp" || got["transport"] != "hbone" {
		t.Errorf("UDP flow record: %s", b)
	}
	if !bytes.Equal(bytes.Replace(b, []byte(`,"protocol":"udp"`), nil, 1), tcp) {
		t.Errorf("UDP record differs from TCP's beyond the protocol:\n%s\n%s", b, tcp)
	}
}
