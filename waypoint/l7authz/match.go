package l7authz

import (
	"net/netip"
	"strconv"
	"strings"
)

type matchKind uint8

const (
	matchExact matchKind = iota
	matchPrefix
	matchSuffix
	matchPresence
	matchTemplate // paths only: {*} / {**}
)

// strMatch is one compiled value of a string list: Istio's exact, "x*"
// prefix, "*x" suffix and "*" presence.
type strMatch struct {
	kind matchKind
	v    string
	fold bool       // compare ASCII case-insensitively (hosts)
	tmpl []tmplPart // matchTemplate only
}

// parseStrMatch reads an AuthorizationPolicy value with Istio's wildcards;
// "" is invalid. The precedence ("*x*" is a suffix "x*") is the one
// istiod-lite/translate uses for ztunnel.
func parseStrMatch(v string) (strMatch, bool) {
	switch {
	case v == "":
		return strMatch{}, false
	case v == "*":
		return strMatch{kind: matchPresence}, true
	case strings.HasPrefix(v, "*"):
		return strMatch{kind: matchSuffix, v: v[1:]}, true
	case strings.HasSuffix(v, "*"):
		return strMatch{kind: matchPrefix, v: v[:len(v)-1]}, true
	}
	return strMatch{kind: matchExact, v: v}, true
}

// matches reports whether s matches. Presence means non-empty, except
// where the caller handles presence itself (headers).
func (m *strMatch) matches(s string) bool {
	switch m.kind {
	case matchExact:
		if m.fold {
			return strings.EqualFold(s, m.v)
		}
		return s == m.v
	case matchPrefix:
		if m.fold {
			return len(s) >= len(m.v) && strings.EqualFold(s[:len(m.v)], m.v)
		}
		return strings.HasPrefix(s, m.v)
	case matchSuffix:
		if m.fold {
			return len(s) >= len(m.v) && strings.EqualFold(s[len(s)-len(m.v):], m.v)
		}
		return strings.HasSuffix(s, m.v)
	case matchPresence:
		return s != ""
	case matchTemplate:
		return matchTmpl(m.tmpl, s)
	}
	return false
}

func anyStr(ms []strMatch, s string) bool {
	for i := range ms {
		if ms[i].matches(s) {
			return true
		}
	}
	return false
}

// parsePrincipal reads a principal with or without "spiffe://"; request
// principals are compared without the scheme, as Istio writes them.
func parsePrincipal(v string) (strMatch, bool) {
	m, ok := parseStrMatch(v)
	if !ok {
		return m, false
	}
	switch m.kind {
	case matchExact, matchPrefix:
		m.v = strings.TrimPrefix(m.v, spiffeScheme)
	case matchSuffix:
		if strings.HasPrefix(m.v, spiffeScheme) {
			m.kind, m.v = matchExact, strings.TrimPrefix(m.v, spiffeScheme)
		}
	}
	return m, m.kind == matchPresence || m.v != ""
}

// parseHost reads a hosts entry: matched case-insensitively against the
// whole :authority, port included, as Istio does ("exact match
// authorization policies only match the exact string given"; write
// ["example.com", "example.com:*"] to cover ports —
// https://istio.io/latest/docs/ops/best-practices/security/#writing-host-match-policies).
func parseHost(v string) (strMatch, bool) {
	m, ok := parseStrMatch(v)
	m.fold = true
	return m, ok
}

// parseMethod reads a methods entry: case-sensitive, as Istio (requests
// whose method is not upper case are refused with 400 before matching).
func parseMethod(v string) (strMatch, bool) { return parseStrMatch(v) }

// tmplPart is one piece of a path template: a literal, {*} (one non-empty
// segment) or {**} (anything, "/" included, possibly empty; the last
// operator).
type tmplPart struct {
	op  uint8 // 0 literal, 1 {*}, 2 {**}
	lit string
}

// parsePath reads a paths entry: Istio's wildcards, or, when it contains
// {*} or {**}, a path template as Istio's Operation.paths documents it
// (https://istio.io/latest/docs/reference/config/security/authorization-policy/#Operation):
// no "*", "{" or "}" outside an operator, an operator fills its whole
// segment, {**} is the last operator. {*} matches one non-empty segment;
// {**} any remainder, slashes included, as Envoy's URI template regex
// does — so "/foo/{**}/" matches "/foo/bar/" and "/foo//" but neither
// "/foo/bar" nor "/foo/bar/baz.txt" (Istio's reference lists the last as a
// match, which the template grammar it describes does not give; we take
// the grammar).
func parsePath(v string) (strMatch, bool) {
	if !strings.Contains(v, "{*}") && !strings.Contains(v, "{**}") {
		return parseStrMatch(v)
	}
	if !strings.HasPrefix(v, "/") {
		return strMatch{}, false
	}
	var parts []tmplPart
	lit := strings.Builder{}
	seenDouble := false
	for _, seg := range strings.Split(v[1:], "/") {
		lit.WriteByte('/')
		switch seg {
		case "{*}", "{**}":
			if seenDouble {
				return strMatch{}, false
			}
			parts = append(parts, tmplPart{lit: lit.String()})
			lit.Reset()
			op := uint8(1)
			if seg == "{**}" {
				op, seenDouble = 2, true
			}
			parts = append(parts, tmplPart{op: op})
		default:
			if strings.ContainsAny(seg, "*{}") {
				return strMatch{}, false
			}
			lit.WriteString(seg)
		}
	}
	parts = append(parts, tmplPart{lit: lit.String()})
	// The literal after an operator starts with the separator the loop
	// wrote before the next segment; the literal before one ends with it.
	return strMatch{kind: matchTemplate, tmpl: parts}, true
}

// matchTmpl matches a compiled template. Literals are fixed; {*} takes the
// bytes up to the next "/" (it fills its segment, so the next literal
// starts with "/" or the path ends); {**} is last, so what follows it is a
// literal suffix.
func matchTmpl(parts []tmplPart, s string) bool {
	for i, p := range parts {
		switch p.op {
		case 0:
			if !strings.HasPrefix(s, p.lit) {
				return false
			}
			s = s[len(p.lit):]
		case 1:
			n := strings.IndexByte(s, '/')
			if n < 0 {
				n = len(s)
			}
			if n == 0 {
				return false
			}
			s = s[n:]
		case 2:
			// parsePath puts exactly one literal after every operator.
			return strings.HasSuffix(s, parts[i+1].lit)
		}
	}
	return s == ""
}

// parseCIDR reads a CIDR or a single address (a /32 or /128); IPv4-mapped
// IPv6 prefixes of at least 96 bits become IPv4 prefixes.
func parseCIDR(v string) (netip.Prefix, bool) {
	var p netip.Prefix
	if strings.Contains(v, "/") {
		var err error
		if p, err = netip.ParsePrefix(v); err != nil {
			return p, false
		}
	} else {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return p, false
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, false
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), true
}

func anyPrefix(ps []netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func parsePort(v string) (uint16, bool) {
	p, err := strconv.ParseUint(v, 10, 16)
	return uint16(p), err == nil
}

func anyPort(ps []uint16, port uint16) bool {
	for _, p := range ps {
		if p == port {
			return true
		}
	}
	return false
}

const spiffeScheme = "spiffe://"
