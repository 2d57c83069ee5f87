package l7authz_test

import (
	"fmt"

	"github.com/ambientmesh/ambient/waypoint/l7authz"
)

func Example() {
	// Compile once per config change.
	p, err := l7authz.Compile(l7authz.Input{Namespace: "shop", Name: "deny-admin", Spec: l7authz.Spec{
		Action:     "DENY",
		TargetRefs: []l7authz.TargetRef{{Group: l7authz.GroupGateway, Kind: l7authz.KindGateway, Name: "waypoint"}},
		Rules:      []l7authz.Rule{{To: []l7authz.To{{Operation: l7authz.Operation{Paths: []string{"/admin", "/admin/*"}}}}}},
	}})
	if err != nil {
		panic(err)
	}
	pols := l7authz.Applicable([]*l7authz.Policy{p}, "istio-system", l7authz.GatewayTarget("shop", "waypoint"))

	// Evaluate per request.
	for _, path := range []string{"/public", "/%2Fadmin", "/public/..;/admin/users", "/ADMIN", "/a%zz"} {
		d := l7authz.Evaluate(pols, &l7authz.Request{Method: "GET", Host: "reviews", Path: path})
		fmt.Printf("%-24s allow=%v status=%d %s\n", path, d.Allow, d.Status, d.Reason)
	}
	// Output:
	// /public                  allow=true status=0 no allow policy applies
	// /%2Fadmin                allow=false status=403 deny policy matched
	// /public/..;/admin/users  allow=false status=403 deny policy matched
	// /ADMIN                   allow=true status=0 no allow policy applies
	// /a%zz                    allow=false status=400 path cannot be normalized
}
