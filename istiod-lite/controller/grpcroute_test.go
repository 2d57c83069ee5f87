package controller_test

import (
	"fmt"
	"testing"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// A GRPCRoute attached to a Service (GAMMA) reaches the waypoints as that
// Service's routing table, and its status is written to the GRPCRoute.
func TestController_GRPCRouteReachesTheWaypointWithStatus(t *testing.T) {
	m := startMesh(t)
	m.apply(t, `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: grpc, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec:
  selector: {app: reviews, version: v2}
  ports: [{name: grpc, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{method: {service: shop.Reviews, method: Get}, headers: [{name: x-user, value: beta}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - backendRefs: [{name: reviews, port: 9080}]
`)
	const table = "shop/reviews.shop.svc.cluster.local"
	toV2 := &waypointapi.Destination{Service: "shop/reviews-v2.shop.svc.cluster.local", Port: 9080}
	eventually(t, "the GRPCRoute's table served", func() (bool, string) {
		sr := m.routes.get(table)
		ms := sr.GetMatches()
		if len(ms) != 2 {
			return false, fmt.Sprintf("matches %v", ms)
		}
		first, rule := ms[0], sr.GetRules()[ms[0].GetRule()]
		ok := first.GetPath().GetType() == waypointapi.PathMatchType_PATH_MATCH_EXACT && first.GetPath().GetValue() == "/shop.Reviews/Get" &&
			len(first.GetHeaders()) == 1 && len(rule.GetBackends()) == 1 && rule.GetBackends()[0].GetDestination().GetService() == toV2.Service
		return ok, fmt.Sprintf("first match %v to %v", first, rule.GetBackends())
	})
	eventually(t, "the GRPCRoute's status", func() (bool, string) {
		got := m.kubectl(t, "get", "grpcroute", "reviews", "-n", "shop", "-o",
			`jsonpath={.status.parents[0].controllerName} {.status.parents[0].conditions[?(@.type=="Accepted")].status}`)
		return got == "istio.io/mesh-controller True", fmt.Sprintf("%q", got)
	})
}
