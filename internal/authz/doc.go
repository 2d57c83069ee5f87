// Package authz is the L4 authorization evaluator ztunnel runs on every
// inbound connection (DESIGN §5, §7). It is pure: no I/O, no clock, no
// logging; the caller passes the connection and the policies, and gets back
// a [Decision] to enforce and log.
//
// # Input
//
// Policies are the istio.security.Authorization resources of
// proto/workloadapi/security, Istio ztunnel's wire format, and are judged the
// way Istio's ztunnel judges them (src/rbac.rs). [Applicable] picks the
// policies that apply to a destination workload; [Evaluate] decides.
//
// # Matching
//
//   - A policy matches when ANY of its groups matches; a policy with no
//     groups never matches.
//   - A group matches when ALL of its rules match; a group with no rules
//     matches every connection, as in Istio's ztunnel.
//   - A rule matches when ANY of its matches matches; a rule with no matches
//     matches. A match with no conditions at all is skipped (never matches).
//   - Within a match, every non-empty list must have an entry that matches,
//     and every non-empty not_ list must have no entry that matches.
//
// Conditions are taken from the connection so:
//
//   - principals: the source SPIFFE ID without the scheme,
//     "cluster.local/ns/default/sa/sleep", as Istio writes principals in
//     AuthorizationPolicy and as its ztunnel compares them. A value written
//     with the scheme, "spiffe://cluster.local/ns/default/sa/sleep", is
//     accepted too.
//   - namespaces and service_accounts: the namespace and service account of
//     the source identity (identity.ParseWorkload).
//   - source_ips, destination_ips: CIDR blocks; IPv4-mapped IPv6 addresses
//     match as IPv4.
//   - destination_ports: the destination port.
//
// StringMatch supports exact, prefix, suffix and presence (any non-empty
// value). An exact value using Istio's AuthorizationPolicy wildcards is read
// as the control plane would have converted it: "*" is presence, "*x" a
// suffix and "x*" a prefix. No SPIFFE ID or Kubernetes namespace can contain
// '*', so this never changes what a literal value would have matched.
//
// # Connections without identity
//
// A plaintext connection (zero SrcIdentity) has no principal, namespace or
// service account, so no entry of principals, namespaces or
// service_accounts matches it — not even presence. As in Istio's ztunnel a
// not_ list therefore never excludes it: not_principals: [presence] matches
// exactly the connections without identity. That is how PeerAuthentication
// STRICT is expressed ([StrictPolicy]), and it means an ALLOW by principal
// refuses plaintext while a DENY by principal does not catch it.
//
// # Malformed entries fail closed
//
// An entry that cannot be judged (a StringMatch with no match type, an
// address that is not 4 or 16 bytes or whose prefix length is too long, a
// port above 65535) pushes its match toward the restrictive outcome: it
// counts as matching in a DENY policy's lists and as not matching in an
// ALLOW policy's lists, and the reverse in not_ lists. Istio's ztunnel drops
// such entries, which can turn "source_ips: [garbage]" into "any source".
//
// # Decision
//
// Istio's order: dry-run policies are evaluated and reported but never
// enforced; if any DENY policy matches, deny; if no ALLOW policy applies,
// allow; if any ALLOW policy matches, allow; otherwise deny. A policy whose
// action is neither ALLOW nor DENY is treated as DENY.
//
// # Example
//
//	// Only sleep may reach the workload, and only on port 8080.
//	pol := &security.Authorization{
//		Name: "sleep-only", Namespace: "default",
//		Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
//		Groups: []*security.Group{{Rules: []*security.Rules{
//			{Matches: []*security.Match{{Principals: []*security.StringMatch{
//				{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/default/sa/sleep"}},
//			}}}},
//			{Matches: []*security.Match{{DestinationPorts: []uint32{8080}}}},
//		}}},
//	}
//	pols := authz.Applicable([]*security.Authorization{pol}, "default", wl.GetAuthorizationPolicies(), "istio-system")
//	d := authz.Evaluate(authz.Connection{SrcIdentity: peer, SrcIP: src, DstIP: dst, DstPort: 8080}, pols)
//	// d.Allowed, d.Policy == "default/sleep-only", d.Reason == authz.ReasonAllowMatched
package authz
