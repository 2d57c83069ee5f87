package controller_test

import (
	"testing"
	"time"

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
	m.kubectl(t, "delete", "-n", "shop", "destinationrule/reviews", "localtrafficpolicy/reviews-limits")
	waitLen(t, m.cache, xds.TypeServiceResilience, 0)
}

func waitLen(t *testing.T, c *xds.Cache, typeURL string, n int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for c.Len(typeURL) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d resources, want %d", typeURL, c.Len(typeURL), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
