package controller_test

import (
	"fmt"
	"maps"
	"strconv"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambientmesh/ambient/internal/xdsclient"
	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// routesSink holds the ServiceRoutes the xDS client receives, as a
// waypoint's would.
type routesSink struct {
	mu   sync.Mutex
	held map[string]*waypointapi.ServiceRoutes // guarded by mu
}

func newRoutesSink() *routesSink { return &routesSink{held: map[string]*waypointapi.ServiceRoutes{}} }

func (s *routesSink) Apply(upserts map[string]*anypb.Any, removed []string) error {
	next := map[string]*waypointapi.ServiceRoutes{}
	for name, a := range upserts {
		r := &waypointapi.ServiceRoutes{}
		if err := a.UnmarshalTo(r); err != nil {
			return fmt.Errorf("routes %s: %w", name, err)
		}
		next[name] = r
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	maps.Copy(s.held, next)
	for _, n := range removed {
		delete(s.held, n)
	}
	return nil
}

func (s *routesSink) Versions() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.held))
	for n, r := range s.held {
		v, err := xdsclient.Version(r)
		if err != nil {
			panic(err) // a message it decoded encodes again
		}
		out[n] = v
	}
	return out
}

// get returns the table named name, nil if none is held.
func (s *routesSink) get(name string) *waypointapi.ServiceRoutes {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[name]
}

// An HTTPRoute in shop, attached to Service shop/reviews (GAMMA), sending
// everything to Service other/ratings.
const crossNamespaceRouteYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: other}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-ratings, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - backendRefs: [{name: ratings, namespace: other, port: 9080}]
`

// resolvedRefs returns the ResolvedRefs condition of HTTPRoute
// shop/to-ratings as "<reason>: <message>" ("" before there is one).
func resolvedRefs(t *testing.T, m *mesh) string {
	t.Helper()
	return m.kubectl(t, "get", "httproute", "to-ratings", "-n", "shop", "-o",
		`jsonpath={range .status.parents[0].conditions[?(@.type=="ResolvedRefs")]}{.reason}: {.message}{end}`)
}

// refused is the ResolvedRefs condition of shop/to-ratings without a grant.
const refused = "RefNotPermitted: backend Service other/ratings is in another namespace and no ReferenceGrant in other allows HTTPRoutes from shop"

// referenceGrantYAML lets HTTPRoutes of shop refer to every Service of
// other, as apiVersion gateway.networking.k8s.io/<version>.
func referenceGrantYAML(version string) string {
	return `
apiVersion: gateway.networking.k8s.io/` + version + `
kind: ReferenceGrant
metadata: {name: shop-routes, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
`
}

func TestController_ReferenceGrantPermitsCrossNamespaceBackend(t *testing.T) {
	m := startMesh(t)
	m.apply(t, crossNamespaceRouteYAML)

	const table = "shop/reviews.shop.svc.cluster.local"
	resolved := "ResolvedRefs: All references resolved"
	toRatings := &waypointapi.Backend{Weight: 1, Destination: &waypointapi.Destination{Service: "other/ratings.other.svc.cluster.local", Port: 9080}}
	answers500 := &waypointapi.Backend{Weight: 1, InvalidStatus: 500}
	// wait waits until the route's ResolvedRefs condition reads wantCond
	// ("<reason>: <message>") and the served table's only backend is
	// wantBackend.
	wait := func(what, wantCond string, wantBackend *waypointapi.Backend) {
		t.Helper()
		eventually(t, what, func() (bool, string) {
			gotCond := resolvedRefs(t, m)
			var gotBackends []*waypointapi.Backend
			if rules := m.routes.get(table).GetRules(); len(rules) == 1 {
				gotBackends = rules[0].GetBackends()
			}
			return gotCond == wantCond && len(gotBackends) == 1 && proto.Equal(gotBackends[0], wantBackend),
				fmt.Sprintf("ResolvedRefs %q, want %q; served backends %v, want [%v]", gotCond, wantCond, gotBackends, wantBackend)
		})
	}

	wait("no grant: refused, the backend answers 500", refused, answers500)

	m.apply(t, referenceGrantYAML("v1"))
	wait("grant applied: resolved and routed to other/ratings", resolved, toRatings)

	m.kubectl(t, "delete", "referencegrant", "shop-routes", "-n", "other")
	wait("grant deleted: refused again", refused, answers500)

	// A grant written as v1beta1 (manifests from before Gateway API v1.5)
	// is the same object.
	m.apply(t, referenceGrantYAML("v1beta1"))
	wait("v1beta1 grant applied: resolved again", resolved, toRatings)
}

// TestController_WithoutReferenceGrantCRD_RefusesCrossNamespaceBackends:
// as for the other Gateway API kinds, a missing ReferenceGrant CRD is
// logged and the controller serves without grants.
func TestController_WithoutReferenceGrantCRD_RefusesCrossNamespaceBackends(t *testing.T) {
	m := startMeshWithout(t, "referencegrants.gateway.networking.k8s.io")
	if !m.logs.contains("ReferenceGrant CRD (gateway.networking.k8s.io) not installed") {
		t.Error("the missing ReferenceGrant CRD was not logged")
	}
	m.apply(t, crossNamespaceRouteYAML)
	eventually(t, "ResolvedRefs "+refused, func() (bool, string) {
		got := resolvedRefs(t, m)
		return got == refused, "ResolvedRefs " + strconv.Quote(got)
	})
}
