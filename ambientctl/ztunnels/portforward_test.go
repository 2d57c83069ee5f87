package ztunnels_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/httpstream/spdy"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"

	"github.com/ambientmesh/ambient/ambientctl/ztunnels"
	"github.com/ambientmesh/ambient/ambientctl/ztunnels/ztunnelstest"
	"github.com/ambientmesh/ambient/ztunnel/admin"
)

// fakeAPIServer lists two ztunnel pods and serves their portforward
// subresource as the kubelet does (SPDY, portforward.k8s.io: an error and a
// data stream per request, port in the headers), piping data streams to
// the admin server of the named pod.
func fakeAPIServer(t *testing.T, admins map[string]string) (*httptest.Server, *sync.Map) {
	t.Helper()
	var ports sync.Map // pod → the port header seen
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/namespaces/istio-system/pods", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("labelSelector") != "app=ztunnel" {
			t.Errorf("pods listed with selector %q", r.URL.Query().Get("labelSelector"))
		}
		list := corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}}
		for _, n := range []string{"node-2", "node-1"} {
			list.Items = append(list.Items, corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-" + n, Namespace: "istio-system"},
				Spec:       corev1.PodSpec{NodeName: n}, Status: corev1.PodStatus{Phase: corev1.PodRunning}})
		}
		list.Items = append(list.Items, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-pending", Namespace: "istio-system"},
			Status: corev1.PodStatus{Phase: corev1.PodPending}})
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(list)
	})
	mux.HandleFunc("POST /api/v1/namespaces/istio-system/pods/{pod}/portforward", func(w http.ResponseWriter, r *http.Request) {
		pod := r.PathValue("pod")
		if _, ok := admins[pod]; !ok {
			http.Error(w, `pods "`+pod+`" not found`, http.StatusNotFound)
			return
		}
		if _, err := httpstream.Handshake(r, w, []string{portforward.PortForwardProtocolV1Name}); err != nil {
			return
		}
		var wg sync.WaitGroup
		conn := spdy.NewResponseUpgrader().UpgradeResponse(w, r, func(s httpstream.Stream, _ <-chan struct{}) error {
			if s.Headers().Get(corev1.StreamType) != corev1.StreamTypeData {
				return nil
			}
			ports.Store(pod, s.Headers().Get(corev1.PortHeader))
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer s.Close()
				up, err := net.Dial("tcp", admins[pod])
				if err != nil {
					s.Reset()
					return
				}
				defer up.Close()
				go func() { io.Copy(up, s); up.(*net.TCPConn).CloseWrite() }()
				io.Copy(s, up)
			}()
			return nil
		})
		if conn == nil {
			return
		}
		<-conn.CloseChan()
		wg.Wait()
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &ports
}

func startAdmin(t *testing.T, mesh string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := admin.New(admin.Config{Admin: ln, Source: &ztunnelstest.Source{V: ztunnelstest.View(t, mesh)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func TestPortForward_ReadsEachZtunnelsDumpThroughTheAPIServer(t *testing.T) {
	admins := map[string]string{
		"ztunnel-node-1": startAdmin(t, "../zc/testdata/node-1.yaml"),
		"ztunnel-node-2": startAdmin(t, "../zc/testdata/node-2.yaml"),
	}
	api, ports := fakeAPIServer(t, admins)
	cfg := &rest.Config{Host: api.URL}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := &ztunnels.PortForward{Config: cfg, Client: client}
	ctx := context.Background()
	ts, err := d.Targets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 || ts[0].Node != "node-1" || ts[0].Pod != "ztunnel-node-1" || ts[1].Node != "node-2" {
		t.Fatalf("targets %+v, want the two running pods by node", ts)
	}
	dumps, errs := ztunnels.Dumps(ctx, d, ts)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if len(dumps[0].Dump.Workloads) != 3 || len(dumps[1].Dump.Workloads) != 4 {
		t.Errorf("workloads per node: %d, %d; want 3 and 4", len(dumps[0].Dump.Workloads), len(dumps[1].Dump.Workloads))
	}
	for pod := range admins {
		if p, _ := ports.Load(pod); p != "15000" {
			t.Errorf("%s forwarded to port %v, want 15000", pod, p)
		}
	}
	// A pod that refuses: the error names it.
	_, err = d.Dial(ctx, ztunnels.Target{Node: "node-9", Namespace: "istio-system", Pod: "ztunnel-none"})
	if err == nil || !strings.Contains(err.Error(), "istio-system/ztunnel-none") {
		t.Errorf("dial to a missing pod: %v", err)
	}
}
