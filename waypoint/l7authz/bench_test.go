package l7authz

import "testing"

// benchPolicies is a realistic set: a deny of admin paths, an allow by
// namespace and method, an allow by header, an audit.
func benchPolicies(t testing.TB) []*Policy {
	return []*Policy{
		pol(t, "deny-admin", "DENY", Rule{To: to(Operation{Paths: []string{"/admin", "/admin/*"}})},
			Rule{From: from(Source{NotNamespaces: []string{"shop", "billing"}})}),
		pol(t, "allow-frontend", "ALLOW", Rule{
			From: from(Source{Principals: []string{"cluster.local/ns/shop/sa/frontend"}}, Source{Namespaces: []string{"billing"}}),
			To:   to(Operation{Methods: []string{"GET", "HEAD"}, Paths: []string{"/api/*", "/public"}, Hosts: []string{"reviews.shop.svc.cluster.local", "reviews.shop.svc.cluster.local:*"}}),
			When: []Condition{{Key: "request.headers[user-agent]", NotValues: []string{"evil*"}}},
		}),
		pol(t, "allow-template", "ALLOW", Rule{To: to(Operation{Paths: []string{"/v2/{*}/items/{**}"}})}),
		pol(t, "audit", "AUDIT", Rule{To: to(Operation{Methods: []string{"DELETE"}})}),
	}
}

func BenchmarkEvaluate(b *testing.B) {
	policies := benchPolicies(b)
	for _, bc := range []struct{ name, path string }{
		{"clean", "/api/v1/items/42?x=1"},
		{"normalized", "/api//v1/./items/%34%32;x?x=1"},
		{"template", "/v2/a/items/b/c"},
	} {
		r := req(withPath(bc.path))
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d := Evaluate(policies, r); !d.Allow {
					b.Fatal(d)
				}
			}
		})
	}
}

func BenchmarkNormalizePath(b *testing.B) {
	for _, p := range []string{"/api/v1/items/42", "/a//b/./c/../%2Fd;x=1?q"} {
		b.Run(p, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NormalizePath(p, NormalizeStrict); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
