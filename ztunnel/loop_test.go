package ztunnel

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// TestZtunnel_ZtunnelPortsAreRefused: traffic for ztunnel's own ports in
// a pod (15001, 15006, 15008), tunnelled or plaintext, is refused at
// once. Delivered, it came back to ztunnel as new traffic to the same
// port without end: one connection to a pod's 15001 made its ztunnel open
// connections until it ran out of file descriptors.
func TestZtunnel_ZtunnelPortsAreRefused(t *testing.T) {
	m := newMesh(t)
	alice, bob, server := m.topo.Pod(1, 1), m.topo.Pod(1, 2), m.topo.Pod(2, 1)
	// bob leaves the mesh: its connections reach server in plaintext.
	m.setWorkload(t, bob, func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_NONE })
	waitFor(t, "bob's capture removed", func() bool { return !captured(t, bob) })
	ports := []uint16{15001, 15006, 15008}
	for _, from := range []*testenv.Pod{alice, bob} {
		for _, port := range ports {
			if err := roundTripAddr(t, from, server.Addr(port)); err == nil {
				t.Fatalf("%s reached %s", podUID(from), server.Addr(port))
			}
		}
	}
	// Each attempt is one refused flow at the destination, nothing more.
	refused := func() (n int, all int) {
		for _, f := range m.logs[1].JSONLines(t) {
			all++
			if strings.Contains(fmt.Sprint(f["error"]), "is ztunnel's own in the pod") {
				n++
			}
		}
		return n, all
	}
	// bob's plaintext to 15008 is not HBONE: a failed handshake instead.
	waitFor(t, "the refusals recorded", func() bool { n, _ := refused(); return n == 2*len(ports)-1 })
	if n, all := refused(); all > 2*len(ports) {
		t.Fatalf("%d flows at the destination (%d refusals) for %d connections", all, n, 2*len(ports))
	}
	if err := roundTrip(t, alice, server); err != nil {
		t.Fatalf("the app's own port after the refusals: %v", err)
	}
}
