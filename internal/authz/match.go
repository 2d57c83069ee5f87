package authz

import (
	"net/netip"
	"strings"

	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// policy reports whether any group of p matches.
func (c evalConn) policy(p *security.Authorization) bool {
	deny := isDeny(p)
	for _, g := range p.GetGroups() {
		if c.group(g, deny) {
			return true
		}
	}
	return false
}

// group reports whether every rule of g matches; no rules match everything.
func (c evalConn) group(g *security.Group, deny bool) bool {
	for _, r := range g.GetRules() {
		if !c.rules(r, deny) {
			return false
		}
	}
	return true
}

// rules reports whether any non-empty match of r matches; no matches match
// everything.
func (c evalConn) rules(r *security.Rules, deny bool) bool {
	ms := r.GetMatches()
	if len(ms) == 0 {
		return true
	}
	for _, m := range ms {
		if !emptyMatch(m) && c.match(m, deny) {
			return true
		}
	}
	return false
}

// emptyMatch reports whether m has no condition this package evaluates.
// Istio's ztunnel skips such matches rather than letting them match all.
func emptyMatch(m *security.Match) bool {
	return len(m.GetNamespaces()) == 0 && len(m.GetNotNamespaces()) == 0 &&
		len(m.GetPrincipals()) == 0 && len(m.GetNotPrincipals()) == 0 &&
		len(m.GetServiceAccounts()) == 0 && len(m.GetNotServiceAccounts()) == 0 &&
		len(m.GetSourceIps()) == 0 && len(m.GetNotSourceIps()) == 0 &&
		len(m.GetDestinationIps()) == 0 && len(m.GetNotDestinationIps()) == 0 &&
		len(m.GetDestinationPorts()) == 0 && len(m.GetNotDestinationPorts()) == 0
}

// verdict is how one entry of a condition list judges a connection.
type verdict uint8

const (
	no        verdict = iota // the entry does not match
	yes                      // the entry matches
	malformed                // the entry cannot be judged
)

func boolVerdict(b bool) verdict {
	if b {
		return yes
	}
	return no
}

// match reports whether every condition of m holds. deny selects which way
// malformed entries fail (see the package doc).
func (c evalConn) match(m *security.Match, deny bool) bool {
	return field(m.GetNamespaces(), m.GetNotNamespaces(), deny, c.namespaceVerdict) &&
		field(m.GetPrincipals(), m.GetNotPrincipals(), deny, c.principalVerdict) &&
		field(m.GetServiceAccounts(), m.GetNotServiceAccounts(), deny, c.serviceAccountVerdict) &&
		field(m.GetSourceIps(), m.GetNotSourceIps(), deny, ipVerdict(c.srcIP)) &&
		field(m.GetDestinationIps(), m.GetNotDestinationIps(), deny, ipVerdict(c.dstIP)) &&
		field(m.GetDestinationPorts(), m.GetNotDestinationPorts(), deny, c.portVerdict)
}

// field judges one condition: some entry of pos must match (when pos is
// set) and no entry of neg may match (when neg is set). A malformed entry
// counts as matching in pos and not matching in neg for a DENY policy, the
// reverse for an ALLOW policy, so it can only make a DENY wider or an
// ALLOW narrower.
func field[T any](pos, neg []T, deny bool, judge func(T) verdict) bool {
	if len(pos) > 0 && !anyMatch(pos, deny, judge) {
		return false
	}
	if len(neg) > 0 && anyMatch(neg, !deny, judge) {
		return false
	}
	return true
}

// anyMatch reports whether any entry matches, counting malformed entries as
// matching when malformedMatches is set.
func anyMatch[T any](xs []T, malformedMatches bool, judge func(T) verdict) bool {
	for _, x := range xs {
		switch judge(x) {
		case yes:
			return true
		case malformed:
			if malformedMatches {
				return true
			}
		}
	}
	return false
}

func (c evalConn) namespaceVerdict(sm *security.StringMatch) verdict {
	kind, v, ok := stringMatch(sm)
	if !ok {
		return malformed
	}
	if c.namespace == "" {
		return no
	}
	return boolVerdict(kind.matches(v, c.namespace))
}

func (c evalConn) principalVerdict(sm *security.StringMatch) verdict {
	kind, v, ok := stringMatch(sm)
	if !ok {
		return malformed
	}
	if !c.hasID {
		return no
	}
	// Principals are compared without the scheme, as Istio writes them;
	// accept values written with it. A suffix that starts with the scheme
	// can only match the whole ID.
	switch kind {
	case matchExact, matchPrefix:
		v = trimScheme(v)
	case matchSuffix:
		if strings.HasPrefix(v, spiffeScheme) {
			kind, v = matchExact, trimScheme(v)
		}
	}
	return boolVerdict(kind.matches(v, c.principal))
}

func (c evalConn) serviceAccountVerdict(sa *security.ServiceAccountMatch) verdict {
	if c.serviceAccount == "" {
		return no
	}
	return boolVerdict(sa.GetNamespace() == c.namespace && sa.GetServiceAccount() == c.serviceAccount)
}

func (c evalConn) portVerdict(p uint32) verdict {
	if p > 0xffff {
		return malformed
	}
	return boolVerdict(p == uint32(c.dstPort))
}

func ipVerdict(addr netip.Addr) func(*security.Address) verdict {
	return func(a *security.Address) verdict {
		p, ok := prefix(a)
		if !ok {
			return malformed
		}
		return boolVerdict(p.Contains(addr))
	}
}

// prefix converts a wire Address to a prefix. IPv4-mapped IPv6 prefixes of
// at least 96 bits become IPv4 prefixes, matching unmapped connection
// addresses.
func prefix(a *security.Address) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(a.GetAddress())
	if !ok {
		return netip.Prefix{}, false
	}
	bits := a.GetLength()
	if bits > uint32(ip.BitLen()) {
		return netip.Prefix{}, false
	}
	if ip.Is4In6() && bits >= 96 {
		ip, bits = ip.Unmap(), bits-96
	}
	return netip.PrefixFrom(ip, int(bits)).Masked(), true
}

type matchKind uint8

const (
	matchExact matchKind = iota
	matchPrefix
	matchSuffix
	matchPresence
)

func (k matchKind) matches(v, s string) bool {
	switch k {
	case matchExact:
		return s == v
	case matchPrefix:
		return strings.HasPrefix(s, v)
	case matchSuffix:
		return strings.HasSuffix(s, v)
	default:
		return s != ""
	}
}

// stringMatch reads a StringMatch, turning exact values with Istio's
// AuthorizationPolicy wildcards into what the control plane would have sent:
// "*" → presence, "*x" → suffix x, "x*" → prefix x. ok is false when no
// match type is set.
func stringMatch(sm *security.StringMatch) (kind matchKind, v string, ok bool) {
	switch mt := sm.GetMatchType().(type) {
	case *security.StringMatch_Exact:
		v := mt.Exact
		switch {
		case v == "*":
			return matchPresence, "", true
		case strings.HasPrefix(v, "*"):
			return matchSuffix, v[1:], true
		case strings.HasSuffix(v, "*"):
			return matchPrefix, v[:len(v)-1], true
		}
		return matchExact, v, true
	case *security.StringMatch_Prefix:
		return matchPrefix, mt.Prefix, true
	case *security.StringMatch_Suffix:
		return matchSuffix, mt.Suffix, true
	case *security.StringMatch_Presence:
		return matchPresence, "", true
	}
	return 0, "", false
}
