package ztunnel

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// TestZtunnel_WaypointBoundServiceGoesThroughWaypoint: a service bound to
// a waypoint (Service.waypoint, as istiod-lite sets it from
// istio.io/use-waypoint) is reached through the waypoint: the client's
// ztunnel opens the tunnel to the waypoint's pod, verified as the
// waypoint's identity, presenting the client pod's identity, with the
// service address as the :authority; the client's flow names the waypoint
// as its peer and the service as its destination.
func TestZtunnel_WaypointBoundServiceGoesThroughWaypoint(t *testing.T) {
	m := newMesh(t)
	alice, server, wpPod := m.topo.Pod(1, 1), m.topo.Pod(2, 1), m.topo.Pod(2, 2)
	const vip, wpVIP = "10.96.0.10", "10.96.0.50"

	// Pod (2,2) becomes the waypoint: out of the mesh (a waypoint is never
	// captured), ServiceAccount "waypoint", behind the Service shop/waypoint.
	m.setWorkload(t, wpPod, func(w *workloadapi.Workload) {
		w.TunnelProtocol = workloadapi.TunnelProtocol_NONE
		w.ServiceAccount = "waypoint"
		w.Services = map[string]*workloadapi.PortList{"shop/waypoint.shop.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: 15008, TargetPort: 15008}}}}
	})
	waitFor(t, "the waypoint pod released", func() bool { return !captured(t, wpPod) })
	seen := startFakeWaypoint(t, m, wpPod)

	m.setWorkload(t, server, func(w *workloadapi.Workload) {
		w.Services = map[string]*workloadapi.PortList{"shop/server.shop.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}}
	})
	waypoint := &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Hostname{
		Hostname: &workloadapi.NamespacedHostname{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}}}
	if err := m.store.Apply(state.Update{Services: []*workloadapi.Service{
		{Name: "waypoint", Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(wpVIP).AsSlice()}},
			Ports:     []*workloadapi.Port{{ServicePort: 15008, TargetPort: 15008}}},
		{Name: "server", Namespace: "shop", Hostname: "server.shop.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}},
			Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}, Waypoint: waypoint},
	}}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := alice.Dial(ctx, vip+":80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("waypoint:hello"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "waypoint:hello" {
		t.Fatalf("reply %q, %v; want the waypoint's answer", got, err)
	}
	c.Close()

	s := seen()
	if len(s) != 1 || s[0].peer != id("alice") || s[0].authority != vip+":80" {
		t.Fatalf("the waypoint saw %+v, want one tunnel from %s for %s:80", s, id("alice"), vip)
	}
	findFlow(t, m.logs[0], map[string]any{"reporter": "source", "src.identity": id("alice"), "dst.identity": id("waypoint"),
		"dst.service": "server.shop.svc.cluster.local", "dst.addr": vip + ":80", "transport": "hbone"})

	// A waypoint without a pod to serve refuses the connection instead of
	// bypassing it.
	m.setWorkload(t, wpPod, func(w *workloadapi.Workload) { w.Status = workloadapi.WorkloadStatus_UNHEALTHY })
	waitFor(t, "no healthy waypoint pod", func() bool {
		return m.store.Current().Workload(podUID(wpPod)).GetStatus() == workloadapi.WorkloadStatus_UNHEALTHY
	})
	if c, err := alice.Dial(ctx, vip+":80"); err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("hello"))
		n, _ := c.Read(make([]byte, 16))
		c.Close()
		if n > 0 {
			t.Fatal("with no waypoint pod, the connection went through")
		}
	}
	if n := len(seen()); n != 1 {
		t.Fatalf("the waypoint saw %d tunnels, want still 1", n)
	}
}

type tunnelSeen struct{ peer, authority string }

// startFakeWaypoint serves HBONE on p's 15008 as spiffe://.../sa/waypoint
// and answers every tunnel itself with "waypoint:" and what it received;
// seen lists the tunnels.
func startFakeWaypoint(t *testing.T, m *mesh, p *testenv.Pod) (seen func() []tunnelSeen) {
	t.Helper()
	svid, err := m.ca.NewSVID(spiffeid.RequireFromString(id("waypoint")), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var tunnels []tunnelSeen
	src := identity.NewStaticSource(svid, m.ca.Bundle())
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig: identity.ServerConfig(src, m.ca.Bundle(), td),
		Authorize: func(_ context.Context, st *hbone.Stream) error {
			mu.Lock()
			tunnels = append(tunnels, tunnelSeen{peer: st.Peer.String(), authority: st.Authority.String()})
			mu.Unlock()
			return nil
		},
		Dial: func(context.Context, *hbone.Stream) (net.Conn, error) {
			app, us := net.Pipe()
			go func() {
				defer us.Close()
				buf := make([]byte, 64)
				n, _ := us.Read(buf)
				fmt.Fprintf(us, "waypoint:%s", buf[:n])
			}()
			return app, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// ztunnel lets go of the pod's 15008 once it has stopped serving it.
	var ln net.Listener
	waitFor(t, "15008 free in the waypoint pod", func() bool {
		ln, err = p.Listen("0.0.0.0:15008")
		return err == nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); ln.Close(); <-done })
	return func() []tunnelSeen {
		mu.Lock()
		defer mu.Unlock()
		return append([]tunnelSeen(nil), tunnels...)
	}
}
