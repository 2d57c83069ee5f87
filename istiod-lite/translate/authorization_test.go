package translate

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/testing/protocmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambientmesh/ambient/internal/authz"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// decodeAP decodes a manifest as copied from Istio's documentation.
func decodeAP(t *testing.T, manifest string) AuthorizationPolicy {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(manifest), &obj); err != nil {
		t.Fatal(err)
	}
	ap, err := FromUnstructured[AuthorizationPolicy](obj)
	if err != nil {
		t.Fatal(err)
	}
	return *ap
}

func exact(v string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: v}}
}

func presence() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{}}
}

func group(rules ...*security.Rules) *security.Group { return &security.Group{Rules: rules} }

func rules(ms ...*security.Match) *security.Rules { return &security.Rules{Matches: ms} }

func accepted() []Condition {
	return []Condition{{Type: ConditionZtunnelAccepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted, Message: "the policy is enforced by ztunnel as written"}}
}

func TestAuthorization(t *testing.T) {
	tests := []struct {
		name      string
		manifest  string
		want      *security.Authorization
		wantConds []Condition // nil: accepted
		reason    string      // checked instead of wantConds when set
	}{{
		// https://istio.io/latest/docs/reference/config/security/authorization-policy/
		name: "istio doc: allow by principal from sleep",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        ports: ["8080"]
`,
		want: &security.Authorization{
			Name: "httpbin", Namespace: "foo", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_ALLOW,
			Groups: []*security.Group{group(
				rules(&security.Match{DestinationPorts: []uint32{8080}}),
				rules(&security.Match{Principals: []*security.StringMatch{exact("cluster.local/ns/default/sa/sleep")}},
					&security.Match{Namespaces: []*security.StringMatch{exact("test")}}),
			)},
		},
	}, {
		name: "istio doc: deny by namespace",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-foo
  namespace: bar
spec:
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["bar"]
`,
		want: &security.Authorization{
			Name: "deny-foo", Namespace: "bar", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
			Groups: []*security.Group{group(rules(&security.Match{NotNamespaces: []*security.StringMatch{exact("bar")}}))},
		},
	}, {
		name: "root namespace policy without selector is GLOBAL; allow-nothing has no groups",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: istio-system}
spec: {}
`,
		want: &security.Authorization{Name: "allow-nothing", Namespace: "istio-system", Scope: security.Scope_GLOBAL},
	}, {
		name: "allow-all: an empty rule is a group with no rules",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  rules:
  - {}
`,
		want: &security.Authorization{Name: "allow-all", Namespace: "foo", Scope: security.Scope_NAMESPACE,
			Groups: []*security.Group{{Rules: []*security.Rules{}}}},
	}, {
		name: "wildcards, spiffe scheme, service accounts, ip blocks, L4 when",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mix, namespace: foo, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {}
  rules:
  - from:
    - source:
        principals: ["*", "spiffe://cluster.local/ns/a/*", "*/sa/x"]
        serviceAccounts: ["other/sa1", "sa2"]
        ipBlocks: ["10.0.0.0/8", "2001:db8::1"]
        notIpBlocks: ["10.1.0.0/16"]
    when:
    - key: destination.port
      values: ["80"]
      notValues: ["81"]
    - key: source.namespace
      notValues: ["kube-system"]
`,
		want: &security.Authorization{
			Name: "mix", Namespace: "foo", Scope: security.Scope_WORKLOAD_SELECTOR, DryRun: true,
			Groups: []*security.Group{group(
				rules(&security.Match{
					Principals: []*security.StringMatch{presence(),
						{MatchType: &security.StringMatch_Prefix{Prefix: "cluster.local/ns/a/"}},
						{MatchType: &security.StringMatch_Suffix{Suffix: "/sa/x"}}},
					ServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "other", ServiceAccount: "sa1"}, {Namespace: "foo", ServiceAccount: "sa2"}},
					SourceIps: []*security.Address{{Address: []byte{10, 0, 0, 0}, Length: 8},
						{Address: netip.MustParseAddr("2001:db8::1").AsSlice(), Length: 128}},
					NotSourceIps: []*security.Address{{Address: []byte{10, 1, 0, 0}, Length: 16}},
				}),
				rules(&security.Match{DestinationPorts: []uint32{80}, NotDestinationPorts: []uint32{81}}),
				rules(&security.Match{NotNamespaces: []*security.StringMatch{exact("kube-system")}}),
			)},
		},
	}, {
		name: "ALLOW rule with methods fails closed: rule omitted, other rules kept",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7, namespace: foo}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
    to:
    - operation: {methods: ["GET"], paths: ["/info*"]}
  - from:
    - source: {namespaces: ["ops"]}
`,
		want: &security.Authorization{Name: "l7", Namespace: "foo", Scope: security.Scope_NAMESPACE,
			Groups: []*security.Group{group(rules(&security.Match{Namespaces: []*security.StringMatch{exact("ops")}}))}},
		reason: ReasonUnsupportedValue,
	}, {
		name: "ALLOW with only L7 rules matches nothing",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7only, namespace: foo}
spec:
  rules:
  - from:
    - source: {requestPrincipals: ["*"]}
  - when:
    - key: request.headers[version]
      values: ["v1"]
  - to:
    - operation: {hosts: ["example.com"]}
`,
		want:   &security.Authorization{Name: "l7only", Namespace: "foo", Scope: security.Scope_NAMESPACE},
		reason: ReasonUnsupportedValue,
	}, {
		name: "DENY with L7 fields widened to L4 part",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-post, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source: {namespaces: ["dev"], requestPrincipals: ["*"]}
    to:
    - operation: {methods: ["POST"], ports: ["8080"]}
  - to:
    - operation: {methods: ["DELETE"]}
    when:
    - key: request.auth.claims[iss]
      values: ["x"]
`,
		want: &security.Authorization{Name: "deny-post", Namespace: "foo", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
			Groups: []*security.Group{
				group(rules(&security.Match{DestinationPorts: []uint32{8080}}),
					rules(&security.Match{Namespaces: []*security.StringMatch{exact("dev")}})),
				// methods-only: unconditional, so the rule denies everything.
				{Rules: []*security.Rules{}},
			}},
		reason: ReasonUnsupportedValue,
	}, {
		name: "ALLOW with invalid port: the alternative is impossible",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: badport, namespace: foo}
spec:
  rules:
  - to:
    - operation: {ports: ["http"]}
  - to:
    - operation: {ports: ["99999", "80"]}
`,
		want: &security.Authorization{Name: "badport", Namespace: "foo", Scope: security.Scope_NAMESPACE,
			Groups: []*security.Group{group(rules(&security.Match{DestinationPorts: []uint32{80}}))}},
		reason: ReasonInvalidValue,
	}, {
		name: "DENY with invalid ipBlock widens the condition",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: badip, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source: {ipBlocks: ["10.0.0.0/8", "not-an-ip"], namespaces: ["x"]}
`,
		want: &security.Authorization{Name: "badip", Namespace: "foo", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
			Groups: []*security.Group{group(rules(&security.Match{Namespaces: []*security.StringMatch{exact("x")}}))}},
		reason: ReasonInvalidValue,
	}, {
		name: "targetRefs are for the waypoint",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wp, namespace: foo}
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: reviews
  action: DENY
  rules:
  - to:
    - operation: {methods: ["GET"]}
`,
		reason: ReasonNotZtunnelPolicy,
	}, {
		name: "CUSTOM is not for ztunnel",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: my-ext-authz}
  rules: [{}]
`,
		reason: ReasonUnsupportedValue,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, conds := Authorization(decodeAP(t, tt.manifest), "istio-system")
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Authorization mismatch (-want +got):\n%s", diff)
			}
			if len(conds) != 1 || conds[0].Type != ConditionZtunnelAccepted {
				t.Fatalf("conditions = %+v, want one %s", conds, ConditionZtunnelAccepted)
			}
			if tt.reason == "" {
				if diff := cmp.Diff(accepted(), conds); diff != "" {
					t.Errorf("conditions mismatch (-want +got):\n%s", diff)
				}
			} else if conds[0].Reason != tt.reason {
				t.Errorf("reason = %q (%s), want %q", conds[0].Reason, conds[0].Message, tt.reason)
			}
		})
	}
}

// TestAuthorization_EnforcedByAuthz runs translated policies through
// ztunnel's evaluator: the L7 cases must only ever restrict.
func TestAuthorization_EnforcedByAuthz(t *testing.T) {
	sleep := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	conn := func(port uint16) authz.Connection {
		return authz.Connection{SrcIdentity: sleep, SrcIP: netip.MustParseAddr("10.0.0.1"),
			DstIP: netip.MustParseAddr("10.0.0.2"), DstPort: port, DstNamespace: "foo"}
	}
	tests := []struct {
		name     string
		manifest string
		port     uint16
		allowed  bool
	}{{
		name: "allow by principal matches sleep",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: foo}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
`,
		port: 80, allowed: true,
	}, {
		name: "allow with methods never matches",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: foo}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
    to:
    - operation: {methods: ["GET"]}
`,
		port: 80, allowed: false,
	}, {
		name: "deny POST on 8080 denies all of 8080",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d, namespace: foo}
spec:
  action: DENY
  rules:
  - to:
    - operation: {methods: ["POST"], ports: ["8080"]}
`,
		port: 8080, allowed: false,
	}, {
		name: "deny POST on 8080 leaves 80",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d, namespace: foo}
spec:
  action: DENY
  rules:
  - to:
    - operation: {methods: ["POST"], ports: ["8080"]}
`,
		port: 80, allowed: true,
	}, {
		name: "deny with only paths denies everything",
		manifest: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d, namespace: foo}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin"]}
`,
		port: 80, allowed: false,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol, _ := Authorization(decodeAP(t, tt.manifest), "istio-system")
			d := authz.Evaluate(conn(tt.port), []*security.Authorization{pol})
			if d.Allowed != tt.allowed {
				t.Errorf("Allowed = %v (%s), want %v", d.Allowed, d.Reason, tt.allowed)
			}
		})
	}
}

func TestFromUnstructured_RejectsWrongKindAndUnknownFields(t *testing.T) {
	for name, obj := range map[string]map[string]any{
		"wrong kind":    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "spec": map[string]any{}},
		"wrong group":   {"apiVersion": "networking.istio.io/v1", "kind": "AuthorizationPolicy"},
		"unknown field": {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "spec": map[string]any{"rulez": []any{}}},
	} {
		if _, err := FromUnstructured[AuthorizationPolicy](obj); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	obj := map[string]any{"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
		"metadata": map[string]any{"name": "p", "namespace": "foo"},
		"spec":     map[string]any{"mtls": map[string]any{"mode": "STRICT"}, "portLevelMtls": map[string]any{"8080": map[string]any{"mode": "DISABLE"}}},
		"status":   map[string]any{"conditions": []any{}}}
	pa, err := FromUnstructured[PeerAuthentication](obj)
	if err != nil {
		t.Fatal(err)
	}
	if pa.Spec.MTLS.Mode != ModeStrict || pa.Spec.PortLevelMTLS[8080].Mode != ModeDisable || pa.Name != "p" {
		t.Errorf("decoded %+v", pa)
	}
}
