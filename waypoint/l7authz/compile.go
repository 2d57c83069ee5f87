package l7authz

import (
	"errors"
	"fmt"
	"net/netip"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
)

// Action is what a policy does when it matches.
type Action uint8

// Actions a compiled policy can have. CUSTOM is refused by [Compile].
const (
	ActionAllow Action = iota
	ActionDeny
	ActionAudit
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "ALLOW"
	case ActionDeny:
		return "DENY"
	case ActionAudit:
		return "AUDIT"
	}
	return "UNKNOWN"
}

// Errors [Compile] wraps; a policy that fails to compile is not enforced
// (Istio's admission webhook refuses all of these, so they never reach
// its proxies either) and its status should say why.
var (
	ErrCustomAction       = errors.New("CUSTOM action is not supported by the waypoint: it needs an external authorizer; use ALLOW or DENY")
	ErrUnknownAction      = errors.New("unknown action: use ALLOW, DENY or AUDIT")
	ErrSelectorTargetRefs = errors.New("selector and targetRefs are both set: only one may be (Istio refuses such a policy)")
	ErrTargetRefAndRefs   = errors.New("targetRef and targetRefs are both set: use targetRefs only")
	ErrNoTargetRefs       = errors.New("no targetRefs: the policy is enforced by ztunnel, not by the waypoint")
	ErrTargetRef          = errors.New("invalid targetRef")
)

// Policy is a compiled AuthorizationPolicy. It is immutable once compiled
// and safe for concurrent use.
type Policy struct {
	Namespace string
	Name      string
	Action    Action
	DryRun    bool
	// Warnings lists what was changed to fail closed (invalid values,
	// unsupported fields), for the policy's status. Empty when the policy is
	// enforced as written.
	Warnings []string

	key     string
	targets []TargetRef // group normalized ("core" → ""), namespace defaulted
	rules   []rule
	// tcpRules are the rules as they apply to a connection that does not
	// carry HTTP (see [EvaluateConnection]).
	tcpRules []rule
}

// Key returns "namespace/name", the form [Decision].Policy uses.
func (p *Policy) Key() string { return p.key }

// rule is a compiled Rule. A nil from, to or when list is no condition.
type rule struct {
	from  []source
	to    []operation
	when  []condition
	never bool // an ALLOW rule that can never match (fail closed)
}

type source struct {
	principals, notPrincipals           []strMatch
	namespaces, notNamespaces           []strMatch
	serviceAccounts, notServiceAccounts []saMatch
	ipBlocks, notIPBlocks               []netip.Prefix
	remoteIPBlocks, notRemoteIPBlocks   []netip.Prefix
}

type saMatch struct{ namespace, name string }

type operation struct {
	hosts, notHosts     []strMatch
	ports, notPorts     []uint16
	methods, notMethods []strMatch
	paths, notPaths     []strMatch
}

type condKey uint8

const (
	keyHeader condKey = iota
	keySourceIP
	keyRemoteIP
	keySourceNamespace
	keySourcePrincipal
	keyDestinationIP
	keyDestinationPort
	keySNI
)

type condition struct {
	key         condKey
	header      string // canonical header name, keyHeader only
	strs, notS  []strMatch
	cidrs, notC []netip.Prefix
	ports, notP []uint16
}

// Compile checks and compiles one policy for the waypoint. It refuses
// (with an error wrapping one of the Err* values) a CUSTOM or unknown
// action, a policy with both a selector and targetRefs, one without
// targetRefs and one with an invalid targetRef. Invalid values and
// unsupported fields do not fail compilation: they fail closed (see the
// package doc) and are listed in Policy.Warnings.
func Compile(in Input) (*Policy, error) {
	key := in.Namespace + "/" + in.Name
	fail := func(err error) (*Policy, error) {
		return nil, fmt.Errorf("l7authz: policy %s: %w", key, err)
	}
	p := &Policy{Namespace: in.Namespace, Name: in.Name, DryRun: in.DryRun, key: key}
	switch in.Spec.Action {
	case "", "ALLOW":
		p.Action = ActionAllow
	case "DENY":
		p.Action = ActionDeny
	case "AUDIT":
		p.Action = ActionAudit
	case "CUSTOM":
		return fail(ErrCustomAction)
	default:
		return fail(fmt.Errorf("%w (got %q)", ErrUnknownAction, in.Spec.Action))
	}
	refs := in.Spec.TargetRefs
	if in.Spec.TargetRef != nil {
		if len(refs) > 0 {
			return fail(ErrTargetRefAndRefs)
		}
		refs = []TargetRef{*in.Spec.TargetRef}
	}
	if len(refs) == 0 {
		return fail(ErrNoTargetRefs)
	}
	if in.Spec.Selector != nil {
		return fail(ErrSelectorTargetRefs)
	}
	for _, r := range refs {
		t, err := normalizeRef(r, in.Namespace)
		if err != nil {
			return fail(err)
		}
		p.targets = append(p.targets, t)
	}
	c := &compiler{widen: p.Action != ActionAllow, namespace: in.Namespace}
	tcp := &compiler{widen: c.widen, namespace: in.Namespace, tcp: true}
	for i, r := range in.Spec.Rules {
		c.at = fmt.Sprintf("rules[%d]", i)
		p.rules = append(p.rules, c.rule(r))
		p.tcpRules = append(p.tcpRules, tcp.rule(r))
	}
	// The TCP view's own warnings would only repeat the rule that HTTP
	// fields do not apply to TCP, which the package doc states.
	p.Warnings = c.warnings
	return p, nil
}

// normalizeRef checks a targetRef as Istio's reference describes it
// (https://istio.io/latest/docs/reference/config/security/authorization-policy/#AuthorizationPolicy):
// kind Gateway (gateway.networking.k8s.io) or Service ("" or "core") in
// the policy's namespace, GatewayClass (gateway.networking.k8s.io, the
// policy in the root namespace, checked by [Applicable]), ServiceEntry
// (networking.istio.io) in the policy's namespace. A namespace other than
// the policy's is refused: cross-namespace references are not supported.
func normalizeRef(r TargetRef, policyNS string) (TargetRef, error) {
	if r.Group == "core" {
		r.Group = ""
	}
	ok := r.Name != ""
	switch r.Kind {
	case KindGateway, KindGatewayClass:
		ok = ok && r.Group == GroupGateway
	case KindService:
		ok = ok && r.Group == ""
	case KindServiceEntry:
		ok = ok && r.Group == GroupIstioNetworking
	default:
		ok = false
	}
	if !ok {
		return r, fmt.Errorf("%w: group %q kind %q name %q: want kind Gateway or GatewayClass (group %s), Service (group \"\" or core) or ServiceEntry (group %s), with a name",
			ErrTargetRef, r.Group, r.Kind, r.Name, GroupGateway, GroupIstioNetworking)
	}
	if r.Kind == KindGatewayClass {
		r.Namespace = ""
		return r, nil
	}
	if r.Namespace != "" && r.Namespace != policyNS {
		return r, fmt.Errorf("%w: %s %s/%s is in another namespace than the policy (%s); cross-namespace targetRefs are not supported",
			ErrTargetRef, r.Kind, r.Namespace, r.Name, policyNS)
	}
	r.Namespace = policyNS
	return r, nil
}

// compiler compiles the rules of one policy and collects warnings.
type compiler struct {
	widen bool // DENY or AUDIT: fail by matching more
	// tcp compiles the rules for a connection that does not carry HTTP:
	// the HTTP-only fields (hosts, methods, paths, request.headers) are
	// unsupported there, and fail closed as unsupported fields do.
	tcp       bool
	namespace string
	at        string // where in the policy, for warnings
	warnings  []string
}

func (c *compiler) warn(format string, args ...any) {
	c.warnings = append(c.warnings, c.at+": "+fmt.Sprintf(format, args...))
}

func (c *compiler) how() string {
	if c.widen {
		return "the condition is dropped, so the policy matches more"
	}
	return "the rule can never match"
}

func (c *compiler) rule(r Rule) rule {
	var out rule
	possible := false
	for _, f := range r.From {
		if s, ok := c.source(f.Source); ok {
			out.from = append(out.from, s)
			possible = true
		}
	}
	if len(r.From) > 0 && !possible {
		out.never = true
	}
	possible = false
	for _, t := range r.To {
		if o, ok := c.operation(t.Operation); ok {
			out.to = append(out.to, o)
			possible = true
		}
	}
	if len(r.To) > 0 && !possible {
		out.never = true
	}
	for _, w := range r.When {
		cond, keep, ok := c.condition(w)
		if !ok {
			out.never = true
		}
		if keep {
			out.when = append(out.when, cond)
		}
	}
	if out.never {
		return rule{never: true}
	}
	return out
}

// source compiles one Source; ok is false when, in an ALLOW policy, it can
// never match.
func (c *compiler) source(s Source) (source, bool) {
	var out source
	ok := list(c, "principals", s.Principals, s.NotPrincipals, parsePrincipal, &out.principals, &out.notPrincipals) &&
		list(c, "namespaces", s.Namespaces, s.NotNamespaces, parseStrMatch, &out.namespaces, &out.notNamespaces) &&
		list(c, "serviceAccounts", s.ServiceAccounts, s.NotServiceAccounts, c.parseServiceAccount, &out.serviceAccounts, &out.notServiceAccounts) &&
		list(c, "ipBlocks", s.IPBlocks, s.NotIPBlocks, parseCIDR, &out.ipBlocks, &out.notIPBlocks) &&
		list(c, "remoteIpBlocks", s.RemoteIPBlocks, s.NotRemoteIPBlocks, parseCIDR, &out.remoteIPBlocks, &out.notRemoteIPBlocks)
	if len(s.RequestPrincipals)+len(s.NotRequestPrincipals) > 0 {
		c.warn("requestPrincipals/notRequestPrincipals (JWT) are not supported yet: %s", c.how())
		ok = ok && c.widen
	}
	return out, ok
}

func (c *compiler) operation(o Operation) (operation, bool) {
	var out operation
	if c.tcp && len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0 {
		if !c.widen {
			return out, false
		}
		o = Operation{Ports: o.Ports, NotPorts: o.NotPorts}
	}
	ok := list(c, "hosts", o.Hosts, o.NotHosts, parseHost, &out.hosts, &out.notHosts) &&
		list(c, "ports", o.Ports, o.NotPorts, parsePort, &out.ports, &out.notPorts) &&
		list(c, "methods", o.Methods, o.NotMethods, parseMethod, &out.methods, &out.notMethods) &&
		list(c, "paths", o.Paths, o.NotPaths, parsePath, &out.paths, &out.notPaths)
	return out, ok
}

// condition compiles one when entry. keep says whether it is a condition
// to evaluate (false when widened away); ok is false when, in an ALLOW
// policy, the rule can never match.
func (c *compiler) condition(w Condition) (cond condition, keep, ok bool) {
	k := w.Key
	switch {
	case strings.HasPrefix(k, "request.headers[") && strings.HasSuffix(k, "]") && len(k) > len("request.headers[]"):
		if c.tcp {
			return cond, false, c.widen
		}
		cond.key = keyHeader
		cond.header = canonicalHeader(k[len("request.headers[") : len(k)-1])
	case k == "source.ip":
		cond.key = keySourceIP
	case k == "remote.ip":
		cond.key = keyRemoteIP
	case k == "source.namespace":
		cond.key = keySourceNamespace
	case k == "source.principal":
		cond.key = keySourcePrincipal
	case k == "destination.ip":
		cond.key = keyDestinationIP
	case k == "destination.port":
		cond.key = keyDestinationPort
	case k == "connection.sni":
		cond.key = keySNI
	case strings.HasPrefix(k, "request.auth."), strings.HasPrefix(k, "experimental."):
		c.warn("when key %q is not supported yet: %s", k, c.how())
		return cond, false, c.widen
	default:
		c.warn("unknown when key %q: %s", k, c.how())
		return cond, false, c.widen
	}
	if len(w.Values)+len(w.NotValues) == 0 {
		c.warn("when %s has neither values nor notValues: %s", k, c.how())
		return cond, false, c.widen
	}
	name := "when " + k
	switch cond.key {
	case keySourceIP, keyRemoteIP, keyDestinationIP:
		ok = list(c, name, w.Values, w.NotValues, parseCIDR, &cond.cidrs, &cond.notC)
	case keyDestinationPort:
		ok = list(c, name, w.Values, w.NotValues, parsePort, &cond.ports, &cond.notP)
	case keySourcePrincipal:
		ok = list(c, name, w.Values, w.NotValues, parsePrincipal, &cond.strs, &cond.notS)
	default:
		ok = list(c, name, w.Values, w.NotValues, parseStrMatch, &cond.strs, &cond.notS)
	}
	keep = len(cond.strs)+len(cond.notS)+len(cond.cidrs)+len(cond.notC)+len(cond.ports)+len(cond.notP) > 0
	return cond, keep && ok, ok
}

// canonicalHeader maps a request.headers[...] name to the key the request
// carries it under: Go's canonical form, or a pseudo-header (":authority",
// ":method", ":path") or "Host", which [Request] holds in fields.
func canonicalHeader(name string) string {
	switch l := strings.ToLower(name); l {
	case ":authority", "host":
		return ":authority"
	case ":method", ":path", ":scheme":
		return l
	}
	return textproto.CanonicalMIMEHeaderKey(name)
}

// list compiles a positive and a negative value list, failing closed on
// invalid values as istiod-lite/translate does for ztunnel: when widening
// (DENY, AUDIT) an invalid positive value drops the whole positive
// condition and an invalid negative value is dropped; in an ALLOW an
// invalid positive value is dropped (none left: never matches) and an
// invalid negative value makes the alternative never match. ok is false
// when the alternative can never match.
func list[T any](c *compiler, name string, vals, notVals []string, parse func(string) (T, bool), pos, neg *[]T) bool {
	p, pBad := parseAll(c, name, vals, parse)
	n, nBad := parseAll(c, "not "+name, notVals, parse)
	if c.widen {
		if !pBad {
			*pos = p
		}
		*neg = n
		return true
	}
	*pos, *neg = p, n
	return !nBad && (len(vals) == 0 || len(p) > 0)
}

func parseAll[T any](c *compiler, name string, vals []string, parse func(string) (T, bool)) ([]T, bool) {
	var out []T
	bad := false
	for _, v := range vals {
		x, ok := parse(v)
		if !ok {
			bad = true
			c.warn("invalid %s value %s: %s", name, strconv.Quote(v), c.how())
			continue
		}
		out = append(out, x)
	}
	return out, bad
}

// parseServiceAccount reads "namespace/name", or "name" in the policy's
// namespace.
func (c *compiler) parseServiceAccount(v string) (saMatch, bool) {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		ns, sa = c.namespace, v
	}
	if ns == "" || sa == "" || strings.Contains(sa, "/") {
		return saMatch{}, false
	}
	return saMatch{namespace: ns, name: sa}, true
}

// Target kinds and groups of targetRefs.
const (
	GroupGateway         = "gateway.networking.k8s.io"
	GroupIstioNetworking = "networking.istio.io"
	KindGateway          = "Gateway"
	KindGatewayClass     = "GatewayClass"
	KindService          = "Service"
	KindServiceEntry     = "ServiceEntry"
)

// GatewayTarget is the waypoint's own Gateway.
func GatewayTarget(namespace, name string) TargetRef {
	return TargetRef{Group: GroupGateway, Kind: KindGateway, Namespace: namespace, Name: name}
}

// GatewayClassTarget is the waypoint's GatewayClass (istio-waypoint).
func GatewayClassTarget(name string) TargetRef {
	return TargetRef{Group: GroupGateway, Kind: KindGatewayClass, Name: name}
}

// ServiceTarget is a Service whose traffic the waypoint carries.
func ServiceTarget(namespace, name string) TargetRef {
	return TargetRef{Kind: KindService, Namespace: namespace, Name: name}
}

// Applicable returns, in input order and without duplicate keys, the
// policies whose targetRefs name any of targets. For a request through a
// waypoint to a service, pass the waypoint's Gateway, its GatewayClass and
// the Service: Istio applies the policies attached to each. A GatewayClass
// reference counts only in a policy of rootNamespace. Nil entries are
// skipped.
func Applicable(policies []*Policy, rootNamespace string, targets ...TargetRef) []*Policy {
	var out []*Policy
	for _, p := range policies {
		if p == nil || slices.ContainsFunc(out, func(q *Policy) bool { return q.key == p.key }) {
			continue
		}
		if slices.ContainsFunc(p.targets, func(r TargetRef) bool { return refMatches(r, p.Namespace, rootNamespace, targets) }) {
			out = append(out, p)
		}
	}
	return out
}

func refMatches(r TargetRef, policyNS, rootNS string, targets []TargetRef) bool {
	if r.Kind == KindGatewayClass && (rootNS == "" || policyNS != rootNS) {
		return false
	}
	for _, t := range targets {
		if t.Group == "core" {
			t.Group = ""
		}
		if t.Kind == KindGatewayClass {
			t.Namespace = ""
		}
		if t == r {
			return true
		}
	}
	return false
}
