package translate

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// This file turns one HTTPRouteRule into its waypoint form and says what is
// wrong with it. Spec text quoted is Gateway API v1.6
// (https://gateway-api.sigs.k8s.io/reference/spec/#httprouterule).

// ruleProblem is why a rule is not implemented as written.
type ruleProblem struct {
	reason  gatewayv1.RouteConditionReason
	message string
}

// refProblem is a reference that does not resolve (ResolvedRefs=False).
type refProblem struct {
	reason  gatewayv1.RouteConditionReason
	message string
}

// convertedRule is an HTTPRouteRule ready to be merged into tables.
type convertedRule struct {
	rule    *waypointapi.RouteRule
	matches []*waypointapi.RouteMatch // Rule field unset
	// invalid: the rule is dropped (Accepted / PartiallyInvalid).
	invalid *ruleProblem
	refs    []refProblem
}

// ruleConverter converts the rules of one route.
type ruleConverter struct {
	route *gatewayv1.HTTPRoute
	idx   *Index
}

var httpMethods = map[gatewayv1.HTTPMethod]bool{
	gatewayv1.HTTPMethodGet: true, gatewayv1.HTTPMethodHead: true, gatewayv1.HTTPMethodPost: true,
	gatewayv1.HTTPMethodPut: true, gatewayv1.HTTPMethodDelete: true, gatewayv1.HTTPMethodConnect: true,
	gatewayv1.HTTPMethodOptions: true, gatewayv1.HTTPMethodTrace: true, gatewayv1.HTTPMethodPatch: true,
}

func unsupported(format string, args ...any) *ruleProblem {
	return &ruleProblem{reason: gatewayv1.RouteReasonUnsupportedValue, message: fmt.Sprintf(format, args...)}
}

func (c *ruleConverter) convert(i int, r *gatewayv1.HTTPRouteRule) convertedRule {
	out := convertedRule{rule: &waypointapi.RouteRule{
		Route: c.route.Namespace + "/" + c.route.Name,
		Index: uint32(i),
	}}
	if r.Name != nil {
		out.rule.Name = string(*r.Name)
	}
	// "If no matches are specified, the default is a prefix path match on
	// "/", which has the effect of matching every HTTP request."
	matches := r.Matches
	if len(matches) == 0 {
		matches = []gatewayv1.HTTPRouteMatch{{}}
	}
	for j := range matches {
		m, p := convertMatch(&matches[j])
		if p != nil {
			p.message = fmt.Sprintf("match %d: %s", j, p.message)
			out.invalid = p
			return out
		}
		out.matches = append(out.matches, m)
	}
	allPrefix := true
	for _, m := range out.matches {
		if m.GetPath().GetType() != waypointapi.PathMatchType_PATH_MATCH_PATH_PREFIX {
			allPrefix = false
		}
	}
	filters, failClosed, p := c.convertFilters(r.Filters, allPrefix, &out.refs)
	if p != nil {
		out.invalid = p
		return out
	}
	out.rule.Filters = filters
	for j := range r.BackendRefs {
		b, p := c.convertBackend(&r.BackendRefs[j], allPrefix, &out.refs)
		if p != nil {
			p.message = fmt.Sprintf("backendRefs[%d]: %s", j, p.message)
			out.invalid = p
			return out
		}
		out.rule.Backends = append(out.rule.Backends, b)
	}
	if failClosed {
		// "If a reference to a custom filter type cannot be resolved, the
		// filter MUST NOT be skipped. Instead, requests that would have been
		// processed by that filter MUST receive a HTTP error response." A
		// rule without backends answers 500.
		out.rule.Filters, out.rule.Backends = nil, nil
	}
	if r.Timeouts != nil {
		to, p := convertTimeouts(r.Timeouts)
		if p != nil {
			out.invalid = p
			return out
		}
		out.rule.Timeouts = to
	}
	if r.Retry != nil {
		rt, p := convertRetry(r.Retry)
		if p != nil {
			out.invalid = p
			return out
		}
		out.rule.Retry = rt
	}
	return out
}

func convertMatch(m *gatewayv1.HTTPRouteMatch) (*waypointapi.RouteMatch, *ruleProblem) {
	out := &waypointapi.RouteMatch{}
	path := &waypointapi.PathMatch{Type: waypointapi.PathMatchType_PATH_MATCH_PATH_PREFIX, Value: "/"}
	if m.Path != nil {
		typ := gatewayv1.PathMatchPathPrefix
		if m.Path.Type != nil {
			typ = *m.Path.Type
		}
		if m.Path.Value != nil {
			path.Value = *m.Path.Value
		}
		switch typ {
		case gatewayv1.PathMatchPathPrefix, gatewayv1.PathMatchExact:
			// "PathPrefix and Exact paths must be syntactically valid: Must
			// begin with the `/` character; Must not contain consecutive `/`
			// characters".
			if !strings.HasPrefix(path.Value, "/") || strings.Contains(path.Value, "//") {
				return nil, unsupported("path %q must begin with / and not contain //", path.Value)
			}
			if typ == gatewayv1.PathMatchExact {
				path.Type = waypointapi.PathMatchType_PATH_MATCH_EXACT
			}
		case gatewayv1.PathMatchRegularExpression:
			if _, err := regexp.Compile(path.Value); err != nil {
				return nil, unsupported("path regular expression %q is not RE2: %v", path.Value, err)
			}
			path.Type = waypointapi.PathMatchType_PATH_MATCH_REGULAR_EXPRESSION
		default:
			return nil, unsupported("unknown path match type %q", typ)
		}
	}
	if path.Type == waypointapi.PathMatchType_PATH_MATCH_PATH_PREFIX {
		// "When specified, a trailing `/` is ignored."
		path.Value = strings.TrimRight(path.Value, "/")
	}
	out.Path = path
	seen := map[string]bool{}
	for _, h := range m.Headers {
		// "If multiple entries specify equivalent header names, only the
		// first entry with an equivalent name MUST be considered".
		name := strings.ToLower(string(h.Name))
		if seen[name] {
			continue
		}
		seen[name] = true
		typ, p := stringMatchType((*string)(h.Type), h.Value)
		if p != nil {
			return nil, unsupported("header %q: %s", h.Name, p.message)
		}
		out.Headers = append(out.Headers, &waypointapi.HeaderMatch{Name: name, Value: h.Value, Type: typ})
	}
	seen = map[string]bool{}
	for _, q := range m.QueryParams {
		name := string(q.Name) // query parameter names are exact
		if seen[name] {
			continue
		}
		seen[name] = true
		typ, p := stringMatchType((*string)(q.Type), q.Value)
		if p != nil {
			return nil, unsupported("query parameter %q: %s", q.Name, p.message)
		}
		out.QueryParams = append(out.QueryParams, &waypointapi.QueryParamMatch{Name: name, Value: q.Value, Type: typ})
	}
	if m.Method != nil {
		if !httpMethods[*m.Method] {
			return nil, unsupported("unknown method %q", *m.Method)
		}
		out.Method = string(*m.Method)
	}
	return out, nil
}

// stringMatchType converts HeaderMatchType / QueryParamMatchType (both
// "Exact" by default).
func stringMatchType(typ *string, value string) (waypointapi.StringMatchType, *ruleProblem) {
	if typ == nil || *typ == string(gatewayv1.HeaderMatchExact) {
		return waypointapi.StringMatchType_STRING_MATCH_EXACT, nil
	}
	if *typ != string(gatewayv1.HeaderMatchRegularExpression) {
		return 0, unsupported("unknown match type %q", *typ)
	}
	if _, err := regexp.Compile(value); err != nil {
		return 0, unsupported("regular expression %q is not RE2: %v", value, err)
	}
	return waypointapi.StringMatchType_STRING_MATCH_REGULAR_EXPRESSION, nil
}

// convertFilters converts a rule's (or a backendRef's) filters. failClosed
// reports a filter the waypoint cannot run but must not skip
// (ExtensionRef, ExternalAuth): the rule answers 500 instead.
func (c *ruleConverter) convertFilters(fs []gatewayv1.HTTPRouteFilter, allPrefix bool, refs *[]refProblem) (out []*waypointapi.Filter, failClosed bool, _ *ruleProblem) {
	var redirects, rewrites int
	for i := range fs {
		f := &fs[i]
		var pf *waypointapi.Filter
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			m, p := convertHeaderFilter(f.RequestHeaderModifier)
			if p != nil {
				return nil, false, p
			}
			pf = &waypointapi.Filter{Kind: &waypointapi.Filter_RequestHeaderModifier{RequestHeaderModifier: m}}
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			m, p := convertHeaderFilter(f.ResponseHeaderModifier)
			if p != nil {
				return nil, false, p
			}
			pf = &waypointapi.Filter{Kind: &waypointapi.Filter_ResponseHeaderModifier{ResponseHeaderModifier: m}}
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			redirects++
			rd, p := convertRedirect(f.RequestRedirect, allPrefix)
			if p != nil {
				return nil, false, p
			}
			pf = &waypointapi.Filter{Kind: &waypointapi.Filter_RequestRedirect{RequestRedirect: rd}}
		case gatewayv1.HTTPRouteFilterURLRewrite:
			rewrites++
			rw, p := convertRewrite(f.URLRewrite, allPrefix)
			if p != nil {
				return nil, false, p
			}
			pf = &waypointapi.Filter{Kind: &waypointapi.Filter_UrlRewrite{UrlRewrite: rw}}
		case gatewayv1.HTTPRouteFilterRequestMirror:
			m, p := c.convertMirror(f.RequestMirror, refs)
			if p != nil {
				return nil, false, p
			}
			if m == nil {
				continue // unresolved: "must be dropped"
			}
			pf = &waypointapi.Filter{Kind: &waypointapi.Filter_RequestMirror{RequestMirror: m}}
		case gatewayv1.HTTPRouteFilterExtensionRef, gatewayv1.HTTPRouteFilterExternalAuth:
			what := "ExternalAuth"
			if f.ExtensionRef != nil {
				what = fmt.Sprintf("ExtensionRef %s/%s %s", f.ExtensionRef.Group, f.ExtensionRef.Kind, f.ExtensionRef.Name)
			}
			*refs = append(*refs, refProblem{reason: gatewayv1.RouteReasonInvalidKind,
				message: fmt.Sprintf("filter %s is not supported by the waypoint; matching requests get 500", what)})
			failClosed = true
			continue
		default:
			return nil, false, unsupported("filter type %q is not supported", f.Type)
		}
		out = append(out, pf)
	}
	if redirects > 0 && rewrites > 0 {
		return nil, false, &ruleProblem{reason: gatewayv1.RouteReasonIncompatibleFilters,
			message: "RequestRedirect and URLRewrite may not be combined"}
	}
	if redirects > 1 || rewrites > 1 {
		return nil, false, &ruleProblem{reason: gatewayv1.RouteReasonIncompatibleFilters,
			message: "at most one RequestRedirect and one URLRewrite per rule"}
	}
	return out, failClosed, nil
}

func convertHeaderFilter(h *gatewayv1.HTTPHeaderFilter) (*waypointapi.HeaderModifier, *ruleProblem) {
	if h == nil {
		return nil, unsupported("header modifier filter without its configuration")
	}
	// "Only one action for a given header name is permitted."
	seen := map[string]bool{}
	claim := func(n string) (string, *ruleProblem) {
		l := strings.ToLower(n)
		if seen[l] {
			return "", unsupported("header %q is modified more than once", n)
		}
		seen[l] = true
		return l, nil
	}
	out := &waypointapi.HeaderModifier{}
	for _, s := range h.Set {
		n, p := claim(string(s.Name))
		if p != nil {
			return nil, p
		}
		out.Set = append(out.Set, &waypointapi.Header{Name: n, Value: s.Value})
	}
	for _, a := range h.Add {
		n, p := claim(string(a.Name))
		if p != nil {
			return nil, p
		}
		out.Add = append(out.Add, &waypointapi.Header{Name: n, Value: a.Value})
	}
	for _, r := range h.Remove {
		n, p := claim(r)
		if p != nil {
			return nil, p
		}
		out.Remove = append(out.Remove, n)
	}
	return out, nil
}

func convertPathModifier(m *gatewayv1.HTTPPathModifier, allPrefix bool) (*waypointapi.PathModifier, *ruleProblem) {
	if m == nil {
		return nil, nil
	}
	switch m.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if m.ReplaceFullPath == nil {
			return nil, unsupported("ReplaceFullPath without replaceFullPath")
		}
		return &waypointapi.PathModifier{Type: &waypointapi.PathModifier_ReplaceFullPath{ReplaceFullPath: *m.ReplaceFullPath}}, nil
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if m.ReplacePrefixMatch == nil {
			return nil, unsupported("ReplacePrefixMatch without replacePrefixMatch")
		}
		// "ReplacePrefixMatch is only compatible with a `PathPrefix`
		// HTTPRouteMatch."
		if !allPrefix {
			return nil, unsupported("ReplacePrefixMatch needs every match of the rule to be PathPrefix")
		}
		return &waypointapi.PathModifier{Type: &waypointapi.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: *m.ReplacePrefixMatch}}, nil
	}
	return nil, unsupported("unknown path modifier type %q", m.Type)
}

var redirectCodes = map[int]bool{301: true, 302: true, 303: true, 307: true, 308: true}

func convertRedirect(r *gatewayv1.HTTPRequestRedirectFilter, allPrefix bool) (*waypointapi.Redirect, *ruleProblem) {
	if r == nil {
		return nil, unsupported("RequestRedirect filter without requestRedirect")
	}
	out := &waypointapi.Redirect{}
	if r.Scheme != nil {
		if *r.Scheme != "http" && *r.Scheme != "https" {
			return nil, unsupported("redirect scheme %q", *r.Scheme)
		}
		out.Scheme = *r.Scheme
	}
	if r.Hostname != nil {
		out.Hostname = string(*r.Hostname)
	}
	if r.Port != nil {
		out.Port = uint32(*r.Port)
	}
	if r.StatusCode != nil {
		if !redirectCodes[*r.StatusCode] {
			return nil, unsupported("redirect status code %d", *r.StatusCode)
		}
		out.StatusCode = uint32(*r.StatusCode)
	}
	pm, p := convertPathModifier(r.Path, allPrefix)
	if p != nil {
		return nil, p
	}
	out.Path = pm
	return out, nil
}

func convertRewrite(r *gatewayv1.HTTPURLRewriteFilter, allPrefix bool) (*waypointapi.URLRewrite, *ruleProblem) {
	if r == nil {
		return nil, unsupported("URLRewrite filter without urlRewrite")
	}
	out := &waypointapi.URLRewrite{}
	if r.Hostname != nil {
		out.Hostname = string(*r.Hostname)
	}
	pm, p := convertPathModifier(r.Path, allPrefix)
	if p != nil {
		return nil, p
	}
	out.Path = pm
	return out, nil
}

// convertMirror resolves a mirror; nil (with a refProblem) when its
// backendRef does not resolve.
func (c *ruleConverter) convertMirror(m *gatewayv1.HTTPRequestMirrorFilter, refs *[]refProblem) (*waypointapi.Mirror, *ruleProblem) {
	if m == nil {
		return nil, unsupported("RequestMirror filter without requestMirror")
	}
	out := &waypointapi.Mirror{}
	switch {
	case m.Percent != nil && m.Fraction != nil:
		return nil, unsupported("mirror with both percent and fraction")
	case m.Percent != nil:
		if *m.Percent < 0 || *m.Percent > 100 {
			return nil, unsupported("mirror percent %d", *m.Percent)
		}
		out.Numerator, out.Denominator = uint32(*m.Percent), 100
	case m.Fraction != nil:
		den := int32(100)
		if m.Fraction.Denominator != nil {
			den = *m.Fraction.Denominator
		}
		if den < 1 || m.Fraction.Numerator < 0 || m.Fraction.Numerator > den {
			return nil, unsupported("mirror fraction %d/%d", m.Fraction.Numerator, den)
		}
		out.Numerator, out.Denominator = uint32(m.Fraction.Numerator), uint32(den)
	}
	d, rp := c.resolve(&m.BackendRef)
	if rp != nil {
		rp.message = "mirror: " + rp.message
		*refs = append(*refs, *rp)
		return nil, nil
	}
	out.Backend = d
	return out, nil
}

func (c *ruleConverter) convertBackend(b *gatewayv1.HTTPBackendRef, allPrefix bool, refs *[]refProblem) (*waypointapi.Backend, *ruleProblem) {
	out := &waypointapi.Backend{Weight: 1}
	if b.Weight != nil {
		if *b.Weight < 0 {
			return nil, unsupported("weight %d", *b.Weight)
		}
		out.Weight = uint32(*b.Weight)
	}
	filters, failClosed, p := c.convertFilters(b.Filters, allPrefix, refs)
	if p != nil {
		return nil, p
	}
	out.Filters = filters
	d, rp := c.resolve(&b.BackendObjectReference)
	switch {
	case rp != nil:
		*refs = append(*refs, *rp)
		out.InvalidStatus = 500
		out.Filters = nil
	case failClosed:
		out.InvalidStatus = 500
		out.Filters = nil
	default:
		out.Destination = d
	}
	return out, nil
}

// resolve resolves a BackendObjectReference to a Service port. A
// reference to another namespace must be permitted by a ReferenceGrant
// there (see [ReferencePermitted]); whether the Service exists is only
// looked at once it is, so that a refused reference says nothing about the
// other namespace.
func (c *ruleConverter) resolve(ref *gatewayv1.BackendObjectReference) (*waypointapi.Destination, *refProblem) {
	group, kind := "", "Service"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	ns := c.route.Namespace
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace)
	}
	what := fmt.Sprintf("%s %s/%s", kind, ns, ref.Name)
	if group != "" || kind != "Service" {
		return nil, &refProblem{gatewayv1.RouteReasonInvalidKind, fmt.Sprintf("backend %s.%s %s: only core Services are supported", kind, group, ref.Name)}
	}
	if !c.idx.referencePermitted(Reference{
		FromGroup: gatewayv1.GroupName, FromKind: routeKind(c.route), FromNamespace: c.route.Namespace,
		ToGroup: group, ToKind: kind, ToNamespace: ns, ToName: string(ref.Name),
	}) {
		return nil, &refProblem{gatewayv1.RouteReasonRefNotPermitted, fmt.Sprintf(
			"backend %s is in another namespace and no ReferenceGrant in %s allows %ss from %s", what, ns, routeKind(c.route), c.route.Namespace)}
	}
	svc := c.idx.services[types.NamespacedName{Namespace: ns, Name: string(ref.Name)}]
	if svc == nil {
		return nil, &refProblem{gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backend %s not found", what)}
	}
	if ref.Port == nil {
		return nil, &refProblem{gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backend %s: port is required", what)}
	}
	for _, p := range svc.Spec.Ports {
		if p.Port == *ref.Port {
			return &waypointapi.Destination{Service: ns + "/" + Hostname(svc.Name, ns, c.idx.cfg.DomainSuffix), Port: uint32(p.Port)}, nil
		}
	}
	return nil, &refProblem{gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backend %s has no port %d", what, *ref.Port)}
}

// gatewayDuration matches GEP-2257 durations: 1 to 4 of <1-5 digits><unit>,
// units h, m, s, ms.
var gatewayDuration = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

func parseDuration(d gatewayv1.Duration) (*durationpb.Duration, *ruleProblem) {
	if !gatewayDuration.MatchString(string(d)) {
		return nil, unsupported("duration %q is not a Gateway API duration", d)
	}
	v, err := time.ParseDuration(string(d))
	if err != nil {
		return nil, unsupported("duration %q: %v", d, err)
	}
	return durationpb.New(v), nil
}

func convertTimeouts(t *gatewayv1.HTTPRouteTimeouts) (*waypointapi.Timeouts, *ruleProblem) {
	out := &waypointapi.Timeouts{}
	var p *ruleProblem
	if t.Request != nil {
		if out.Request, p = parseDuration(*t.Request); p != nil {
			return nil, p
		}
	}
	if t.BackendRequest != nil {
		if out.BackendRequest, p = parseDuration(*t.BackendRequest); p != nil {
			return nil, p
		}
	}
	// "the value of BackendRequest must be no more than the value of the
	// Request timeout" — a zero Request means no limit.
	if out.Request != nil && out.BackendRequest != nil {
		req, be := out.Request.AsDuration(), out.BackendRequest.AsDuration()
		if req != 0 && (be == 0 || be > req) {
			return nil, unsupported("backendRequest timeout %s exceeds request timeout %s", *t.BackendRequest, *t.Request)
		}
	}
	return out, nil
}

func convertRetry(r *gatewayv1.HTTPRouteRetry) (*waypointapi.Retry, *ruleProblem) {
	out := &waypointapi.Retry{}
	if r.Attempts != nil {
		if *r.Attempts < 0 {
			return nil, unsupported("retry attempts %d", *r.Attempts)
		}
		a := uint32(*r.Attempts)
		out.Attempts = &a
	}
	for _, c := range r.Codes {
		// 500-599 may be retried, 400-499 are allowed though inadvisable.
		if c < 400 || c > 599 {
			return nil, unsupported("retry code %d", c)
		}
		out.Codes = append(out.Codes, uint32(c))
	}
	if r.Backoff != nil {
		var p *ruleProblem
		if out.Backoff, p = parseDuration(*r.Backoff); p != nil {
			return nil, p
		}
	}
	return out, nil
}
