package translate

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// The condition [Resilience] reports for each DestinationRule and
// LocalTrafficPolicy, and its reasons.
const (
	ConditionAccepted = "Accepted"

	ReasonResilienceAccepted = "Accepted"
	// ReasonResilienceInvalid: the rule or policy breaks a validation rule
	// of Istio's (or of our CRD); it is not used at all.
	ReasonResilienceInvalid = "Invalid"
	// ReasonNotApplicable: a DestinationRule with a workloadSelector,
	// which only sidecars use.
	ReasonNotApplicable = "NotApplicable"
	// ReasonConflicted: an older LocalTrafficPolicy targets the Service.
	ReasonConflicted = "Conflicted"
	// ReasonTargetNotFound: a targetRef names no Service.
	ReasonTargetNotFound = "TargetNotFound"
)

// Istio's defaults, filled into [waypointapi.ServiceResilience].
const (
	unlimited               = math.MaxUint32 // 2^32-1
	defaultConnectTimeout   = 10 * time.Second
	defaultIdleTimeout      = time.Hour
	defaultConsecutive5xx   = 5
	defaultOutlierInterval  = 10 * time.Second
	defaultBaseEjectionTime = 30 * time.Second
	defaultMaxEjectionPct   = 10
)

// ResilienceInput is what [Resilience] reads.
type ResilienceInput struct {
	DestinationRules     []DestinationRule
	LocalTrafficPolicies []LocalTrafficPolicy
	Services             []*corev1.Service
	Config               Config
	RootNamespace        string
}

// ResilienceResult is what [Resilience] returns: one policy per Service
// that any rule or policy applies to, and the conditions of every
// DestinationRule and LocalTrafficPolicy keyed "namespace/name".
type ResilienceResult struct {
	Policies                 []*waypointapi.ServiceResilience
	DestinationRuleStatus    map[string][]Condition
	LocalTrafficPolicyStatus map[string][]Condition
}

// Resilience resolves DestinationRules and LocalTrafficPolicies into each
// Service's [waypointapi.ServiceResilience]. It is pure.
//
// DestinationRule selection follows Istio's lookup path as a waypoint sees
// it (istio.io "Cross-namespace configuration"): the waypoint serves every
// client, so the rules that count are those in the Service's own
// namespace, then those in the root namespace exported to it (exportTo
// empty, "*", or naming it); rules elsewhere only affect their own
// namespace's clients at sidecars. Within the first namespace with a
// match, the most specific host wins (exact, then the longest wildcard
// suffix); rules with that same host are merged as Istio merges them,
// oldest first: the first trafficPolicy stays, subsets are appended unless
// their name was seen. Hosts without dots are short names in the rule's
// namespace ("reviews" → reviews.<ns>.svc.<suffix>).
func Resilience(in ResilienceInput) ResilienceResult {
	cfg := in.Config.withDefaults()
	res := ResilienceResult{
		DestinationRuleStatus:    make(map[string][]Condition),
		LocalTrafficPolicyStatus: make(map[string][]Condition),
	}
	type rule struct {
		DestinationRule
		host string // resolved
	}
	byNS := map[string][]rule{}
	for _, dr := range sortedByAge(in.DestinationRules, func(d DestinationRule) metav1.ObjectMeta { return d.ObjectMeta }) {
		key := dr.Namespace + "/" + dr.Name
		if dr.Spec.WorkloadSelector != nil {
			res.DestinationRuleStatus[key] = []Condition{{Type: ConditionAccepted, Status: metav1.ConditionFalse, Reason: ReasonNotApplicable,
				Message: "a DestinationRule with a workloadSelector applies to sidecars only, never at waypoints"}}
			continue
		}
		ignored, err := validateDestinationRule(dr.Spec)
		if err != nil {
			res.DestinationRuleStatus[key] = []Condition{{Type: ConditionAccepted, Status: metav1.ConditionFalse, Reason: ReasonResilienceInvalid, Message: err.Error()}}
			continue
		}
		msg := "the rule is applied at waypoints"
		if len(ignored) > 0 {
			msg += "; not implemented, ignored: " + strings.Join(ignored, ", ")
		}
		res.DestinationRuleStatus[key] = []Condition{{Type: ConditionAccepted, Status: metav1.ConditionTrue, Reason: ReasonResilienceAccepted, Message: msg}}
		byNS[dr.Namespace] = append(byNS[dr.Namespace], rule{dr, resolveHost(dr.Spec.Host, dr.Namespace, cfg.DomainSuffix)})
	}

	// Local traffic policies, oldest first: the first to target a Service
	// holds it.
	svcs := map[string]*corev1.Service{} // "namespace/name"
	for _, s := range in.Services {
		if s.Spec.Type != corev1.ServiceTypeExternalName {
			svcs[s.Namespace+"/"+s.Name] = s
		}
	}
	local := map[string]*waypointapi.LocalTrafficPolicy{} // by "namespace/name" of the Service
	for _, p := range sortedByAge(in.LocalTrafficPolicies, func(l LocalTrafficPolicy) metav1.ObjectMeta { return l.ObjectMeta }) {
		key := p.Namespace + "/" + p.Name
		lp, err := localPolicy(p)
		if err != nil {
			res.LocalTrafficPolicyStatus[key] = []Condition{{Type: ConditionAccepted, Status: metav1.ConditionFalse, Reason: ReasonResilienceInvalid, Message: err.Error()}}
			continue
		}
		var missing, conflicted []string
		for _, ref := range p.Spec.TargetRefs {
			t := p.Namespace + "/" + ref.Name
			switch {
			case svcs[t] == nil:
				missing = append(missing, ref.Name)
			case local[t] != nil:
				conflicted = append(conflicted, ref.Name+" (held by "+local[t].GetName()+")")
			default:
				local[t] = lp
			}
		}
		c := Condition{Type: ConditionAccepted, Status: metav1.ConditionTrue, Reason: ReasonResilienceAccepted, Message: "the policy is enforced by the targets' waypoints"}
		switch {
		case len(conflicted) > 0:
			c = Condition{Type: ConditionAccepted, Status: metav1.ConditionFalse, Reason: ReasonConflicted,
				Message: "an older LocalTrafficPolicy targets Service " + strings.Join(conflicted, ", ")}
		case len(missing) > 0:
			c = Condition{Type: ConditionAccepted, Status: metav1.ConditionFalse, Reason: ReasonTargetNotFound,
				Message: "no Service " + strings.Join(missing, ", ") + " in namespace " + p.Namespace}
		}
		if c.Status == metav1.ConditionFalse && len(missing)+len(conflicted) < len(p.Spec.TargetRefs) {
			c.Message += "; applied to the other targets"
		}
		res.LocalTrafficPolicyStatus[key] = []Condition{c}
	}

	names := make([]string, 0, len(svcs))
	for k := range svcs {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		s := svcs[k]
		host := Hostname(s.Name, s.Namespace, cfg.DomainSuffix)
		var matched []rule
		for _, ns := range []string{s.Namespace, in.RootNamespace} {
			var best []rule
			for _, r := range byNS[ns] {
				if !exportedTo(r.Spec.ExportTo, r.Namespace, s.Namespace) && (ns != s.Namespace || slices.Contains(r.Spec.ExportTo, "~")) {
					continue // hidden ("~"), or a root rule not exported here
				}
				if !hostMatches(r.host, host) {
					continue
				}
				if len(best) == 0 || moreSpecific(r.host, best[0].host) {
					best = []rule{r}
				} else if r.host == best[0].host {
					best = append(best, r)
				}
			}
			if len(best) > 0 {
				matched = best
				break
			}
		}
		lp := local[k]
		if len(matched) == 0 && lp == nil {
			continue
		}
		out := &waypointapi.ServiceResilience{ServiceKey: s.Namespace + "/" + host, LocalPolicy: lp}
		var top *TrafficPolicy
		seen := map[string]bool{}
		var subsets []Subset
		for _, r := range matched {
			out.DestinationRules = append(out.DestinationRules, r.Namespace+"/"+r.Name)
			if top == nil {
				top = r.Spec.TrafficPolicy
			}
			for _, ss := range r.Spec.Subsets {
				if !seen[ss.Name] {
					seen[ss.Name] = true
					subsets = append(subsets, ss)
				}
			}
		}
		out.TrafficPolicy = resolvePolicy(top)
		for _, ss := range subsets {
			out.Subsets = append(out.Subsets, &waypointapi.Subset{
				Name: ss.Name, Labels: ss.Labels,
				TrafficPolicy: resolvePolicy(mergeSubset(top, ss.TrafficPolicy)),
			})
		}
		res.Policies = append(res.Policies, out)
	}
	return res
}

func sortedByAge[T any](in []T, meta func(T) metav1.ObjectMeta) []T {
	out := slices.Clone(in)
	slices.SortStableFunc(out, func(a, b T) int {
		ma, mb := meta(a), meta(b)
		return cmp.Or(ma.CreationTimestamp.Time.Compare(mb.CreationTimestamp.Time),
			cmp.Compare(ma.Namespace, mb.Namespace), cmp.Compare(ma.Name, mb.Name))
	})
	return out
}

// resolveHost makes a short name (no dots) a FQDN in namespace ns.
func resolveHost(h, ns, suffix string) string {
	h = strings.ToLower(h)
	if h == "*" || strings.Contains(h, ".") {
		return h
	}
	return h + "." + ns + ".svc." + suffix
}

// hostMatches reports whether a rule host (FQDN, "*" or "*.suffix") covers
// a service hostname.
func hostMatches(rule, host string) bool {
	if rule == "*" {
		return true
	}
	if suffix, ok := strings.CutPrefix(rule, "*"); ok {
		return strings.HasSuffix(host, suffix)
	}
	return rule == host
}

// moreSpecific reports whether rule host a beats b: an exact host beats a
// wildcard, a longer wildcard a shorter one.
func moreSpecific(a, b string) bool {
	wa, wb := strings.HasPrefix(a, "*"), strings.HasPrefix(b, "*")
	if wa != wb {
		return wb
	}
	return len(a) > len(b)
}

// exportedTo applies exportTo ("*" or empty: everywhere; ".": the rule's
// own namespace; else namespace names).
func exportedTo(exportTo []string, ruleNS, ns string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		if e == "*" || e == ns || (e == "." && ruleNS == ns) {
			return true
		}
	}
	return false
}

// mergeSubset is Istio's MergeTrafficPolicy: each of the subset's
// loadBalancer, connectionPool and outlierDetection replaces the top-level
// one whole.
func mergeSubset(top, sub *TrafficPolicy) *TrafficPolicy {
	if sub == nil {
		return top
	}
	if top == nil {
		return sub
	}
	m := *top
	if sub.LoadBalancer != nil {
		m.LoadBalancer = sub.LoadBalancer
	}
	if sub.ConnectionPool != nil {
		m.ConnectionPool = sub.ConnectionPool
	}
	if sub.OutlierDetection != nil {
		m.OutlierDetection = sub.OutlierDetection
	}
	return &m
}

// resolvePolicy fills Istio's defaults into a validated policy.
func resolvePolicy(tp *TrafficPolicy) *waypointapi.TrafficPolicy {
	out := &waypointapi.TrafficPolicy{ConnectionPool: &waypointapi.ConnectionPool{
		MaxConnections: unlimited, ConnectTimeout: durationpb.New(defaultConnectTimeout),
		Http1MaxPendingRequests: unlimited, Http2MaxRequests: unlimited, MaxRetries: unlimited,
		IdleTimeout: durationpb.New(defaultIdleTimeout),
	}}
	if tp == nil {
		return out
	}
	if lb := tp.LoadBalancer; lb != nil {
		out.LoadBalancer = lbPolicies[lb.Simple]
	}
	if cp := tp.ConnectionPool; cp != nil {
		p := out.ConnectionPool
		if t := cp.TCP; t != nil {
			setLimit(&p.MaxConnections, t.MaxConnections)
			if t.ConnectTimeout != "" {
				p.ConnectTimeout = mustDuration(t.ConnectTimeout)
			}
		}
		if h := cp.HTTP; h != nil {
			setLimit(&p.Http1MaxPendingRequests, h.HTTP1MaxPendingRequests)
			setLimit(&p.Http2MaxRequests, h.HTTP2MaxRequests)
			setLimit(&p.MaxRetries, h.MaxRetries)
			if h.MaxRequestsPerConnection != nil {
				p.MaxRequestsPerConnection = uint32(*h.MaxRequestsPerConnection)
			}
			if h.IdleTimeout != "" {
				p.IdleTimeout = mustDuration(h.IdleTimeout)
			}
		}
	}
	if od := tp.OutlierDetection; od != nil {
		o := &waypointapi.OutlierDetection{
			Consecutive_5XxErrors: defaultConsecutive5xx,
			Interval:              durationpb.New(defaultOutlierInterval),
			BaseEjectionTime:      durationpb.New(defaultBaseEjectionTime),
			MaxEjectionPercent:    defaultMaxEjectionPct,
			MinHealthPercent:      uint32(od.MinHealthPercent),
		}
		if od.Consecutive5xxErrors != nil {
			o.Consecutive_5XxErrors = *od.Consecutive5xxErrors
		}
		if od.ConsecutiveGatewayErrors != nil {
			o.ConsecutiveGatewayErrors = *od.ConsecutiveGatewayErrors
		}
		if od.Interval != "" {
			o.Interval = mustDuration(od.Interval)
		}
		if od.BaseEjectionTime != "" {
			o.BaseEjectionTime = mustDuration(od.BaseEjectionTime)
		}
		if od.MaxEjectionPercent > 0 { // Istio: 0 keeps Envoy's default
			o.MaxEjectionPercent = uint32(od.MaxEjectionPercent)
		}
		out.OutlierDetection = o
	}
	return out
}

var lbPolicies = map[string]waypointapi.LoadBalancer{
	"": waypointapi.LoadBalancer_LB_LEAST_REQUEST, "UNSPECIFIED": waypointapi.LoadBalancer_LB_LEAST_REQUEST,
	"LEAST_REQUEST": waypointapi.LoadBalancer_LB_LEAST_REQUEST, "LEAST_CONN": waypointapi.LoadBalancer_LB_LEAST_REQUEST,
	"ROUND_ROBIN": waypointapi.LoadBalancer_LB_ROUND_ROBIN, "RANDOM": waypointapi.LoadBalancer_LB_RANDOM,
	"PASSTHROUGH": waypointapi.LoadBalancer_LB_PASSTHROUGH,
}

// setLimit sets a threshold; Istio treats 0 as "not set" (the default).
func setLimit(dst *uint32, v *int32) {
	if v != nil && *v > 0 {
		*dst = uint32(*v)
	}
}

// mustDuration converts a duration validateDestinationRule accepted.
func mustDuration(s string) *durationpb.Duration {
	d, _ := time.ParseDuration(s)
	return durationpb.New(d)
}

// validateDestinationRule applies Istio's validation to the fields we
// implement and lists the fields set that we do not implement.
func validateDestinationRule(spec DestinationRuleSpec) (ignored []string, err error) {
	if spec.Host == "" {
		return nil, fmt.Errorf("spec.host: required")
	}
	if i := strings.LastIndex(spec.Host, "*"); i > 0 || (i == 0 && spec.Host != "*" && !strings.HasPrefix(spec.Host, "*.")) {
		return nil, fmt.Errorf("spec.host %q: a wildcard must be the whole host or its first label (*.example.com)", spec.Host)
	}
	for _, e := range spec.ExportTo {
		if e == "~" && len(spec.ExportTo) > 1 {
			return nil, fmt.Errorf("spec.exportTo: \"~\" must be the only entry")
		}
	}
	ig, err := validateTrafficPolicy("spec.trafficPolicy", spec.TrafficPolicy)
	if err != nil {
		return nil, err
	}
	ignored = append(ignored, ig...)
	names := map[string]bool{}
	for i, ss := range spec.Subsets {
		at := fmt.Sprintf("spec.subsets[%d]", i)
		if ss.Name == "" {
			return nil, fmt.Errorf("%s.name: required", at)
		}
		if names[ss.Name] {
			return nil, fmt.Errorf("%s.name: duplicate subset %q", at, ss.Name)
		}
		names[ss.Name] = true
		ig, err := validateTrafficPolicy(at+".trafficPolicy", ss.TrafficPolicy)
		if err != nil {
			return nil, err
		}
		ignored = append(ignored, ig...)
	}
	return ignored, nil
}

func validateTrafficPolicy(at string, tp *TrafficPolicy) (ignored []string, err error) {
	if tp == nil {
		return nil, nil
	}
	note := func(name string, raw []byte) {
		if len(raw) > 0 && string(raw) != "null" {
			ignored = append(ignored, at+"."+name)
		}
	}
	note("tls", tp.TLS)
	note("portLevelSettings", tp.PortLevelSettings)
	note("tunnel", tp.Tunnel)
	note("proxyProtocol", tp.ProxyProtocol)
	if lb := tp.LoadBalancer; lb != nil {
		if _, ok := lbPolicies[lb.Simple]; !ok {
			return nil, fmt.Errorf("%s.loadBalancer.simple: unknown algorithm %q (want ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH)", at, lb.Simple)
		}
		note("loadBalancer.consistentHash", lb.ConsistentHash)
		note("loadBalancer.localityLbSetting", lb.LocalityLbSetting)
		note("loadBalancer.warmupDurationSecs", lb.WarmupDurationSecs)
		note("loadBalancer.warmup", lb.Warmup)
	}
	if cp := tp.ConnectionPool; cp != nil {
		if t := cp.TCP; t != nil {
			if err := nonNegative(at+".connectionPool.tcp.maxConnections", t.MaxConnections); err != nil {
				return nil, err
			}
			if err := validDuration(at+".connectionPool.tcp.connectTimeout", t.ConnectTimeout); err != nil {
				return nil, err
			}
			note("connectionPool.tcp.tcpKeepalive", t.TCPKeepalive)
			note("connectionPool.tcp.maxConnectionDuration", t.MaxConnectionDuration)
			note("connectionPool.tcp.idleTimeout", t.IdleTimeout)
		}
		if h := cp.HTTP; h != nil {
			for name, v := range map[string]*int32{
				"http1MaxPendingRequests": h.HTTP1MaxPendingRequests, "http2MaxRequests": h.HTTP2MaxRequests,
				"maxRequestsPerConnection": h.MaxRequestsPerConnection, "maxRetries": h.MaxRetries,
			} {
				if err := nonNegative(at+".connectionPool.http."+name, v); err != nil {
					return nil, err
				}
			}
			if err := validDuration(at+".connectionPool.http.idleTimeout", h.IdleTimeout); err != nil {
				return nil, err
			}
			note("connectionPool.http.h2UpgradePolicy", h.H2UpgradePolicy)
			note("connectionPool.http.useClientProtocol", h.UseClientProtocol)
			note("connectionPool.http.maxConcurrentStreams", h.MaxConcurrentStreams)
		}
	}
	if od := tp.OutlierDetection; od != nil {
		p := at + ".outlierDetection"
		if err := validDuration(p+".interval", od.Interval); err != nil {
			return nil, err
		}
		if err := validDuration(p+".baseEjectionTime", od.BaseEjectionTime); err != nil {
			return nil, err
		}
		if od.MaxEjectionPercent < 0 || od.MaxEjectionPercent > 100 {
			return nil, fmt.Errorf("%s.maxEjectionPercent: %d is not in 0–100", p, od.MaxEjectionPercent)
		}
		if od.MinHealthPercent < 0 || od.MinHealthPercent > 100 {
			return nil, fmt.Errorf("%s.minHealthPercent: %d is not in 0–100", p, od.MinHealthPercent)
		}
		note("outlierDetection.consecutiveErrors", od.ConsecutiveErrors)
		note("outlierDetection.splitExternalLocalOriginErrors", od.SplitExternalLocalOriginErrors)
		note("outlierDetection.consecutiveLocalOriginFailures", od.ConsecutiveLocalOriginFailures)
	}
	return ignored, nil
}

func nonNegative(at string, v *int32) error {
	if v != nil && *v < 0 {
		return fmt.Errorf("%s: %d is negative", at, *v)
	}
	return nil
}

// validDuration accepts what Istio does: empty (unset) or a duration of
// at least 1ms.
func validDuration(at, s string) error {
	if s == "" {
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%s: %q is not a duration (e.g. \"10s\", \"500ms\")", at, s)
	}
	if d < time.Millisecond {
		return fmt.Errorf("%s: %s is under 1ms", at, s)
	}
	return nil
}

// localPolicy validates a LocalTrafficPolicy and converts its spec.
func localPolicy(p LocalTrafficPolicy) (*waypointapi.LocalTrafficPolicy, error) {
	if len(p.Spec.TargetRefs) == 0 {
		return nil, fmt.Errorf("spec.targetRefs: required")
	}
	for i, r := range p.Spec.TargetRefs {
		if r.Group != "" || r.Kind != "Service" || r.Name == "" {
			return nil, fmt.Errorf("spec.targetRefs[%d]: only Services (group \"\", kind Service, a name) can be targeted, got group %q kind %q", i, r.Group, r.Kind)
		}
		if r.Namespace != "" && r.Namespace != p.Namespace {
			return nil, fmt.Errorf("spec.targetRefs[%d].namespace: a policy targets Services in its own namespace only", i)
		}
	}
	out := &waypointapi.LocalTrafficPolicy{Name: p.Namespace + "/" + p.Name}
	if rl := p.Spec.RateLimit; rl != nil {
		if rl.RequestsPerUnit < 1 || rl.RequestsPerUnit > unlimited {
			return nil, fmt.Errorf("spec.rateLimit.requestsPerUnit: %d is not in 1–%d", rl.RequestsPerUnit, uint32(unlimited))
		}
		var unit time.Duration
		switch rl.Unit {
		case "second":
			unit = time.Second
		case "minute":
			unit = time.Minute
		default:
			return nil, fmt.Errorf("spec.rateLimit.unit: %q is not second or minute", rl.Unit)
		}
		burst := rl.RequestsPerUnit
		if rl.Burst != nil {
			if *rl.Burst < 1 || *rl.Burst > unlimited {
				return nil, fmt.Errorf("spec.rateLimit.burst: %d is not in 1–%d", *rl.Burst, uint32(unlimited))
			}
			burst = *rl.Burst
		}
		out.RateLimit = &waypointapi.RateLimit{RequestsPerUnit: uint32(rl.RequestsPerUnit), Unit: durationpb.New(unit), Burst: uint32(burst)}
	}
	if f := p.Spec.Fault; f != nil {
		out.Fault = &waypointapi.FaultInjection{}
		if d := f.Delay; d != nil {
			pct, err := percent("spec.fault.delay.percentage", d.Percentage)
			if err != nil {
				return nil, err
			}
			if err := validDuration("spec.fault.delay.fixedDelay", d.FixedDelay); err != nil || d.FixedDelay == "" {
				return nil, cmp.Or(err, fmt.Errorf("spec.fault.delay.fixedDelay: required"))
			}
			out.Fault.Delay = &waypointapi.FaultInjection_Delay{FixedDelay: mustDuration(d.FixedDelay), Percentage: pct}
		}
		if a := f.Abort; a != nil {
			pct, err := percent("spec.fault.abort.percentage", a.Percentage)
			if err != nil {
				return nil, err
			}
			if a.HTTPStatus < 200 || a.HTTPStatus > 599 {
				return nil, fmt.Errorf("spec.fault.abort.httpStatus: %d is not in 200–599", a.HTTPStatus)
			}
			out.Fault.Abort = &waypointapi.FaultInjection_Abort{HttpStatus: uint32(a.HTTPStatus), Percentage: pct}
		}
		if out.Fault.Delay == nil && out.Fault.Abort == nil {
			out.Fault = nil
		}
	}
	if out.RateLimit == nil && out.Fault == nil {
		return nil, fmt.Errorf("spec: set rateLimit, fault, or both")
	}
	return out, nil
}

// percent requires a percentage (unlike Istio, where an unset one means
// 0 %, which is easy to misread) in 0–100.
func percent(at string, p *Percent) (float64, error) {
	if p == nil {
		return 0, fmt.Errorf("%s: required", at)
	}
	if !(p.Value >= 0 && p.Value <= 100) {
		return 0, fmt.Errorf("%s.value: %v is not in 0–100", at, p.Value)
	}
	return p.Value, nil
}
