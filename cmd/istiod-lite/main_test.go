package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/ztunnel/state"
	"github.com/ambientmesh/ambient/ztunnel/xdsclient"
)

func TestParseFlags_Defaults(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.xdsAddr != "127.0.0.1:15012" || o.rootNamespace != "istio-system" || o.trustDomain != "cluster.local" || o.kubeconfig != "" {
		t.Errorf("defaults = %+v", o)
	}
	if _, err := parseFlags([]string{"extra"}, io.Discard); err == nil {
		t.Error("positional argument accepted")
	}
}

func TestRun_ServesDefaultKubernetesServiceAndStopsOnCancel(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{kubeconfig: c.Kubeconfig, xdsAddr: "127.0.0.1:0", rootNamespace: "istio-system",
			trustDomain: "cluster.local", clusterID: "Kubernetes"}, slog.New(slog.DiscardHandler), func(a net.Addr) { addrc <- a })
	}()
	var addr net.Addr
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("run: %v", err)
	}
	store := state.NewStore()
	cl, err := xdsclient.New(xdsclient.Config{Target: addr.String(), Store: store, Logger: slog.New(slog.DiscardHandler),
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}})
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	clDone := make(chan error, 1)
	go func() { clDone <- cl.Run(cctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for store.Current().Service("default", "kubernetes.default.svc.cluster.local") == nil {
		if time.Now().After(deadline) {
			t.Fatalf("default/kubernetes never reached the client; store %+v", store.Current().Snapshot())
		}
		time.Sleep(20 * time.Millisecond)
	}
	ccancel()
	<-clDone

	cancel() // what SIGTERM does through signal.NotifyContext
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}
