package authz_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/ambientmesh/ambient/internal/authz"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// gen draws values from fuzz input; once the input runs out it yields zeros.
type gen struct{ b []byte }

func (g *gen) byte() byte {
	if len(g.b) == 0 {
		return 0
	}
	v := g.b[0]
	g.b = g.b[1:]
	return v
}

// n returns a value in [0, max).
func (g *gen) n(max int) int { return int(g.byte()) % max }

// Small pools, so that random policies and connections often meet.
var (
	fuzzIDs = []spiffeid.ID{
		{}, sleep, curl, foreign, remote, odd,
	}
	fuzzStrings = []string{
		"", "*", "default", "other", "def*", "*ault", "cluster.local/ns/default/sa/sleep",
		"spiffe://cluster.local/ns/default/sa/sleep", "cluster.local/ns/default/", "/sa/sleep",
		"cluster.local/*", "*/sa/curl", "remote.example/ns/default/sa/sleep", "spiffe://",
	}
	fuzzAddrs = []string{"10.0.1.5", "10.0.2.7", "192.168.0.1", "fd00::1:5", "::ffff:10.0.1.5", "10.0.1.200"}
	fuzzPorts = []uint32{80, 8080, 9090, 0, 65535, 65536 + 8080}
)

func (g *gen) conn() authz.Connection {
	return authz.Connection{
		SrcIdentity:  fuzzIDs[g.n(len(fuzzIDs))],
		SrcIP:        netip.MustParseAddr(fuzzAddrs[g.n(len(fuzzAddrs))]),
		DstIP:        netip.MustParseAddr(fuzzAddrs[g.n(len(fuzzAddrs))]),
		DstPort:      uint16(fuzzPorts[g.n(4)]),
		DstNamespace: "default",
	}
}

func (g *gen) stringMatch() *security.StringMatch {
	s := fuzzStrings[g.n(len(fuzzStrings))]
	switch g.n(6) {
	case 0, 1:
		return exact(s)
	case 2:
		return prefix(s)
	case 3:
		return suffix(s)
	case 4:
		return presence()
	default:
		return &security.StringMatch{} // malformed: no match type
	}
}

func (g *gen) address() *security.Address {
	a := netip.MustParseAddr(fuzzAddrs[g.n(len(fuzzAddrs))]).AsSlice()
	if g.n(8) == 0 {
		a = a[:3] // malformed
	}
	return &security.Address{Address: a, Length: uint32(g.n(130))}
}

func (g *gen) serviceAccount() *security.ServiceAccountMatch {
	return sa([]string{"default", "other", ""}[g.n(3)], []string{"sleep", "curl", ""}[g.n(3)])
}

func list[T any](g *gen, f func() T) []T {
	n := g.n(4) - 1 // often empty
	var out []T
	for range n {
		out = append(out, f())
	}
	return out
}

func (g *gen) match() *security.Match {
	port := func() uint32 { return fuzzPorts[g.n(len(fuzzPorts))] }
	return &security.Match{
		Namespaces:          list(g, g.stringMatch),
		NotNamespaces:       list(g, g.stringMatch),
		Principals:          list(g, g.stringMatch),
		NotPrincipals:       list(g, g.stringMatch),
		ServiceAccounts:     list(g, g.serviceAccount),
		NotServiceAccounts:  list(g, g.serviceAccount),
		SourceIps:           list(g, g.address),
		NotSourceIps:        list(g, g.address),
		DestinationIps:      list(g, g.address),
		NotDestinationIps:   list(g, g.address),
		DestinationPorts:    list(g, port),
		NotDestinationPorts: list(g, port),
	}
}

func (g *gen) policy(i int) *security.Authorization {
	p := &security.Authorization{
		Name:      fmt.Sprintf("p%d", i),
		Namespace: "default",
		Scope:     security.Scope(g.n(3)),
		Action:    security.Action(g.n(2)),
		DryRun:    g.n(4) == 0,
	}
	if g.n(16) == 0 {
		p.Action = security.Action(5) // unknown: judged as DENY
	}
	for range g.n(3) {
		grp := &security.Group{}
		for range g.n(3) {
			r := &security.Rules{}
			for range g.n(3) {
				r.Matches = append(r.Matches, g.match())
			}
			grp.Rules = append(grp.Rules, r)
		}
		p.Groups = append(p.Groups, grp)
	}
	return p
}

func (g *gen) policies() []*security.Authorization {
	var ps []*security.Authorization
	for i := range g.n(6) {
		ps = append(ps, g.policy(i))
	}
	return ps
}

func without(ps []*security.Authorization, drop func(*security.Authorization) bool) []*security.Authorization {
	var out []*security.Authorization
	for _, p := range ps {
		if !drop(p) {
			out = append(out, p)
		}
	}
	return out
}

func enforcedDeny(p *security.Authorization) bool {
	return !p.GetDryRun() && p.GetAction() != security.Action_ALLOW
}

// FuzzEvaluate checks invariants of Evaluate over random policies and
// connections.
func FuzzEvaluate(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 3, 1, 1, 2, 2, 2, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte("some longer seed that makes several policies with groups and rules and matches"))
	f.Fuzz(func(t *testing.T, data []byte) {
		g := &gen{b: data}
		c := g.conn()
		ps := g.policies()
		before := clonePolicies(ps)

		d := authz.Evaluate(c, ps)

		// Pure: same answer twice, inputs untouched.
		if again := authz.Evaluate(c, ps); !cmp.Equal(d, again) {
			t.Fatalf("Evaluate not deterministic: %+v then %+v", d, again)
		}
		if diff := cmp.Diff(before, ps, protocmp.Transform()); diff != "" {
			t.Fatalf("Evaluate modified its policies:\n%s", diff)
		}

		// The decision is explained consistently.
		switch d.Reason {
		case authz.ReasonDenyMatched, authz.ReasonNoAllowMatched:
			if d.Allowed {
				t.Fatalf("allowed with reason %q", d.Reason)
			}
		case authz.ReasonAllowMatched, authz.ReasonNoAllowPolicy:
			if !d.Allowed {
				t.Fatalf("denied with reason %q", d.Reason)
			}
		default:
			t.Fatalf("unknown reason %q", d.Reason)
		}
		if named := d.Reason == authz.ReasonDenyMatched || d.Reason == authz.ReasonAllowMatched; named != (d.Policy != "") {
			t.Fatalf("reason %q with policy %q", d.Reason, d.Policy)
		}
		if d.Policy != "" {
			i := slices.IndexFunc(ps, func(p *security.Authorization) bool { return authz.Key(p) == d.Policy })
			if i < 0 || ps[i].GetDryRun() || !authz.Matches(c, ps[i]) {
				t.Fatalf("deciding policy %q is not an enforced matching policy", d.Policy)
			}
		}

		// Only enforced DENY policies can refuse what the rest allows, and
		// a set of DENY policies alone denies exactly when one matches.
		withoutDeny := authz.Evaluate(c, without(ps, enforcedDeny))
		if d.Allowed && !withoutDeny.Allowed {
			t.Fatalf("removing DENY policies turned allow into deny: %+v vs %+v", d, withoutDeny)
		}
		denies := without(ps, func(p *security.Authorization) bool { return !enforcedDeny(p) })
		anyDeny := slices.ContainsFunc(denies, func(p *security.Authorization) bool { return authz.Matches(c, p) })
		if got := authz.Evaluate(c, denies).Allowed; got == anyDeny {
			t.Fatalf("DENY-only set: allowed=%v but a deny matched=%v", got, anyDeny)
		}
		if !anyDeny && d.Allowed != withoutDeny.Allowed {
			t.Fatalf("unmatched DENY policies changed the decision")
		}

		// Dry-run policies never change the enforced decision, and
		// DryRunAllowed is the decision with them enforced.
		if got := authz.Evaluate(c, without(ps, (*security.Authorization).GetDryRun)); got.Allowed != d.Allowed || got.Policy != d.Policy {
			t.Fatalf("dry-run policies changed the decision: %+v vs %+v", d, got)
		}
		enforced := clonePolicies(ps)
		for _, p := range enforced {
			p.DryRun = false
		}
		if got := authz.Evaluate(c, enforced).Allowed; got != d.DryRunAllowed {
			t.Fatalf("DryRunAllowed = %v, enforcing dry-run policies gives %v", d.DryRunAllowed, got)
		}

		// Order does not change the outcome.
		rev := slices.Clone(ps)
		slices.Reverse(rev)
		if got := authz.Evaluate(c, rev).Allowed; got != d.Allowed {
			t.Fatalf("reversing policies changed Allowed from %v to %v", d.Allowed, got)
		}

		// An allow-all policy admits whatever no DENY refuses.
		allowAll := policy("allow-all", security.Action_ALLOW, group())
		if got := authz.Evaluate(c, append(slices.Clone(ps), allowAll)).Allowed; got == anyDeny {
			t.Fatalf("with allow-all: allowed=%v, deny matched=%v", got, anyDeny)
		}

		// STRICT refuses every connection without identity.
		if c.SrcIdentity.IsZero() {
			if got := authz.Evaluate(c, append(slices.Clone(ps), authz.StrictPolicy("istio-system"))); got.Allowed {
				t.Fatalf("STRICT allowed a connection without identity: %+v", got)
			}
		}
	})
}
