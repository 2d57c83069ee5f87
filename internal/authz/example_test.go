package authz_test

import (
	"fmt"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/authz"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

func ExampleEvaluate() {
	// Only sleep may reach workloads in default, and only on port 8080.
	pol := &security.Authorization{
		Name: "sleep-only", Namespace: "default",
		Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
		Groups: []*security.Group{{Rules: []*security.Rules{
			{Matches: []*security.Match{{Principals: []*security.StringMatch{
				{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/default/sa/sleep"}},
			}}}},
			{Matches: []*security.Match{{DestinationPorts: []uint32{8080}}}},
		}}},
	}
	pols := authz.Applicable([]*security.Authorization{pol}, "default", nil, "istio-system")

	c := authz.Connection{
		SrcIdentity: spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"),
		SrcIP:       netip.MustParseAddr("10.0.1.5"),
		DstIP:       netip.MustParseAddr("10.0.2.7"),
		DstPort:     8080,
	}
	d := authz.Evaluate(c, pols)
	fmt.Println(d.Allowed, d.Policy, d.Reason)

	c.DstPort = 9090
	d = authz.Evaluate(c, pols)
	fmt.Println(d.Allowed, d.Reason)
	// Output:
	// true default/sleep-only allow policy matched
	// false allow policies exist, none matched
}
