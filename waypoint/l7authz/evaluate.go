package l7authz

import (
	"net/http"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/identity"
)

// Peer is the verified identity of the client, as the waypoint learns it
// from the HBONE connection. Build it once per connection with [PeerOf].
type Peer struct {
	// Principal is the SPIFFE ID without the scheme,
	// "cluster.local/ns/default/sa/sleep"; empty without identity.
	Principal string
	// Namespace and ServiceAccount are set when the ID is a workload ID.
	Namespace      string
	ServiceAccount string
}

// PeerOf returns the Peer of a SPIFFE ID; the zero ID gives the zero Peer.
func PeerOf(id spiffeid.ID) Peer {
	if id.IsZero() {
		return Peer{}
	}
	p := Peer{Principal: id.TrustDomain().Name() + id.Path()}
	if w, err := identity.ParseWorkload(id); err == nil {
		p.Namespace, p.ServiceAccount = w.Namespace, w.ServiceAccount
	}
	return p
}

// Request is what the waypoint knows about an HTTP request when it
// authorizes it. Evaluate reads it and never keeps or modifies it.
type Request struct {
	Source Peer
	// SourceIP is the address of the downstream peer (ipBlocks,
	// source.ip).
	SourceIP netip.Addr
	// RemoteIP is the original client address, as the caller determined it
	// from X-Forwarded-For or PROXY protocol (remoteIpBlocks, remote.ip);
	// when not valid, SourceIP is used, as Istio does without trusted
	// proxies.
	RemoteIP netip.Addr
	// DestinationIP and DestinationPort are the destination the request is
	// for (ports, destination.ip, destination.port).
	DestinationIP   netip.Addr
	DestinationPort uint16
	// SNI is the TLS server name of the downstream connection, if any
	// (connection.sni).
	SNI string
	// Method is the HTTP method, as sent.
	Method string
	// Host is the :authority (Host header) as sent, port included.
	Host string
	// Path is the request target in origin form as sent, query included
	// ("/a/b?x=1"). It is normalized before matching; see [NormalizePath].
	Path string
	// Header holds the request headers, keys in canonical form (as
	// net/http gives them). Host lives in Host, not here.
	Header http.Header
}

// Decision is the outcome of [Evaluate].
type Decision struct {
	// Allow says whether the request may proceed.
	Allow bool
	// Status is the HTTP status to answer a refused request with: 403 when
	// a policy denied it, 400 when it is malformed (Reason says how);
	// 0 when allowed.
	Status int
	// Policy is the "namespace/name" of the enforced policy that decided:
	// the matching DENY or the matching ALLOW policy. Empty when no policy
	// decided.
	Policy string
	// Action is the action of Policy (meaningless when Policy is empty).
	Action Action
	// Reason is one of the Reason* constants; few values, fit for a
	// metric label.
	Reason string
	// Audited is set when an enforced AUDIT policy matched: the request
	// should be audited (Istio marks it; an audit sink acts on it).
	// AuditPolicy is the first such policy.
	Audited     bool
	AuditPolicy string
	// DryRun lists the dry-run policies that matched, in order, as
	// "namespace/name: would deny", "… would allow" or "… would audit".
	DryRun []string
	// DryRunAllow is what Allow would be with the dry-run policies enforced.
	DryRunAllow bool
	// Path is the normalized path policies were matched against; forward
	// it so the backend serves what was authorized. Empty when the path
	// could not be normalized.
	Path string
}

// Reasons reported in [Decision].Reason.
const (
	ReasonDenyMatched    = "deny policy matched"
	ReasonNoAllowPolicy  = "no allow policy applies"
	ReasonAllowMatched   = "allow policy matched"
	ReasonNoAllowMatched = "allow policies exist, none matched"
	ReasonBadPath        = "path cannot be normalized"
	ReasonBadMethod      = "method is not upper case"
)

// Evaluate decides a request under policies (see [Applicable]) with the
// default path normalization, [NormalizeStrict].
func Evaluate(policies []*Policy, req *Request) Decision {
	return EvaluateWith(policies, req, NormalizeStrict)
}

// EvaluateWith is [Evaluate] with a chosen path normalization. Istio's
// order: a request whose path cannot be normalized, or whose method is not
// upper case, is refused with 400; dry-run policies are reported, never
// enforced; any matching DENY denies (403); with no ALLOW policy the
// request is allowed; a matching ALLOW allows; otherwise 403. AUDIT
// policies only set Audited. Nil policies are skipped.
func EvaluateWith(policies []*Policy, req *Request, mode Normalization) Decision {
	path, err := NormalizePath(req.Path, mode)
	if err != nil {
		return Decision{Status: http.StatusBadRequest, Reason: ReasonBadPath}
	}
	if !upperMethod(req.Method) {
		return Decision{Status: http.StatusBadRequest, Reason: ReasonBadMethod, Path: path}
	}
	e := newEvalReq(req, path)
	return e.decide(policies, false, Decision{Path: path})
}

// Connection is what the waypoint knows about a tunnel that does not carry
// HTTP when it authorizes it: Request without the HTTP fields.
type Connection struct {
	Source          Peer
	SourceIP        netip.Addr
	RemoteIP        netip.Addr
	DestinationIP   netip.Addr
	DestinationPort uint16
}

// EvaluateConnection decides a connection that does not carry HTTP under
// policies, in [EvaluateWith]'s order, as Istio applies an
// AuthorizationPolicy to TCP traffic: the HTTP-only fields (hosts,
// methods, paths and their not forms, request.headers conditions, besides
// the JWT fields) cannot hold, so an ALLOW rule using them never matches
// and a DENY or AUDIT rule matches without them. A connection can thus be
// refused more than its HTTP requests would be, never less. A refused
// connection has Status 403.
func EvaluateConnection(policies []*Policy, c *Connection) Decision {
	e := newEvalReq(&Request{Source: c.Source, SourceIP: c.SourceIP, RemoteIP: c.RemoteIP,
		DestinationIP: c.DestinationIP, DestinationPort: c.DestinationPort}, "")
	return e.decide(policies, true, Decision{})
}

// decide completes d with the verdict of policies, matched by their rules
// (their TCP view with tcp).
func (e *evalReq) decide(policies []*Policy, tcp bool, d Decision) Decision {
	var enforced, withDryRun verdict
	for _, p := range policies {
		if p == nil {
			continue
		}
		rules := p.rules
		if tcp {
			rules = p.tcpRules
		}
		matched := e.anyRule(rules)
		if p.DryRun {
			if matched {
				d.DryRun = append(d.DryRun, p.key+": would "+strings.ToLower(p.Action.String()))
			}
		} else {
			enforced.add(p, matched)
			if matched && p.Action == ActionAudit && !d.Audited {
				d.Audited, d.AuditPolicy = true, p.key
			}
		}
		withDryRun.add(p, matched)
	}
	d.Allow, d.Policy, d.Action, d.Reason = enforced.decide()
	d.DryRunAllow, _, _, _ = withDryRun.decide()
	if !d.Allow {
		d.Status = http.StatusForbidden
	}
	return d
}

// verdict accumulates judged policies in Istio's order.
type verdict struct {
	denyBy    *Policy
	allowBy   *Policy
	haveAllow bool
}

func (v *verdict) add(p *Policy, matched bool) {
	switch p.Action {
	case ActionDeny:
		if matched && v.denyBy == nil {
			v.denyBy = p
		}
	case ActionAllow:
		v.haveAllow = true
		if matched && v.allowBy == nil {
			v.allowBy = p
		}
	}
}

func (v *verdict) decide() (allow bool, policy string, action Action, reason string) {
	switch {
	case v.denyBy != nil:
		return false, v.denyBy.key, ActionDeny, ReasonDenyMatched
	case !v.haveAllow:
		return true, "", ActionAllow, ReasonNoAllowPolicy
	case v.allowBy != nil:
		return true, v.allowBy.key, ActionAllow, ReasonAllowMatched
	}
	return false, "", ActionAllow, ReasonNoAllowMatched
}

// upperMethod reports whether m is a non-empty token without lower-case
// letters (Istio refuses other methods with 400).
func upperMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		if c := m[i]; 'a' <= c && c <= 'z' || c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// Matches reports whether p matches the request (path normalized with
// mode), whatever its action and dry-run flag. A request that cannot be
// normalized matches nothing.
func Matches(p *Policy, req *Request, mode Normalization) bool {
	path, err := NormalizePath(req.Path, mode)
	if p == nil || err != nil {
		return false
	}
	e := newEvalReq(req, path)
	return e.anyRule(p.rules)
}

// newEvalReq prepares req, whose path normalizes to path, for matching:
// IPv4-mapped addresses unmapped, RemoteIP defaulted to SourceIP.
func newEvalReq(req *Request, path string) evalReq {
	remote := req.RemoteIP
	if !remote.IsValid() {
		remote = req.SourceIP
	}
	return evalReq{req: req, path: path, srcIP: req.SourceIP.Unmap(), remoteIP: remote.Unmap(), dstIP: req.DestinationIP.Unmap()}
}

// evalReq is a Request prepared for matching.
type evalReq struct {
	req                    *Request
	path                   string
	srcIP, remoteIP, dstIP netip.Addr
}

// anyRule: a policy matches when any of its rules matches; no rules
// match nothing.
func (e *evalReq) anyRule(rules []rule) bool {
	for i := range rules {
		if e.rule(&rules[i]) {
			return true
		}
	}
	return false
}

// rule: from (any entry), to (any entry) and every when must hold; an
// empty rule matches every request.
func (e *evalReq) rule(r *rule) bool {
	if r.never {
		return false
	}
	if len(r.from) > 0 && !anyOf(r.from, e.source) {
		return false
	}
	if len(r.to) > 0 && !anyOf(r.to, e.operation) {
		return false
	}
	for i := range r.when {
		if !e.condition(&r.when[i]) {
			return false
		}
	}
	return true
}

func anyOf[T any](xs []T, f func(*T) bool) bool {
	for i := range xs {
		if f(&xs[i]) {
			return true
		}
	}
	return false
}

// pair: some entry of pos must match (when pos is set) and no entry of
// neg may match.
func pair[T any](pos, neg []T, f func([]T) bool) bool {
	return (len(pos) == 0 || f(pos)) && (len(neg) == 0 || !f(neg))
}

func (e *evalReq) source(s *source) bool {
	peer := &e.req.Source
	principal := func(ms []strMatch) bool { return peer.Principal != "" && anyStr(ms, peer.Principal) }
	namespace := func(ms []strMatch) bool { return peer.Namespace != "" && anyStr(ms, peer.Namespace) }
	sa := func(ms []saMatch) bool {
		for _, m := range ms {
			if peer.ServiceAccount != "" && m.namespace == peer.Namespace && m.name == peer.ServiceAccount {
				return true
			}
		}
		return false
	}
	return pair(s.principals, s.notPrincipals, principal) &&
		pair(s.namespaces, s.notNamespaces, namespace) &&
		pair(s.serviceAccounts, s.notServiceAccounts, sa) &&
		pair(s.ipBlocks, s.notIPBlocks, func(ps []netip.Prefix) bool { return anyPrefix(ps, e.srcIP) }) &&
		pair(s.remoteIPBlocks, s.notRemoteIPBlocks, func(ps []netip.Prefix) bool { return anyPrefix(ps, e.remoteIP) })
}

func (e *evalReq) operation(o *operation) bool {
	r := e.req
	return pair(o.hosts, o.notHosts, func(ms []strMatch) bool { return anyStr(ms, r.Host) }) &&
		pair(o.ports, o.notPorts, func(ps []uint16) bool { return anyPort(ps, r.DestinationPort) }) &&
		pair(o.methods, o.notMethods, func(ms []strMatch) bool { return anyStr(ms, r.Method) }) &&
		pair(o.paths, o.notPaths, func(ms []strMatch) bool { return anyStr(ms, e.path) })
}

func (e *evalReq) condition(c *condition) bool {
	r := e.req
	switch c.key {
	case keyHeader:
		v, present := e.header(c.header)
		return pair(c.strs, c.notS, func(ms []strMatch) bool { return present && anyHeader(ms, v) })
	case keySourceIP:
		return pair(c.cidrs, c.notC, func(ps []netip.Prefix) bool { return anyPrefix(ps, e.srcIP) })
	case keyRemoteIP:
		return pair(c.cidrs, c.notC, func(ps []netip.Prefix) bool { return anyPrefix(ps, e.remoteIP) })
	case keyDestinationIP:
		return pair(c.cidrs, c.notC, func(ps []netip.Prefix) bool { return anyPrefix(ps, e.dstIP) })
	case keyDestinationPort:
		return pair(c.ports, c.notP, func(ps []uint16) bool { return anyPort(ps, r.DestinationPort) })
	case keySourceNamespace:
		return pair(c.strs, c.notS, func(ms []strMatch) bool { return r.Source.Namespace != "" && anyStr(ms, r.Source.Namespace) })
	case keySourcePrincipal:
		return pair(c.strs, c.notS, func(ms []strMatch) bool { return r.Source.Principal != "" && anyStr(ms, r.Source.Principal) })
	case keySNI:
		return pair(c.strs, c.notS, func(ms []strMatch) bool { return r.SNI != "" && anyStr(ms, r.SNI) })
	}
	return false
}

// header returns a header's value, duplicates joined with "," as Istio
// merges them, and whether it is present.
func (e *evalReq) header(name string) (string, bool) {
	r := e.req
	switch name {
	case ":authority":
		return r.Host, r.Host != ""
	case ":method":
		return r.Method, true
	case ":path":
		return r.Path, true
	}
	vs, ok := r.Header[name]
	switch {
	case !ok || len(vs) == 0:
		return "", false
	case len(vs) == 1:
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

// anyHeader: "*" (presence) matches any present header, even empty.
func anyHeader(ms []strMatch, v string) bool {
	for i := range ms {
		if ms[i].kind == matchPresence || ms[i].matches(v) {
			return true
		}
	}
	return false
}
