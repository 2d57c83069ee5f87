package clusterdns

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ambientmesh/ambient/internal/kubetest"
)

func ptr[T any](v T) *T { return &v }

// TestServer_ResolvesServicesFromTheAPIServer runs the server against a
// real API server and asks it over real UDP and TCP sockets.
func TestServer_ResolvesServicesFromTheAPIServer(t *testing.T) {
	kc := kubetest.Start(t, kubetest.Options{})
	client, err := kubernetes.NewForConfig(&rest.Config{Host: kc.Server, BearerToken: kc.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: kc.CAData}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web, err := client.CoreV1().Services("shop").Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	before := goleak.IgnoreCurrent()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String()) // same port for TCP
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Client: client, PacketConn: pc, Listener: ln, HTTPListener: hl})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- srv.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
		if err := goleak.Find(before,
			goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
		); err != nil {
			t.Errorf("goroutines left: %v", err)
		}
	})

	httpGet := func(path string) (int, string) {
		resp, err := http.Get("http://" + hl.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, "/ready 200", func() bool { code, _ := httpGet("/ready"); return code == http.StatusOK })
	t.Logf("ready %v after start", time.Since(start).Round(time.Millisecond))

	dnsAddr := pc.LocalAddr().String()
	ask := func(net, name string, qtype uint16) *dns.Msg {
		t.Helper()
		c := &dns.Client{Net: net, Timeout: 2 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		r, _, err := c.Exchange(m, dnsAddr)
		if err != nil {
			t.Fatalf("%s query %s: %v", net, name, err)
		}
		return r
	}
	firstA := func(r *dns.Msg) string {
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				return a.A.String()
			}
		}
		return ""
	}

	t.Run("ClusterIPOverUDP", func(t *testing.T) {
		r := ask("udp", "web.shop.svc.cluster.local.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || firstA(r) != web.Spec.ClusterIP {
			t.Errorf("got %v, want A %s", r, web.Spec.ClusterIP)
		}
	})
	t.Run("ClusterIPOverTCP", func(t *testing.T) {
		r := ask("tcp", "web.shop.svc.cluster.local.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || firstA(r) != web.Spec.ClusterIP {
			t.Errorf("got %v, want A %s", r, web.Spec.ClusterIP)
		}
	})
	t.Run("ServiceCreatedLaterResolves", func(t *testing.T) {
		if _, err := client.CoreV1().Services("shop").Create(ctx, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "db"},
			Spec:       v1.ServiceSpec{ClusterIP: v1.ClusterIPNone, Ports: []v1.ServicePort{{Name: "pg", Port: 5432}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.DiscoveryV1().EndpointSlices("shop").Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "db-1", Labels: map[string]string{discoveryv1.LabelServiceName: "db"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("pg"), Port: ptr(int32(5432)), Protocol: ptr(v1.ProtocolTCP)}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.0.1.5"}, Hostname: ptr("db-0"), Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}},
				{Addresses: []string{"10.0.1.6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}},
			},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "headless db resolves", func() bool {
			r := ask("udp", "db.shop.svc.cluster.local.", dns.TypeA)
			return len(r.Answer) == 1 && firstA(r) == "10.0.1.5"
		})
		if r := ask("udp", "db-0.db.shop.svc.cluster.local.", dns.TypeA); firstA(r) != "10.0.1.5" {
			t.Errorf("endpoint hostname: %v", r)
		}
		r := ask("udp", "_pg._tcp.db.shop.svc.cluster.local.", dns.TypeSRV)
		if len(r.Answer) != 1 || r.Answer[0].(*dns.SRV).Target != "db-0.db.shop.svc.cluster.local." {
			t.Errorf("SRV: %v", r)
		}
	})
	t.Run("DeletedServiceIsNXDOMAIN", func(t *testing.T) {
		if err := client.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "web gone", func() bool {
			r := ask("udp", "web.shop.svc.cluster.local.", dns.TypeA)
			return r.Rcode == dns.RcodeNameError && len(r.Ns) == 1
		})
	})
	t.Run("OutsideNameREFUSED", func(t *testing.T) {
		if r := ask("udp", "example.com.", dns.TypeA); r.Rcode != dns.RcodeRefused {
			t.Errorf("rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
		}
	})
	t.Run("MetricsCountByRcode", func(t *testing.T) {
		_, body := httpGet("/metrics")
		for _, want := range []string{`clusterdns_queries_total{rcode="NOERROR"}`, `clusterdns_queries_total{rcode="NXDOMAIN"}`, `clusterdns_queries_total{rcode="REFUSED"} 1`} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s:\n%s", want, body)
			}
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestServer_NotReadyBeforeSync(t *testing.T) {
	srv, err := New(Config{Client: kubernetes.New(nil)})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.HTTPHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ready", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/ready before sync: %d, want 503", rec.Code)
	}
}
