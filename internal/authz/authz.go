package authz

import (
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// Connection is what ztunnel knows about an inbound connection when it
// authorizes it.
type Connection struct {
	// SrcIdentity is the peer's verified SPIFFE ID; the zero ID means the
	// connection carries no verified identity (plaintext).
	SrcIdentity spiffeid.ID
	// SrcIP is the source address of the connection.
	SrcIP netip.Addr
	// DstIP and DstPort are the original destination.
	DstIP   netip.Addr
	DstPort uint16
	// DstNamespace is the destination workload's namespace. The wire format
	// has no condition on it; it is carried for [Applicable] callers and
	// logs, and Evaluate ignores it.
	DstNamespace string
}

// Decision is the outcome of [Evaluate].
type Decision struct {
	// Allowed says whether the connection may proceed.
	Allowed bool
	// Policy is the "namespace/name" of the enforced policy that decided:
	// the matching DENY or ALLOW policy. It is empty when no policy decided
	// (ReasonNoAllowPolicy, ReasonNoAllowMatched).
	Policy string
	// Reason is one of the Reason* constants; few values, fit for a metric
	// label.
	Reason string
	// DryRun lists the dry-run policies that matched, in input order, as
	// "namespace/name: would deny" or "namespace/name: would allow".
	DryRun []string
	// DryRunAllowed is what Allowed would be if the dry-run policies were
	// enforced too. Compare it with Allowed to see what enabling them would
	// change.
	DryRunAllowed bool
}

// Reasons reported in [Decision].Reason.
const (
	ReasonDenyMatched    = "deny policy matched"
	ReasonNoAllowPolicy  = "no allow policy applies"
	ReasonAllowMatched   = "allow policy matched"
	ReasonNoAllowMatched = "allow policies exist, none matched"
)

// StrictPolicyName is the name Istio gives the policy that carries
// PeerAuthentication STRICT to ztunnel.
const StrictPolicyName = "istio_converted_static_strict"

// Key returns the resource name of a policy, "namespace/name", the form
// used by Workload.authorization_policies and [Decision].Policy.
func Key(p *security.Authorization) string {
	return p.GetNamespace() + "/" + p.GetName()
}

// StrictPolicy returns the policy that enforces PeerAuthentication STRICT,
// built as Istio's control plane builds it: a DENY of every connection
// without a principal (not_principals: [presence]), named
// [StrictPolicyName] in the given namespace (Istio uses the root
// namespace), scoped WORKLOAD_SELECTOR so it applies to exactly the
// workloads whose authorization_policies list "namespace/" + StrictPolicyName.
func StrictPolicy(namespace string) *security.Authorization {
	return &security.Authorization{
		Name:      StrictPolicyName,
		Namespace: namespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Groups: []*security.Group{{
			Rules: []*security.Rules{{
				Matches: []*security.Match{{
					NotPrincipals: []*security.StringMatch{{
						MatchType: &security.StringMatch_Presence{},
					}},
				}},
			}},
		}},
	}
}

// Applicable returns, in input order and without duplicate keys, the
// policies that apply to a workload in dstNamespace whose
// Workload.authorization_policies is workloadPolicyNames:
//
//   - GLOBAL policies apply to every workload (the control plane sends the
//     root namespace's policies as GLOBAL);
//   - NAMESPACE policies apply to workloads in the policy's namespace, and to
//     every workload when the policy lives in rootNamespace (empty: no root
//     namespace);
//   - any policy the workload names applies whatever its scope, as in
//     Istio's ztunnel; WORKLOAD_SELECTOR policies, and policies with a scope
//     this package does not know, apply only so.
//
// Nil entries are skipped.
func Applicable(policies []*security.Authorization, dstNamespace string, workloadPolicyNames []string, rootNamespace string) []*security.Authorization {
	named := make(map[string]bool, len(workloadPolicyNames))
	for _, n := range workloadPolicyNames {
		named[n] = true
	}
	var out []*security.Authorization
	seen := make(map[string]bool)
	for _, p := range policies {
		if p == nil {
			continue
		}
		k := Key(p)
		if seen[k] {
			continue
		}
		applies := named[k]
		switch p.GetScope() {
		case security.Scope_GLOBAL:
			applies = true
		case security.Scope_NAMESPACE:
			ns := p.GetNamespace()
			applies = applies || ns == dstNamespace || (rootNamespace != "" && ns == rootNamespace)
		}
		if applies {
			seen[k] = true
			out = append(out, p)
		}
	}
	return out
}

// Matches reports whether the policy matches the connection, whatever its
// action and dry-run flag. A nil policy matches nothing.
func Matches(conn Connection, p *security.Authorization) bool {
	if p == nil {
		return false
	}
	return newEvalConn(conn).policy(p)
}

// Evaluate decides whether conn may proceed under policies, the policies
// that apply to the destination workload (see [Applicable]). It does not
// modify the policies. Nil entries are skipped.
func Evaluate(conn Connection, policies []*security.Authorization) Decision {
	c := newEvalConn(conn)
	res := make([]result, 0, len(policies))
	var d Decision
	for _, p := range policies {
		if p == nil {
			continue
		}
		r := result{key: Key(p), deny: isDeny(p), dryRun: p.GetDryRun(), matched: c.policy(p)}
		res = append(res, r)
		if r.dryRun && r.matched {
			if r.deny {
				d.DryRun = append(d.DryRun, r.key+": would deny")
			} else {
				d.DryRun = append(d.DryRun, r.key+": would allow")
			}
		}
	}
	d.Allowed, d.Policy, d.Reason = decide(res, false)
	d.DryRunAllowed, _, _ = decide(res, true)
	return d
}

// result is one policy judged against a connection.
type result struct {
	key     string
	deny    bool
	dryRun  bool
	matched bool
}

// decide applies Istio's order to judged policies; withDryRun counts the
// dry-run policies as enforced.
func decide(res []result, withDryRun bool) (allowed bool, policy, reason string) {
	haveAllow := false
	allowBy := ""
	for _, r := range res {
		if r.dryRun && !withDryRun {
			continue
		}
		if r.deny {
			if r.matched {
				return false, r.key, ReasonDenyMatched
			}
			continue
		}
		haveAllow = true
		if r.matched && allowBy == "" {
			allowBy = r.key
		}
	}
	switch {
	case !haveAllow:
		return true, "", ReasonNoAllowPolicy
	case allowBy != "":
		return true, allowBy, ReasonAllowMatched
	default:
		return false, "", ReasonNoAllowMatched
	}
}

// isDeny reports whether a policy denies on a match: DENY, and any action
// this package does not know (fail closed).
func isDeny(p *security.Authorization) bool {
	return p.GetAction() != security.Action_ALLOW
}

// evalConn is a Connection prepared for matching.
type evalConn struct {
	hasID          bool
	principal      string // SPIFFE ID without "spiffe://"
	namespace      string // empty unless the ID is a workload ID
	serviceAccount string // empty unless the ID is a workload ID
	srcIP, dstIP   netip.Addr
	dstPort        uint16
}

func newEvalConn(conn Connection) evalConn {
	c := evalConn{
		srcIP:   conn.SrcIP.Unmap().WithZone(""),
		dstIP:   conn.DstIP.Unmap().WithZone(""),
		dstPort: conn.DstPort,
	}
	if id := conn.SrcIdentity; !id.IsZero() {
		c.hasID = true
		c.principal = id.TrustDomain().Name() + id.Path()
		if w, err := identity.ParseWorkload(id); err == nil {
			c.namespace, c.serviceAccount = w.Namespace, w.ServiceAccount
		}
	}
	return c
}

const spiffeScheme = "spiffe://"

// trimScheme removes a leading "spiffe://".
func trimScheme(s string) string { return strings.TrimPrefix(s, spiffeScheme) }
