package wpconfig

import (
	"strings"
	"testing"
	"time"
)

func TestParse_MeshRoutesAndPolicies(t *testing.T) {
	snap, l7, err := Parse([]byte(`
services:
- {name: r, namespace: shop, hostname: r.shop.svc.cluster.local, addresses: ["10.96.0.10"], ports: [{service_port: 80, target_port: 8080}]}
routes:
- serviceKey: shop/r.shop.svc.cluster.local
  port: 80
  matches: [{rule: 0, path: {type: PATH_MATCH_EXACT, value: /x}}]
  rules: [{route: shop/r, timeouts: {request: 0.2s}, backends: [{destination: {service: shop/r.shop.svc.cluster.local, port: 80}, weight: 1}]}]
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: deny, namespace: shop, annotations: {istio.io/dry-run: "true"}}
  spec: {targetRefs: [{kind: Service, name: r}], action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}
resilience:
- service_key: shop/r.shop.svc.cluster.local
  traffic_policy: {load_balancer: LB_ROUND_ROBIN, outlier_detection: {consecutive_5xx_errors: 5, base_ejection_time: 30s}}
  local_policy: {rate_limit: {requests_per_unit: 100, unit: 1s}, fault: {abort: {http_status: 418, percentage: 20}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Services) != 1 || len(l7.Routes) != 1 || len(l7.Policies) != 1 || len(l7.Resilience) != 1 {
		t.Fatalf("got %d services, %d routes, %d policies, %d resilience policies", len(snap.Services), len(l7.Routes), len(l7.Policies), len(l7.Resilience))
	}
	if r := l7.Resilience[0]; r.GetTrafficPolicy().GetOutlierDetection().GetBaseEjectionTime().AsDuration() != 30*time.Second ||
		r.GetLocalPolicy().GetRateLimit().GetRequestsPerUnit() != 100 || r.GetLocalPolicy().GetFault().GetAbort().GetHttpStatus() != 418 {
		t.Errorf("resilience %v", r)
	}
	if d := l7.Routes[0].GetRules()[0].GetTimeouts().GetRequest().AsDuration(); d != 200*time.Millisecond {
		t.Errorf("request timeout %v", d)
	}
	if p := l7.Policies[0]; p.Namespace != "shop" || p.Name != "deny" || !p.DryRun || p.Spec.Action != "DENY" || len(p.Spec.Rules) != 1 {
		t.Errorf("policy %+v", p)
	}
}

func TestParse_RejectsWithAClearError(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"routs: []\n", `unknown field "routs"`},
		{"routes:\n- {port: 80}\n", "routes[0]: no service_key"},
		{"routes:\n- {service_key: a/b, bogus: 1}\n", "routes[0]"},
		{"authorizationPolicies:\n- {kind: PeerAuthentication, metadata: {name: a, namespace: b}}\n", "want AuthorizationPolicy"},
		{"authorizationPolicies:\n- {kind: AuthorizationPolicy, metadata: {name: a}}\n", "name and a namespace"},
		{"authorizationPolicies:\n- {metadata: {name: a, namespace: b}, spec: {acton: DENY}}\n", `authorizationPolicies[0] (b/a): spec: unknown field "acton"`},
		{"resilience:\n- {traffic_policy: {}}\n", "resilience[0]: no service_key"},
		{"resilience:\n- {service_key: a/b, local_policy: {rate_limt: {}}}\n", "resilience[0]"},
	} {
		_, _, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.doc, err, tc.want)
		}
	}
}
