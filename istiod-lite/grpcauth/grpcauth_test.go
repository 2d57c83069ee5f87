package grpcauth_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ambientmesh/ambient/istiod-lite/caserver"
	"github.com/ambientmesh/ambient/istiod-lite/grpcauth"
)

// fakeAuth maps tokens to service accounts; "down" fails like an
// unreachable apiserver.
type fakeAuth map[string]string

func (f fakeAuth) Authenticate(_ context.Context, token string) (caserver.Caller, error) {
	if token == "down" {
		return caserver.Caller{}, errors.New("connection refused")
	}
	sa, ok := f[token]
	if !ok {
		return caserver.Caller{}, fmt.Errorf("%w: token review: invalid token", caserver.ErrUnauthenticated)
	}
	ns, name, _ := strings.Cut(sa, "/")
	return caserver.Caller{Namespace: ns, ServiceAccount: name}, nil
}

// ads answers every stream by reporting the authenticated caller.
type ads struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
}

func (ads) DeltaAggregatedResources(st grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]) error {
	c, ok := grpcauth.CallerFrom(st.Context())
	if !ok {
		return status.Error(codes.Internal, "no caller")
	}
	return st.Send(&discovery.DeltaDiscoveryResponse{SystemVersionInfo: c.Namespace + "/" + c.ServiceAccount})
}

func TestStreamInterceptor_OnlyNodeProxiesAndWaypoints(t *testing.T) {
	isWaypoint := func(ns, sa string) bool { return ns == "shop" && sa == "waypoint" }
	ic, err := grpcauth.StreamInterceptor(grpcauth.Config{
		Authenticator: fakeAuth{"zt": "istio-system/ztunnel", "web": "shop/web", "wp": "shop/waypoint", "wp-elsewhere": "other/waypoint"},
		IsWaypoint:    isWaypoint,
	})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.StreamInterceptor(ic))
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, ads{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	defer gs.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := discovery.NewAggregatedDiscoveryServiceClient(conn)

	for _, tt := range []struct {
		name, auth string
		code       codes.Code
		msg        string
	}{
		{"no token", "", codes.Unauthenticated, "no authorization metadata"},
		{"not bearer", "Basic abc", codes.Unauthenticated, "not \"Bearer <token>\""},
		{"invalid token", "Bearer nope", codes.Unauthenticated, "invalid token"},
		{"workload", "Bearer web", codes.PermissionDenied, "serviceaccount shop/web may not subscribe to xDS: only node proxies (istio-system/ztunnel) and waypoints may"},
		{"a waypoint's account elsewhere", "Bearer wp-elsewhere", codes.PermissionDenied, "other/waypoint may not subscribe"},
		{"apiserver down", "Bearer down", codes.Unavailable, "connection refused"},
		{"ztunnel", "Bearer zt", codes.OK, ""},
		{"waypoint", "Bearer wp", codes.OK, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if tt.auth != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", tt.auth)
			}
			st, err := client.DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := st.Recv()
			if got := status.Code(err); got != tt.code || !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Fatalf("Recv = %v, want %v containing %q", err, tt.code, tt.msg)
			}
			if want := map[string]string{"ztunnel": "istio-system/ztunnel", "waypoint": "shop/waypoint"}[tt.name]; tt.code == codes.OK && resp.GetSystemVersionInfo() != want {
				t.Errorf("handler saw caller %q", resp.GetSystemVersionInfo())
			}
		})
	}
}
