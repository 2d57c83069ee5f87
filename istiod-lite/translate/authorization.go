package translate

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// Condition is a status condition for the policy a translation came from,
// for the controller to write to the policy's status.conditions.
type Condition struct {
	Type    string
	Status  metav1.ConditionStatus
	Reason  string
	Message string
}

// Condition types and reasons [Authorization] reports, as Istio's do.
const (
	ConditionZtunnelAccepted = "ZtunnelAccepted"
	ReasonAccepted           = "Accepted"
	ReasonUnsupportedValue   = "UnsupportedValue"
	ReasonInvalidValue       = "InvalidValue"
	ReasonNotZtunnelPolicy   = "NotZtunnelPolicy"
)

// l4WhenKeys are the `when` keys ztunnel can evaluate.
var l4WhenKeys = []string{"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}

// Authorization translates an AuthorizationPolicy into the policy ztunnel
// enforces, and reports one ZtunnelAccepted condition describing the result.
// It returns a nil policy when ztunnel has nothing to enforce: the policy
// has targetRefs (a waypoint enforces it) or its action is AUDIT or CUSTOM.
//
// Scope: a policy in rootNamespace without a selector is GLOBAL, any policy
// with a selector WORKLOAD_SELECTOR (bound through [PolicyNames]), else
// NAMESPACE. Each rule becomes a group; its to, from and each when entry
// become rules (ANDed) whose matches are ORed.
//
// ztunnel sees only L4. A rule of an ALLOW policy with any L7 field
// (hosts, methods, paths and their not forms, requestPrincipals,
// remoteIpBlocks, a when key other than source.ip, source.namespace,
// source.principal, destination.ip, destination.port) is omitted — it can
// never match — so the policy allows less than asked, never more. In a DENY
// policy the L7 fields are dropped and the rule is enforced on its L4 part,
// denying more than asked. Invalid values (a port or CIDR that does not
// parse) fail the same way: narrowing an ALLOW, widening a DENY.
func Authorization(ap AuthorizationPolicy, rootNamespace string) (*security.Authorization, []Condition) {
	spec := ap.Spec
	if len(spec.TargetRefs) > 0 || spec.TargetRef != nil {
		return nil, []Condition{{
			Type: ConditionZtunnelAccepted, Status: metav1.ConditionFalse, Reason: ReasonNotZtunnelPolicy,
			Message: "the policy has targetRefs: it is enforced by the waypoint, not ztunnel",
		}}
	}
	var action security.Action
	switch spec.Action {
	case "", ActionAllow:
		action = security.Action_ALLOW
	case ActionDeny:
		action = security.Action_DENY
	default:
		return nil, []Condition{{
			Type: ConditionZtunnelAccepted, Status: metav1.ConditionFalse, Reason: ReasonUnsupportedValue,
			Message: fmt.Sprintf("ztunnel does not support the %s action", spec.Action),
		}}
	}
	scope := security.Scope_WORKLOAD_SELECTOR
	if spec.Selector == nil {
		scope = security.Scope_NAMESPACE
		if ap.Namespace == rootNamespace {
			scope = security.Scope_GLOBAL
		}
	}
	out := &security.Authorization{
		Name:      ap.Name,
		Namespace: ap.Namespace,
		Scope:     scope,
		Action:    action,
		DryRun:    strings.EqualFold(ap.Annotations[AnnotationDryRun], "true"),
	}
	c := &converter{deny: action == security.Action_DENY, namespace: ap.Namespace}
	for _, r := range spec.Rules {
		if g := c.rule(r); g != nil {
			out.Groups = append(out.Groups, g)
		}
	}
	return out, []Condition{c.condition()}
}

// converter translates the rules of one policy and collects what it had to
// change.
type converter struct {
	deny      bool
	namespace string
	l7        []string // L7 fields and when keys seen, in order, unique
	invalid   []string // invalid values seen
}

func (c *converter) sawL7(field string) {
	if !slices.Contains(c.l7, field) {
		c.l7 = append(c.l7, field)
	}
}

func (c *converter) condition() Condition {
	cond := Condition{Type: ConditionZtunnelAccepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted, Message: "the policy is enforced by ztunnel as written"}
	var msgs []string
	if len(c.l7) > 0 {
		cond.Reason = ReasonUnsupportedValue
		how := "Within an ALLOW policy, rules matching HTTP attributes are omitted."
		if c.deny {
			how = "DENY policy with HTTP attributes is enforced without the HTTP rules."
		}
		msgs = append(msgs, fmt.Sprintf("ztunnel does not support HTTP attributes (found: %s). In ambient mode you must use a waypoint proxy to enforce HTTP rules. %s This will be more restrictive than requested.",
			strings.Join(c.l7, ", "), how))
	}
	if len(c.invalid) > 0 {
		if cond.Reason == ReasonAccepted {
			cond.Reason = ReasonInvalidValue
		}
		how := "rules using them never match"
		if c.deny {
			how = "the conditions using them are widened"
		}
		msgs = append(msgs, fmt.Sprintf("invalid values (%s): %s; this is more restrictive than requested.", strings.Join(c.invalid, ", "), how))
	}
	if len(msgs) > 0 {
		cond.Message = strings.Join(msgs, " ")
	}
	return cond
}

// rule converts one rule into a group, or nil when the rule can never match
// at ztunnel (an ALLOW rule with L7 fields or with invalid values).
func (c *converter) rule(r Rule) *security.Group {
	g := &security.Group{Rules: []*security.Rules{}}
	l7 := false
	var to, from []*security.Match
	for _, t := range r.To {
		op := t.Operation
		for _, f := range []struct {
			name string
			v    []string
		}{{"hosts", op.Hosts}, {"notHosts", op.NotHosts}, {"methods", op.Methods}, {"notMethods", op.NotMethods}, {"paths", op.Paths}, {"notPaths", op.NotPaths}} {
			if len(f.v) > 0 {
				l7 = true
				c.sawL7(f.name)
			}
		}
		m := &security.Match{}
		ok := list(c, op.Ports, op.NotPorts, parsePort, &m.DestinationPorts, &m.NotDestinationPorts)
		to = c.keep(to, m, ok)
	}
	for _, f := range r.From {
		s := f.Source
		for _, f := range []struct {
			name string
			v    []string
		}{{"requestPrincipals", s.RequestPrincipals}, {"notRequestPrincipals", s.NotRequestPrincipals}, {"remoteIpBlocks", s.RemoteIPBlocks}, {"notRemoteIpBlocks", s.NotRemoteIPBlocks}} {
			if len(f.v) > 0 {
				l7 = true
				c.sawL7(f.name)
			}
		}
		m := &security.Match{}
		ok := list(c, s.Principals, s.NotPrincipals, parsePrincipal, &m.Principals, &m.NotPrincipals) &&
			list(c, s.Namespaces, s.NotNamespaces, parseStringMatch, &m.Namespaces, &m.NotNamespaces) &&
			list(c, s.ServiceAccounts, s.NotServiceAccounts, c.parseServiceAccount, &m.ServiceAccounts, &m.NotServiceAccounts) &&
			list(c, s.IPBlocks, s.NotIPBlocks, parseCIDR, &m.SourceIps, &m.NotSourceIps)
		from = c.keep(from, m, ok)
	}
	var whens [][]*security.Match
	for _, w := range r.When {
		if !slices.Contains(l4WhenKeys, w.Key) {
			l7 = true
			c.sawL7(w.Key)
			continue
		}
		m := &security.Match{}
		ok := len(w.Values)+len(w.NotValues) > 0
		if !ok {
			ok = c.deny // widened to "any" in a DENY, impossible in an ALLOW
			c.invalid = append(c.invalid, fmt.Sprintf("when %s without values", w.Key))
		}
		switch w.Key {
		case "source.ip":
			ok = ok && list(c, w.Values, w.NotValues, parseCIDR, &m.SourceIps, &m.NotSourceIps)
		case "source.namespace":
			ok = ok && list(c, w.Values, w.NotValues, parseStringMatch, &m.Namespaces, &m.NotNamespaces)
		case "source.principal":
			ok = ok && list(c, w.Values, w.NotValues, parsePrincipal, &m.Principals, &m.NotPrincipals)
		case "destination.ip":
			ok = ok && list(c, w.Values, w.NotValues, parseCIDR, &m.DestinationIps, &m.NotDestinationIps)
		case "destination.port":
			ok = ok && list(c, w.Values, w.NotValues, parsePort, &m.DestinationPorts, &m.NotDestinationPorts)
		}
		whens = append(whens, c.keep(nil, m, ok))
	}
	if l7 && !c.deny {
		return nil
	}
	clauses := [][]*security.Match{}
	if len(r.To) > 0 {
		clauses = append(clauses, to)
	}
	if len(r.From) > 0 {
		clauses = append(clauses, from)
	}
	clauses = append(clauses, whens...)
	for _, ms := range clauses {
		switch {
		case slices.ContainsFunc(ms, emptyMatch):
			// One alternative is unconditional, so the clause is: leave
			// it out. (ztunnel skips an empty match rather than letting it
			// match everything.)
		case len(ms) == 0:
			// Every alternative was impossible (ALLOW with invalid
			// values): the rule never matches.
			return nil
		default:
			g.Rules = append(g.Rules, &security.Rules{Matches: ms})
		}
	}
	return g
}

// keep appends m to ms unless it is impossible (!ok, only for ALLOW). In a
// DENY, an impossible match cannot occur: its invalid lists were widened.
func (c *converter) keep(ms []*security.Match, m *security.Match, ok bool) []*security.Match {
	if !ok {
		return ms
	}
	return append(ms, m)
}

// list converts a positive and a negative value list into *pos and *neg and
// reports whether the match can still match. Invalid values fail closed:
// in an ALLOW, an invalid positive value is dropped (the match becomes
// impossible if none is left) and an invalid negative value makes the match
// impossible; in a DENY, an invalid positive value drops the whole positive
// condition (any value matches) and an invalid negative value is dropped.
func list[T any](c *converter, vals, notVals []string, parse func(string) (T, bool), pos, neg *[]T) bool {
	p, pBad := parseAll(c, vals, parse)
	n, nBad := parseAll(c, notVals, parse)
	if c.deny {
		if !pBad {
			*pos = p
		}
		*neg = n
		return true
	}
	*pos, *neg = p, n
	return !nBad && (len(vals) == 0 || len(p) > 0)
}

func parseAll[T any](c *converter, vals []string, parse func(string) (T, bool)) ([]T, bool) {
	var out []T
	bad := false
	for _, v := range vals {
		x, ok := parse(v)
		if !ok {
			bad = true
			c.invalid = append(c.invalid, strconv.Quote(v))
			continue
		}
		out = append(out, x)
	}
	return out, bad
}

func emptyMatch(m *security.Match) bool {
	return len(m.GetNamespaces()) == 0 && len(m.GetNotNamespaces()) == 0 &&
		len(m.GetPrincipals()) == 0 && len(m.GetNotPrincipals()) == 0 &&
		len(m.GetServiceAccounts()) == 0 && len(m.GetNotServiceAccounts()) == 0 &&
		len(m.GetSourceIps()) == 0 && len(m.GetNotSourceIps()) == 0 &&
		len(m.GetDestinationIps()) == 0 && len(m.GetNotDestinationIps()) == 0 &&
		len(m.GetDestinationPorts()) == 0 && len(m.GetNotDestinationPorts()) == 0
}

// parseStringMatch converts an AuthorizationPolicy string with Istio's
// wildcards: "*" is presence, "*x" suffix x, "x*" prefix x.
func parseStringMatch(v string) (*security.StringMatch, bool) {
	switch {
	case v == "":
		return nil, false
	case v == "*":
		return &security.StringMatch{MatchType: &security.StringMatch_Presence{}}, true
	case strings.HasPrefix(v, "*"):
		return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: v[1:]}}, true
	case strings.HasSuffix(v, "*"):
		return &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: v[:len(v)-1]}}, true
	}
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: v}}, true
}

// parsePrincipal is parseStringMatch on the principal's wire form, without
// the "spiffe://" scheme ("cluster.local/ns/default/sa/sleep").
func parsePrincipal(v string) (*security.StringMatch, bool) {
	return parseStringMatch(strings.TrimPrefix(v, "spiffe://"))
}

// parseServiceAccount reads "namespace/name", or "name" in the policy's
// namespace.
func (c *converter) parseServiceAccount(v string) (*security.ServiceAccountMatch, bool) {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		ns, sa = c.namespace, v
	}
	if ns == "" || sa == "" || strings.Contains(sa, "/") {
		return nil, false
	}
	return &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: sa}, true
}

func parsePort(v string) (uint32, bool) {
	p, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return 0, false
	}
	return uint32(p), true
}

// parseCIDR reads a CIDR or a single address (a /32 or /128).
func parseCIDR(v string) (*security.Address, bool) {
	var p netip.Prefix
	var err error
	if strings.Contains(v, "/") {
		p, err = netip.ParsePrefix(v)
	} else {
		var a netip.Addr
		a, err = netip.ParseAddr(v)
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if err != nil || p.Addr().Zone() != "" {
		return nil, false
	}
	return &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}, true
}
