package nsproc

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/bench/proxies"
	"github.com/ambientmesh/ambient/internal/testenv"
)

func TestInNS_PrefixesArgvAndDialsFromTheNamespace(t *testing.T) {
	p := InNS(proxies.Proc{Argv: []string{"nginx", "-c", "x"}}, testenv.NS{Name: "amt-1-1-n1", Path: "/run/netns/amt-1-1-n1"})
	if want := []string{"ip", "netns", "exec", "amt-1-1-n1", "nginx", "-c", "x"}; !slices.Equal(p.Argv, want) {
		t.Errorf("Argv = %q, want %q", p.Argv, want)
	}
	if p.Dial == nil {
		t.Error("no Dial: readiness would be checked from the wrong namespace")
	}
}

func TestGoBuild_NamesThePackageOnFailure(t *testing.T) {
	err := GoBuild("./no/such/package", t.TempDir()+"/x")
	if err == nil || !strings.Contains(err.Error(), "./no/such/package") {
		t.Fatalf("GoBuild of a missing package: %v", err)
	}
}

func TestWaitHTTPOK_AnswersFromInsideThePod(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 1, PodsPerNode: 1})
	pod := topo.Pod(1, 1)
	ln, err := pod.Listen("127.0.0.1:15021")
	if err != nil {
		t.Fatal(err)
	}
	var ready bool
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !ready {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			ready = true
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	ctx := context.Background()
	if err := WaitHTTPOK(ctx, pod.NS, "http://127.0.0.1:15021/healthz/ready", 10*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	// Nothing listens on this port in the pod (the same port in this
	// namespace would not count).
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		defer l.Close()
		url := "http://" + l.Addr().String() + "/"
		err := WaitHTTPOK(ctx, pod.NS, url, 300*time.Millisecond, nil)
		if err == nil || !strings.Contains(err.Error(), "not ready") {
			t.Errorf("WaitHTTPOK reached a listener outside the pod: %v", err)
		}
		exited := func() bool { return true }
		if err := WaitHTTPOK(ctx, pod.NS, url, time.Minute, exited); err == nil || !strings.Contains(err.Error(), "exited") {
			t.Errorf("WaitHTTPOK with an exited process: %v", err)
		}
	}
}
