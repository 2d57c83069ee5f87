package translate

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// ControllerName is the controllerName of the route statuses
// [HTTPRoutes] reports, as Istio's for mesh and waypoint parents.
const ControllerName gatewayv1.GatewayController = "istio.io/mesh-controller"

// RouteStatus is the status [HTTPRoutes] computes for one HTTPRoute: one
// entry per parentRef this controller owns, in spec order. Conditions
// carry ObservedGeneration but no LastTransitionTime: whoever writes them
// merges them into the live status and stamps the time.
type RouteStatus struct {
	// Kind is HTTPRoute, or GRPCRoute for a route [GRPCRouteAsHTTP] made.
	Kind    string
	Route   types.NamespacedName
	Parents []gatewayv1.RouteParentStatus
}

// routeKind is the kind of the route rt stands for: GRPCRoute for one
// [GRPCRouteAsHTTP] made, else HTTPRoute.
func routeKind(rt *gatewayv1.HTTPRoute) string {
	if rt.Kind == kindGRPCRoute {
		return kindGRPCRoute
	}
	return kindHTTPRoute
}

// HTTPRoutes translates HTTPRoutes (and GRPCRoutes, converted by
// [GRPCRouteAsHTTP]) into the waypoint's routing tables and computes their
// status, reading Services, namespaces and waypoints from idx. It is pure and its output is sorted (tables by parent kind and
// resource name, statuses by route).
//
// Parents (ParentReference):
//   - group "" kind Service (GAMMA): the Service must exist, and
//     port / sectionName, when set, must name one of its ports (else
//     Accepted=False NoMatchingParent). A Service in the route's namespace
//     takes producer routes; one in another namespace, consumer routes,
//     which go to a table of their own for clients in the route's
//     namespace (GEP-1294). Route hostnames do not apply: the Service is
//     the destination.
//   - a Gateway that is a waypoint (see [Index]): its HBONE listener's
//     allowedRoutes must admit the route's namespace (else
//     NotAllowedByListeners); port, when set, must be the HBONE port (else
//     NoMatchingParent); sectionName is not checked (the index does not
//     keep listener names). Route hostnames apply. Other Gateways belong
//     to other controllers and get no status.
//
// Rules (HTTPRouteRule): a rule with a value the waypoint cannot
// implement (an unknown enum value, a regular expression RE2 rejects,
// ReplacePrefixMatch on a rule with a non-PathPrefix match, URLRewrite with
// RequestRedirect, …) is dropped: the route stays Accepted with
// PartiallyInvalid "Dropped Rule…" while any rule is left, else
// Accepted=False with the reason (UnsupportedValue, IncompatibleFilters).
//
// References: a backendRef that does not resolve stays in the table as a
// backend answering 500 for its share of the traffic, with
// ResolvedRefs=False: InvalidKind (not a core Service), RefNotPermitted
// (a Service in another namespace that no ReferenceGrant there opens to
// HTTPRoutes of the route's namespace, see [ReferencePermitted]; a mirror's
// backendRef alike), BackendNotFound (no such Service, or no such port). An unresolved mirror is dropped. An
// ExtensionRef or ExternalAuth filter cannot run at the waypoint and must
// not be skipped, so its rule answers 500 (ResolvedRefs=False
// InvalidKind).
//
// Order: see [routePrecedence].
func HTTPRoutes(routes []*gatewayv1.HTTPRoute, idx *Index) ([]*waypointapi.ServiceRoutes, []RouteStatus) {
	sorted := slices.Clone(routes)
	sorted = slices.DeleteFunc(sorted, func(r *gatewayv1.HTTPRoute) bool { return r == nil })
	slices.SortFunc(sorted, func(a, b *gatewayv1.HTTPRoute) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(routeKind(a), routeKind(b)))
	})
	tables := map[tableKey][]attachedRule{}
	var statuses []RouteStatus
	for _, rt := range sorted {
		st := RouteStatus{Kind: routeKind(rt), Route: types.NamespacedName{Namespace: rt.Namespace, Name: rt.Name}}
		conv := ruleConverter{route: rt, idx: idx}
		specRules := rt.Spec.Rules
		if len(specRules) == 0 {
			specRules = []gatewayv1.HTTPRouteRule{{}} // the CRD's default rule
		}
		var rules []convertedRule
		var dropped []string
		var firstInvalid *ruleProblem
		var refs []refProblem
		for i := range specRules {
			cr := conv.convert(i, &specRules[i])
			refs = append(refs, cr.refs...)
			if cr.invalid != nil {
				dropped = append(dropped, fmt.Sprintf("rule %d: %s", i, cr.invalid.message))
				if firstInvalid == nil {
					firstInvalid = cr.invalid
				}
				continue
			}
			rules = append(rules, cr)
		}
		ruleConds := ruleConditions(rt, rules, dropped, firstInvalid, refs)
		for _, ref := range rt.Spec.ParentRefs {
			att, owned, problem := resolveParent(rt, ref, idx)
			if !owned {
				continue
			}
			ps := gatewayv1.RouteParentStatus{ParentRef: ref, ControllerName: ControllerName}
			if problem != nil {
				ps.Conditions = []metav1.Condition{
					condition(rt, gatewayv1.RouteConditionAccepted, metav1.ConditionFalse, problem.reason, problem.message),
					ruleConds[1],
				}
				st.Parents = append(st.Parents, ps)
				continue
			}
			ps.Conditions = slices.Clone(ruleConds)
			st.Parents = append(st.Parents, ps)
			if len(rules) == 0 {
				continue
			}
			for _, key := range att.keys {
				tables[key] = append(tables[key], attachedRule{route: rt, rules: rules, hostnames: att.hostnames})
			}
		}
		if len(st.Parents) > 0 {
			statuses = append(statuses, st)
		}
	}
	return buildTables(tables), statuses
}

// ruleConditions are the Accepted, ResolvedRefs and (when rules were
// dropped but some remain) PartiallyInvalid conditions of a route whose
// parent accepted it.
func ruleConditions(rt *gatewayv1.HTTPRoute, rules []convertedRule, dropped []string, firstInvalid *ruleProblem, refs []refProblem) []metav1.Condition {
	var out []metav1.Condition
	if len(rules) == 0 {
		out = append(out, condition(rt, gatewayv1.RouteConditionAccepted, metav1.ConditionFalse, firstInvalid.reason,
			"All rules are invalid: "+strings.Join(dropped, "; ")))
	} else {
		out = append(out, condition(rt, gatewayv1.RouteConditionAccepted, metav1.ConditionTrue, gatewayv1.RouteReasonAccepted, "Route was valid"))
	}
	if len(refs) == 0 {
		out = append(out, condition(rt, gatewayv1.RouteConditionResolvedRefs, metav1.ConditionTrue, gatewayv1.RouteReasonResolvedRefs, "All references resolved"))
	} else {
		msgs := make([]string, len(refs))
		for i, r := range refs {
			msgs[i] = r.message
		}
		out = append(out, condition(rt, gatewayv1.RouteConditionResolvedRefs, metav1.ConditionFalse, refs[0].reason, strings.Join(msgs, "; ")))
	}
	if len(rules) > 0 && len(dropped) > 0 {
		// "The message for this condition MUST start with the prefix
		// "Dropped Rule"".
		out = append(out, condition(rt, gatewayv1.RouteConditionPartiallyInvalid, metav1.ConditionTrue, firstInvalid.reason,
			"Dropped Rule(s): "+strings.Join(dropped, "; ")))
	}
	return out
}

func condition(rt *gatewayv1.HTTPRoute, typ gatewayv1.RouteConditionType, status metav1.ConditionStatus, reason gatewayv1.RouteConditionReason, msg string) metav1.Condition {
	return metav1.Condition{Type: string(typ), Status: status, Reason: string(reason), Message: msg, ObservedGeneration: rt.Generation}
}

// tableKey identifies one ServiceRoutes.
type tableKey struct {
	kind     waypointapi.ParentKind
	key      string
	port     uint32
	consumer string
}

// attachedRule is a route's valid rules attached to one table.
type attachedRule struct {
	route     *gatewayv1.HTTPRoute
	rules     []convertedRule
	hostnames []string
}

// attachment is where a parentRef attaches a route.
type attachment struct {
	keys      []tableKey
	hostnames []string
}

// resolveParent resolves a parentRef. owned is false for parents another
// controller serves (a Gateway that is not a waypoint, unknown kinds).
func resolveParent(rt *gatewayv1.HTTPRoute, ref gatewayv1.ParentReference, idx *Index) (att attachment, owned bool, problem *ruleProblem) {
	group, kind := gatewayv1.GroupName, "Gateway"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	ns := rt.Namespace
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace)
	}
	noParent := func(format string, args ...any) *ruleProblem {
		return &ruleProblem{reason: gatewayv1.RouteReasonNoMatchingParent, message: fmt.Sprintf(format, args...)}
	}
	switch {
	case group == "" && kind == "Service":
		svc := idx.services[types.NamespacedName{Namespace: ns, Name: string(ref.Name)}]
		if svc == nil {
			return att, true, noParent("parent Service %s/%s not found", ns, ref.Name)
		}
		var port uint32
		if ref.Port != nil || ref.SectionName != nil {
			found := false
			for _, p := range svc.Spec.Ports {
				if (ref.Port == nil || p.Port == *ref.Port) && (ref.SectionName == nil || p.Name == string(*ref.SectionName)) {
					port, found = uint32(p.Port), true
					break
				}
			}
			if !found {
				return att, true, noParent("parent Service %s/%s has no port matching port %v sectionName %v", ns, ref.Name, deref(ref.Port), deref(ref.SectionName))
			}
		}
		key := tableKey{kind: waypointapi.ParentKind_PARENT_KIND_SERVICE, key: ns + "/" + Hostname(svc.Name, ns, idx.cfg.DomainSuffix), port: port}
		if ns != rt.Namespace {
			key.consumer = rt.Namespace
		}
		return attachment{keys: []tableKey{key}}, true, nil
	case group == gatewayv1.GroupName && kind == "Gateway":
		w := idx.waypoints[types.NamespacedName{Namespace: ns, Name: string(ref.Name)}]
		if w == nil {
			return att, false, nil
		}
		if !w.allows(idx.namespace(rt.Namespace), rt.Namespace) {
			return att, true, &ruleProblem{reason: gatewayv1.RouteReasonNotAllowedByListeners,
				message: fmt.Sprintf("the waypoint's listener does not allow routes from namespace %s", rt.Namespace)}
		}
		if ref.Port != nil && *ref.Port != HBONEPort {
			return att, true, noParent("waypoint %s/%s has no listener on port %d", ns, ref.Name, *ref.Port)
		}
		hosts := make([]string, len(rt.Spec.Hostnames))
		for i, h := range rt.Spec.Hostnames {
			hosts[i] = strings.ToLower(string(h))
		}
		return attachment{keys: []tableKey{{kind: waypointapi.ParentKind_PARENT_KIND_GATEWAY, key: ns + "/" + string(ref.Name)}}, hostnames: hosts}, true, nil
	}
	return att, false, nil
}

func deref[T any](p *T) any {
	if p == nil {
		return "unset"
	}
	return *p
}

// matchEntry is one match of one rule of one route in a table.
type matchEntry struct {
	route     *gatewayv1.HTTPRoute
	rule      *convertedRule
	hostnames []string
	match     *waypointapi.RouteMatch
	matchIdx  int
}

// buildTables merges what is attached to each table. A port's table also
// takes the rules attached to the whole parent (port 0) for the same
// consumer namespace; a route attached both ways counts once.
func buildTables(att map[tableKey][]attachedRule) []*waypointapi.ServiceRoutes {
	keys := make([]tableKey, 0, len(att))
	for k := range att {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b tableKey) int {
		return cmp.Or(cmp.Compare(a.kind, b.kind), cmp.Compare(a.key, b.key), cmp.Compare(a.port, b.port), cmp.Compare(a.consumer, b.consumer))
	})
	var out []*waypointapi.ServiceRoutes
	for _, k := range keys {
		attached := att[k]
		if k.port != 0 {
			whole := k
			whole.port = 0
			attached = append(slices.Clone(attached), att[whole]...)
		}
		var entries []matchEntry
		seen := map[*gatewayv1.HTTPRoute]bool{}
		for _, a := range attached {
			if seen[a.route] {
				continue
			}
			seen[a.route] = true
			for ri := range a.rules {
				for mi, m := range a.rules[ri].matches {
					entries = append(entries, matchEntry{route: a.route, rule: &a.rules[ri], hostnames: a.hostnames, match: m, matchIdx: mi})
				}
			}
		}
		slices.SortStableFunc(entries, routePrecedence)
		sr := &waypointapi.ServiceRoutes{ServiceKey: k.key, ParentKind: k.kind, Port: k.port, ConsumerNamespace: k.consumer}
		ruleIdx := map[*convertedRule]uint32{}
		for _, e := range entries {
			i, ok := ruleIdx[e.rule]
			if !ok {
				i = uint32(len(sr.Rules))
				ruleIdx[e.rule] = i
				// Tables never share messages: each is owned by its xDS
				// resource.
				r := proto.CloneOf(e.rule.rule)
				r.Hostnames = slices.Clone(e.hostnames)
				sr.Rules = append(sr.Rules, r)
			}
			m := proto.CloneOf(e.match)
			m.Rule = i
			sr.Matches = append(sr.Matches, m)
		}
		out = append(out, sr)
	}
	return out
}

// routePrecedence orders matches across all rules of all routes attached
// to one parent, as HTTPRouteRule.matches requires: "Across all rules
// specified on applicable Routes, precedence must be given to the match
// having: "Exact" path match. "Prefix" path match with largest number of
// characters. Method match. Largest number of header matches. Largest
// number of query param matches. […] If ties still exist across multiple
// Routes, matching precedence MUST be determined in order of the following
// criteria, continuing on ties: The oldest Route based on creation
// timestamp. The Route appearing first in alphabetical order by
// "{namespace}/{name}". If ties still exist within an HTTPRoute, matching
// precedence MUST be granted to the FIRST matching rule (in list order)".
//
// "The precedence of RegularExpression path matches are
// implementation-specific": as Istio does, they come after every Exact and
// PathPrefix match (longer expressions first), so a PathPrefix "/" shadows
// them. Hostname specificity, the first criterion for Gateway parents, is
// applied by the waypoint per request.
func routePrecedence(a, b matchEntry) int {
	pa, pb := a.match.GetPath(), b.match.GetPath()
	return cmp.Or(
		cmp.Compare(pathRank(pa.GetType()), pathRank(pb.GetType())),
		-cmp.Compare(len(pa.GetValue()), len(pb.GetValue())),
		-cmp.Compare(boolInt(a.match.GetMethod() != ""), boolInt(b.match.GetMethod() != "")),
		-cmp.Compare(len(a.match.GetHeaders()), len(b.match.GetHeaders())),
		-cmp.Compare(len(a.match.GetQueryParams()), len(b.match.GetQueryParams())),
		a.route.CreationTimestamp.Time.Compare(b.route.CreationTimestamp.Time),
		cmp.Compare(a.route.Namespace+"/"+a.route.Name, b.route.Namespace+"/"+b.route.Name),
		cmp.Compare(routeKind(a.route), routeKind(b.route)), // an HTTPRoute and a GRPCRoute of one name
		cmp.Compare(a.rule.rule.GetIndex(), b.rule.rule.GetIndex()),
		cmp.Compare(a.matchIdx, b.matchIdx),
	)
}

func pathRank(t waypointapi.PathMatchType) int {
	switch t {
	case waypointapi.PathMatchType_PATH_MATCH_EXACT:
		return 0
	case waypointapi.PathMatchType_PATH_MATCH_PATH_PREFIX:
		return 1
	}
	return 2
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
