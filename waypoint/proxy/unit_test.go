package proxy

import (
	"bufio"
	"net/http"
	"strings"
	"testing"

	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/waypoint/route"
)

func TestDetect_HTTPRequestLinesAndH2PrefaceAreHTTP(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want protocol
	}{
		{"GET / HTTP/1.1\r\n", protoHTTP},
		{"POST /x HTTP/1.1\r\n", protoHTTP},
		{"M-SEARCH * HTTP/1.1\r\n", protoHTTP},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", protoHTTP},
		{"\x16\x03\x01\x02\x00", protoL4}, // TLS ClientHello
		{"PING\r\n", protoL4},             // redis inline
		{"get / HTTP/1.1\r\n", protoL4},   // methods are upper case
		{" GET", protoL4},
		{"ABCDEFGHIJKLMNOPQRSTUVWXYZ ", protoL4}, // longer than any method
		{"GET", protoL4},                         // ended before deciding
		{"", protoL4},
	} {
		got, err := detect(bufio.NewReader(strings.NewReader(tc.in)))
		if err != nil || got != tc.want {
			t.Errorf("detect(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestUpstreamHeader_DropsHopByHopKeepsTraceAndTrailers(t *testing.T) {
	r := &http.Request{Header: http.Header{
		"Connection":  {"keep-alive, X-Private"},
		"X-Private":   {"secret"},
		"Keep-Alive":  {"timeout=5"},
		"Te":          {"trailers"},
		"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"X-Keep":      {"a"},
	}}
	mut := &route.HeaderMutation{Set: []route.HeaderValue{{Name: "X-Set", Value: "1"}}, Add: []route.HeaderValue{{Name: "X-Keep", Value: "b"}}}
	h := upstreamHeader(r, []*route.HeaderMutation{mut})
	for _, k := range []string{"Connection", "X-Private", "Keep-Alive"} {
		if _, ok := h[k]; ok {
			t.Errorf("%s forwarded", k)
		}
	}
	if h.Get("Te") != "trailers" || h.Get("Traceparent") != r.Header.Get("Traceparent") || h.Get("X-Set") != "1" ||
		strings.Join(h["X-Keep"], ",") != "a,b" || h.Get("X-Forwarded-Proto") != "http" || len(h.Get("X-Request-Id")) != 36 {
		t.Errorf("forwarded header %v", h)
	}
	if strings.Join(r.Header["X-Keep"], ",") != "a" {
		t.Errorf("the client's header was modified: %v", r.Header)
	}
}

func TestCompiled_TablePrecedence(t *testing.T) {
	table := func(key string, port uint32, consumer string) *waypointapi.ServiceRoutes {
		return &waypointapi.ServiceRoutes{ServiceKey: key, Port: port, ConsumerNamespace: consumer}
	}
	const svc, gw = "shop/r.shop.svc.cluster.local", "shop/waypoint"
	c, errs := Compile(L7Config{Routes: []*waypointapi.ServiceRoutes{
		table(svc, 80, "client-ns"), table(svc, 0, "other-ns"), table(svc, 80, ""), table(svc, 0, ""), table(gw, 0, ""),
		table(svc, 80, ""), // duplicate
	}})
	if len(errs) != 1 {
		t.Fatalf("errors %v, want one for the duplicate", errs)
	}
	for _, tc := range []struct {
		svc      string
		port     uint32
		ns       string
		want     string
		wantGate bool
	}{
		{svc, 80, "client-ns", svc + ":80@client-ns", false},
		{svc, 81, "other-ns", svc + "@other-ns", false},
		{svc, 80, "third", svc + ":80", false},
		{svc, 81, "third", svc, false},
		{"", 80, "third", gw, true},
		{"shop/unknown", 80, "", gw, true},
	} {
		tb, gate := c.table(tc.svc, tc.port, tc.ns, gw)
		if tb == nil || tb.Source().Name() != tc.want || gate != tc.wantGate {
			name := "<nil>"
			if tb != nil {
				name = tb.Source().Name()
			}
			t.Errorf("table(%s, %d, %s) = %s gateway=%v, want %s gateway=%v", tc.svc, tc.port, tc.ns, name, gate, tc.want, tc.wantGate)
		}
	}
	if tb, _ := (&Compiled{}).table(svc, 80, "", gw); tb != nil {
		t.Error("an empty config has a table")
	}
}

func TestShadowHost(t *testing.T) {
	for in, want := range map[string]string{"r": "r-shadow", "r:80": "r-shadow:80", "10.0.0.1:80": "10.0.0.1-shadow:80"} {
		if got := shadowHost(in); got != want {
			t.Errorf("shadowHost(%q) = %q, want %q", in, got, want)
		}
	}
}
