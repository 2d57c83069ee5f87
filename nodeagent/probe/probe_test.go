package probe

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestResolvePort_NumberOrNamedContainerPort(t *testing.T) {
	c := &v1.Container{Ports: []v1.ContainerPort{{Name: "http", ContainerPort: 8080}}}
	for _, tc := range []struct {
		port intstr.IntOrString
		want int
		ok   bool
	}{
		{intstr.FromInt32(9000), 9000, true},
		{intstr.FromString("http"), 8080, true},
		{intstr.FromString("8081"), 8081, true},
		{intstr.FromString("grpc"), 0, false},
	} {
		got, err := resolvePort(tc.port, c)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("resolvePort(%v) = %d, %v", tc.port, got, err)
		}
	}
}

func waitEvent(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no probe event")
		return Event{}
	}
}

func TestRun_ReadinessFollowsTheEndpoint(t *testing.T) {
	healthy := make(chan bool, 1)
	healthy <- true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok := <-healthy
		healthy <- ok
		if r.URL.Path != "/healthz" || !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	host, portStr, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan Event, 4)
	c := &v1.Container{Name: "app", Ports: []v1.ContainerPort{{Name: "http", ContainerPort: int32(port)}}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Prober{Kind: Readiness, Container: c, Host: host, Gen: 3, Out: out, Probe: &v1.Probe{
			ProbeHandler:     v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
			PeriodSeconds:    1,
			FailureThreshold: 1,
		}})
	}()
	if e := waitEvent(t, out); !e.OK || e.Container != "app" || e.Gen != 3 || e.Kind != Readiness {
		t.Fatalf("first event %+v, want ready", e)
	}
	<-healthy
	healthy <- false
	if e := waitEvent(t, out); e.OK || e.Msg == "" {
		t.Fatalf("event after failure %+v, want not ready with a reason", e)
	}
	cancel()
	<-done
}

func TestOnce_TCPSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	p := Prober{Container: &v1.Container{}, Host: "127.0.0.1", Probe: &v1.Probe{
		ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt(port)}}}}
	if err := p.once(context.Background(), time.Second); err != nil {
		t.Errorf("open port: %v", err)
	}
	ln.Close()
	if err := p.once(context.Background(), time.Second); err == nil {
		t.Error("closed port probed ok")
	}
	p.Probe = &v1.Probe{ProbeHandler: v1.ProbeHandler{Exec: &v1.ExecAction{Command: []string{"true"}}}}
	if err := p.once(context.Background(), time.Second); err == nil {
		t.Error("exec probe reported ok; it is not supported")
	}
}

func TestOnce_ExecSucceedsOnExitZeroAndKillsOnTimeout(t *testing.T) {
	c := &v1.Container{Name: "app"}
	exec := func(ctx context.Context, cmd []string) (int, []byte, error) {
		switch cmd[0] {
		case "ok":
			return 0, nil, nil
		case "fail":
			return 3, []byte("not yet\n"), nil
		default: // hangs until the probe's timeout ends it
			<-ctx.Done()
			return 137, nil, nil
		}
	}
	for _, tc := range []struct {
		cmd     string
		wantErr string
	}{
		{"ok", ""},
		{"fail", `exit code 3: not yet`},
		{"hang", "timed out after 50ms"},
	} {
		p := Prober{Probe: &v1.Probe{ProbeHandler: v1.ProbeHandler{Exec: &v1.ExecAction{Command: []string{tc.cmd}}}}, Container: c, Exec: exec}
		err := p.once(context.Background(), 50*time.Millisecond)
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("exec probe %q: %v, want %q", tc.cmd, err, tc.wantErr)
		}
	}
	p := Prober{Probe: &v1.Probe{ProbeHandler: v1.ProbeHandler{Exec: &v1.ExecAction{Command: []string{"ok"}}}}, Container: c}
	if err := p.once(context.Background(), time.Second); err == nil {
		t.Error("an exec probe without a runner passed")
	}
}
