package controller_test

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/ambientmesh/ambient/istiod-lite/xds"
)

const resilienceYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 10}
    outlierDetection: {consecutive5xxErrors: 5, baseEjectionTime: 30s}
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: policy.ambientmesh.io/v1alpha1
kind: LocalTrafficPolicy
metadata: {name: reviews-limits, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  rateLimit: {requestsPerUnit: 100, unit: second}
  fault:
    abort: {httpStatus: 503, percentage: {value: 20}}
`

func TestController_DestinationRuleAndLocalTrafficPolicy_ReachTheCache(t *testing.T) {
	m := startMesh(t)
	m.apply(t, resilienceYAML)
	waitLen(t, m.cache, xds.TypeServiceResilience, 1)
	// Their Accepted conditions reach their status; a policy whose target
	// does not exist is refused, saying why.
	waitAccepted(t, m, "destinationrule/reviews", "True")
	waitAccepted(t, m, "localtrafficpolicy/reviews-limits", "True")
	m.apply(t, `
apiVersion: policy.ambientmesh.io/v1alpha1
kind: LocalTrafficPolicy
metadata: {name: orphan, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: missing}]
  rateLimit: {requestsPerUnit: 1, unit: second}
`)
	waitAccepted(t, m, "localtrafficpolicy/orphan", "False")
	if reason := m.kubectl(t, "get", "localtrafficpolicy/orphan", "-n", "shop", "-o", `jsonpath={.status.conditions[?(@.type=="Accepted")].reason}`); reason != "TargetNotFound" {
		t.Fatalf("orphan policy's reason %q, want TargetNotFound", reason)
	}
	m.kubectl(t, "delete", "-n", "shop", "localtrafficpolicy/orphan")
	m.kubectl(t, "delete", "-n", "shop", "destinationrule/reviews", "localtrafficpolicy/reviews-limits")
	waitLen(t, m.cache, xds.TypeServiceResilience, 0)
}

func waitLen(t *testing.T, c *xds.Cache, typeURL string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d %s resources", n, typeURL), func() (bool, string) {
		return c.Len(typeURL) == n, fmt.Sprintf("%d resources", c.Len(typeURL))
	})
}

// waitAccepted waits until the Accepted condition of obj (kind/name in
// shop) has status want.
func waitAccepted(t *testing.T, m *mesh, obj, want string) {
	t.Helper()
	eventually(t, obj+" Accepted="+want, func() (bool, string) {
		got := m.kubectl(t, "get", obj, "-n", "shop", "-o", `jsonpath={.status.conditions[?(@.type=="Accepted")].status}`)
		return got == want, "Accepted = " + strconv.Quote(got)
	})
}
