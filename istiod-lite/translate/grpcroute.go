package translate

import (
	"regexp"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// kindGRPCRoute is the kind of the routes [GRPCRouteAsHTTP] converts; the
// converted route carries it in its TypeMeta, so that its status, its
// ReferenceGrant checks and its messages name it.
const kindGRPCRoute = "GRPCRoute"

// GRPCRouteAsHTTP is a GRPCRoute as the HTTPRoute that routes the same
// requests, for [HTTPRoutes] to translate: a gRPC call is an HTTP/2 POST
// to "/<service>/<method>". Its TypeMeta says kind GRPCRoute, and its
// metadata (namespace, name, generation, creation time), parents,
// hostnames, backends and filters are the GRPCRoute's. It is pure.
//
// A method match becomes a path match:
//   - Exact service and method: the exact path "/service/method";
//   - Exact service alone: the path prefix "/service";
//   - Exact method alone, or RegularExpression: the regular expression
//     "/<service>/<method>", each part the given expression (an exact
//     value quoted) or "[^/]+" when absent; RE2, matched in full.
//
// Header matches and the filters GRPCRoute shares with HTTPRoute
// (RequestHeaderModifier, ResponseHeaderModifier, RequestMirror,
// ExtensionRef) carry over as they are. Routing precedence is then
// HTTPRoute's, which for these paths orders as GRPCRoute's does (service
// and method before service alone, longer services first, then header
// matches). Routes of both kinds attached to one parent share its table.
func GRPCRouteAsHTTP(g *gatewayv1.GRPCRoute) *gatewayv1.HTTPRoute {
	rt := &gatewayv1.HTTPRoute{ObjectMeta: g.ObjectMeta}
	rt.Kind, rt.APIVersion = kindGRPCRoute, gatewayv1.GroupVersion.String()
	rt.Spec.CommonRouteSpec = g.Spec.CommonRouteSpec
	rt.Spec.Hostnames = g.Spec.Hostnames
	rt.Spec.Rules = make([]gatewayv1.HTTPRouteRule, len(g.Spec.Rules))
	for i, r := range g.Spec.Rules {
		out := &rt.Spec.Rules[i]
		out.Name, out.SessionPersistence = r.Name, r.SessionPersistence
		for _, m := range r.Matches {
			out.Matches = append(out.Matches, grpcMatch(m))
		}
		out.Filters = grpcFilters(r.Filters)
		for _, b := range r.BackendRefs {
			out.BackendRefs = append(out.BackendRefs, gatewayv1.HTTPBackendRef{BackendRef: b.BackendRef, Filters: grpcFilters(b.Filters)})
		}
	}
	return rt
}

func grpcMatch(m gatewayv1.GRPCRouteMatch) gatewayv1.HTTPRouteMatch {
	var out gatewayv1.HTTPRouteMatch
	if mm := m.Method; mm != nil {
		out.Path = grpcPath(mm)
	}
	for _, h := range m.Headers {
		typ := gatewayv1.HeaderMatchExact
		if h.Type != nil {
			typ = gatewayv1.HeaderMatchType(*h.Type)
		}
		out.Headers = append(out.Headers, gatewayv1.HTTPHeaderMatch{Type: &typ, Name: gatewayv1.HTTPHeaderName(h.Name), Value: h.Value})
	}
	return out
}

// grpcPath is the path match of a method match; nil when it names neither
// a service nor a method (every call).
func grpcPath(mm *gatewayv1.GRPCMethodMatch) *gatewayv1.HTTPPathMatch {
	svc, method := orEmpty(mm.Service), orEmpty(mm.Method)
	if svc == "" && method == "" {
		return nil
	}
	regex := mm.Type != nil && *mm.Type == gatewayv1.GRPCMethodMatchRegularExpression
	path := func(typ gatewayv1.PathMatchType, v string) *gatewayv1.HTTPPathMatch {
		return &gatewayv1.HTTPPathMatch{Type: &typ, Value: &v}
	}
	switch {
	case !regex && method != "" && svc != "":
		return path(gatewayv1.PathMatchExact, "/"+svc+"/"+method)
	case !regex && svc != "":
		return path(gatewayv1.PathMatchPathPrefix, "/"+svc)
	}
	part := func(v string) string {
		switch {
		case v == "":
			return "[^/]+"
		case regex:
			return "(?:" + v + ")"
		}
		return regexp.QuoteMeta(v)
	}
	return path(gatewayv1.PathMatchRegularExpression, "/"+part(svc)+"/"+part(method))
}

func grpcFilters(fs []gatewayv1.GRPCRouteFilter) []gatewayv1.HTTPRouteFilter {
	var out []gatewayv1.HTTPRouteFilter
	for _, f := range fs {
		out = append(out, gatewayv1.HTTPRouteFilter{
			Type:                   gatewayv1.HTTPRouteFilterType(f.Type),
			RequestHeaderModifier:  f.RequestHeaderModifier,
			ResponseHeaderModifier: f.ResponseHeaderModifier,
			RequestMirror:          f.RequestMirror,
			ExtensionRef:           f.ExtensionRef,
		})
	}
	return out
}

func orEmpty(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
