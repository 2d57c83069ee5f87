//go:build unix

package proxy_test

import (
	"testing"
	"time"

	"github.com/ambientmesh/ambient/bench/load"
	"github.com/ambientmesh/ambient/internal/cputime"
)

// BenchmarkWaypoint_Request sends sequential 1 KB POST /echo requests
// through the real Proxy over real HBONE on loopback, one warm keep-alive
// connection in and pooled HBONE connections out (see loopMesh). The
// client, the servers' hbone.Server and the echo backend run in the same
// process: their CPU and allocations count too, the same before and after
// a change of the waypoint. cpu-ns/op is the process's user and system
// CPU per request.
//
//	default-route: no L7 configuration, the default route to the server
//	               service (least request over its two endpoints)
//	authz+route:   benchL7: two AuthorizationPolicies evaluated and an
//	               HTTPRoute with two weighted backends
func BenchmarkWaypoint_Request(b *testing.B) {
	m := newLoopMesh(b, nil)
	req := load.HTTPRequest(loopServerVIP, benchBody)
	buf := make([]byte, benchBody)
	for _, v := range []struct{ name, l7 string }{{"default-route", ""}, {"authz+route", benchL7}} {
		b.Run(v.name, func(b *testing.B) {
			m.proxy.SetL7(mustCompileL7(b, v.l7))
			for range 200 { // warm: pooled connections, caches, buffers
				if err := m.roundTrip(req, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if err := m.roundTrip(req, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// reportCPU starts measuring the process's CPU time; the function it
// returns reports it per op.
func reportCPU(b *testing.B) func() {
	start := cpuTime(b)
	return func() {
		b.ReportMetric(float64((cpuTime(b)-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime(b *testing.B) time.Duration {
	d, err := cputime.Self()
	if err != nil {
		b.Fatal(err)
	}
	return d
}
