package controller_test

import (
	"strings"
	"testing"
	"time"
)

// TestController_RouteStatusIsWrittenOnceAndKeepsOthers: once a route's
// status is written, the controller leaves it be — no rewrite on later
// syncs, the transition time kept — and a parent status written by
// another controller survives.
func TestController_RouteStatusIsWrittenOnceAndKeepsOthers(t *testing.T) {
	m := startMesh(t)
	m.apply(t, crossNamespaceRouteYAML)
	eventually(t, "the route's status", func() (bool, string) {
		got := resolvedRefs(t, m)
		return got == refused, got
	})
	// Another controller's parent (an ingress Gateway of its own).
	m.kubectl(t, "patch", "httproute", "to-ratings", "-n", "shop", "--subresource=status", "--type=json", "-p",
		`[{"op":"add","path":"/status/parents/-","value":{"parentRef":{"name":"ingress"},"controllerName":"example.com/gateway","conditions":[{"type":"Accepted","status":"True","reason":"Accepted","message":"","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}]`)
	rv := func() string {
		return m.kubectl(t, "get", "httproute", "to-ratings", "-n", "shop", "-o", "jsonpath={.metadata.resourceVersion}")
	}
	before := rv()
	ltt := m.kubectl(t, "get", "httproute", "to-ratings", "-n", "shop", "-o", `jsonpath={.status.parents[0].conditions[0].lastTransitionTime}`)
	// Time stamps have a resolution of one second: once the clock is past
	// the recorded one, a rewrite would show. Then make the controller sync
	// again with something unrelated.
	recorded, err := time.Parse(time.RFC3339, ltt)
	if err != nil {
		t.Fatalf("lastTransitionTime %q: %v", ltt, err)
	}
	eventually(t, "the clock past the recorded second", func() (bool, string) {
		return time.Now().Truncate(time.Second).After(recorded), time.Now().String()
	})
	m.apply(t, `
apiVersion: v1
kind: Service
metadata: {name: unrelated, namespace: other}
spec:
  selector: {app: unrelated}
  ports: [{name: http, port: 80}]
`)
	eventually(t, "the unrelated Service served", func() (bool, string) {
		return m.store.Current().Service("other", "unrelated.other.svc.cluster.local") != nil, "not yet"
	})
	if got := m.kubectl(t, "get", "httproute", "to-ratings", "-n", "shop", "-o", `jsonpath={.status.parents[*].controllerName}`); !strings.Contains(got, "example.com/gateway") {
		t.Errorf("the other controller's parent status is gone: controllers %q", got)
	}
	if got := m.kubectl(t, "get", "httproute", "to-ratings", "-n", "shop", "-o", `jsonpath={.status.parents[0].conditions[0].lastTransitionTime}`); got != ltt {
		t.Errorf("lastTransitionTime %s, was %s: the unchanged status was rewritten", got, ltt)
	}
	if after := rv(); after != before {
		t.Errorf("resourceVersion %s, was %s: the route was written again with nothing changed", after, before)
	}
}
