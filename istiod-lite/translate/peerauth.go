package translate

import (
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambientmesh/ambient/internal/authz"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// ConvertedPeerAuthenticationPrefix prefixes the name of the policy a
// workload PeerAuthentication with port-level mTLS converts to ('_' cannot
// occur in Kubernetes names, so it cannot collide with an
// AuthorizationPolicy).
const ConvertedPeerAuthenticationPrefix = "converted_peer_authentication_"

// ConvertPeerAuthentication converts one PeerAuthentication on its own, without
// the mesh and namespace policies it inherits from: STRICT (with no
// port-level exception) is [authz.StrictPolicy] in rootNamespace — one
// shared WORKLOAD_SELECTOR policy that workloads opt into through
// [PeerAuthenticationNames] — and PERMISSIVE, DISABLE or UNSET are nil. A
// workload policy with portLevelMtls converts as by [PeerAuthentications]
// with no parent policy.
func ConvertPeerAuthentication(pa PeerAuthentication, rootNamespace string) *security.Authorization {
	if p := portLevelPolicy(pa, rootNamespace, nil, nil); p != nil {
		return p
	}
	if isStrict(pa.Spec.MTLS) {
		return authz.StrictPolicy(rootNamespace)
	}
	return nil
}

// PeerAuthentications converts all PeerAuthentications of the mesh into
// the policies ztunnel needs, as Istio does: [authz.StrictPolicy] in
// rootNamespace when any policy is STRICT, and one WORKLOAD_SELECTOR DENY
// policy per workload PeerAuthentication whose portLevelMtls makes some
// ports differ from the mode inherited from the namespace and mesh
// policies. Bind them to workloads with [PeerAuthenticationNames].
func PeerAuthentications(pas []PeerAuthentication, rootNamespace string) []*security.Authorization {
	var out []*security.Authorization
	strict := false
	for _, pa := range pas {
		strict = strict || isStrict(pa.Spec.MTLS) || hasPortMode(pa, ModeStrict)
		if pa.Spec.Selector == nil || len(pa.Spec.PortLevelMTLS) == 0 || pa.Namespace == rootNamespace {
			continue
		}
		nsCfg, rootCfg := parents(pas, pa.Namespace, rootNamespace)
		if p := portLevelPolicy(pa, rootNamespace, nsCfg, rootCfg); p != nil {
			out = append(out, p)
		}
	}
	if strict {
		out = append([]*security.Authorization{authz.StrictPolicy(rootNamespace)}, out...)
	}
	return out
}

// PeerAuthenticationNames returns the "namespace/name" keys of the
// converted PeerAuthentication policies that apply to pod, for
// Workload.authorization_policies: the effective policy is the oldest
// workload policy selecting the pod, over the oldest namespace policy, over
// the oldest mesh policy (in rootNamespace), UNSET inheriting.
func PeerAuthenticationNames(pod *corev1.Pod, pas []PeerAuthentication, rootNamespace string) []string {
	if pod == nil {
		return nil
	}
	nsCfg, meshCfg := parents(pas, pod.Namespace, rootNamespace)
	var wlCfg *PeerAuthentication
	for i := range pas {
		pa := &pas[i]
		if pa.Namespace == pod.Namespace && pa.Namespace != rootNamespace && pa.Spec.Selector != nil &&
			len(pa.Spec.Selector.MatchLabels) > 0 && subset(pa.Spec.Selector.MatchLabels, pod.Labels) && older(pa, wlCfg) {
			wlCfg = pa
		}
	}
	strict := meshCfg != nil && isStrict(meshCfg.Spec.MTLS)
	if nsCfg != nil && !isUnset(nsCfg.Spec.MTLS) {
		strict = isStrict(nsCfg.Spec.MTLS)
	}
	portKey := ""
	if wlCfg != nil {
		if !isUnset(wlCfg.Spec.MTLS) {
			strict = isStrict(wlCfg.Spec.MTLS)
		}
		key := wlCfg.Namespace + "/" + ConvertedPeerAuthenticationPrefix + wlCfg.Name
		switch {
		case len(wlCfg.Spec.PortLevelMTLS) == 0:
		case strict && hasPortMode(*wlCfg, ModePermissive, ModeDisable):
			// The converted policy carries the STRICT default itself.
			portKey, strict = key, false
		case !strict && hasPortMode(*wlCfg, ModeStrict):
			portKey = key
		}
	}
	var out []string
	if strict {
		out = append(out, rootNamespace+"/"+authz.StrictPolicyName)
	}
	if portKey != "" {
		out = append(out, portKey)
	}
	slices.Sort(out)
	return out
}

// parents returns the oldest selector-less PeerAuthentication of namespace
// and of rootNamespace.
func parents(pas []PeerAuthentication, namespace, rootNamespace string) (nsCfg, rootCfg *PeerAuthentication) {
	for i := range pas {
		pa := &pas[i]
		if pa.Spec.Selector != nil && len(pa.Spec.Selector.MatchLabels) > 0 {
			continue
		}
		switch pa.Namespace {
		case rootNamespace:
			if older(pa, rootCfg) {
				rootCfg = pa
			}
		case namespace:
			if older(pa, nsCfg) {
				nsCfg = pa
			}
		}
	}
	return nsCfg, rootCfg
}

func older(a, b *PeerAuthentication) bool {
	return b == nil || a.CreationTimestamp.Before(&b.CreationTimestamp)
}

// portLevelPolicy converts a workload PeerAuthentication with portLevelMtls
// into a DENY of plaintext on the ports that are STRICT while the workload
// default is not, or on all ports but the PERMISSIVE/DISABLE ones while the
// default is STRICT. nil when the ports do not differ from the default.
func portLevelPolicy(pa PeerAuthentication, rootNamespace string, nsCfg, rootCfg *PeerAuthentication) *security.Authorization {
	spec := pa.Spec
	if pa.Namespace == rootNamespace || spec.Selector == nil || len(spec.PortLevelMTLS) == 0 {
		return nil
	}
	parentStrict := false
	if nsCfg != nil && !isUnset(nsCfg.Spec.MTLS) {
		parentStrict = isStrict(nsCfg.Spec.MTLS)
	} else if rootCfg != nil {
		parentStrict = isStrict(rootCfg.Spec.MTLS)
	}
	defaultStrict := isStrict(spec.MTLS) || (isUnset(spec.MTLS) && parentStrict)
	noIdentity := []*security.StringMatch{{MatchType: &security.StringMatch_Presence{}}}
	var strictPorts, openPorts []uint32
	for _, port := range slices.Sorted(maps.Keys(spec.PortLevelMTLS)) {
		switch spec.PortLevelMTLS[port].Mode {
		case ModeStrict:
			if !defaultStrict {
				strictPorts = append(strictPorts, port)
			}
		case ModePermissive, ModeDisable:
			if defaultStrict {
				openPorts = append(openPorts, port)
			}
		}
	}
	var match *security.Match
	switch {
	case defaultStrict && len(openPorts) > 0:
		match = &security.Match{NotPrincipals: noIdentity, NotDestinationPorts: openPorts}
	case !defaultStrict && len(strictPorts) > 0:
		match = &security.Match{NotPrincipals: noIdentity, DestinationPorts: strictPorts}
	default:
		return nil
	}
	return &security.Authorization{
		Name:      ConvertedPeerAuthenticationPrefix + pa.Name,
		Namespace: pa.Namespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Groups:    []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{match}}}}},
	}
}

func isStrict(m *MutualTLS) bool { return m != nil && m.Mode == ModeStrict }
func isUnset(m *MutualTLS) bool  { return m == nil || m.Mode == "" || m.Mode == ModeUnset }

func hasPortMode(pa PeerAuthentication, modes ...string) bool {
	for _, m := range pa.Spec.PortLevelMTLS {
		if slices.Contains(modes, m.Mode) {
			return true
		}
	}
	return false
}

// PolicyNames returns, sorted, the "namespace/name" keys of the
// selector-scoped AuthorizationPolicies that select pod, for
// Workload.authorization_policies: policies in the pod's namespace or in
// rootNamespace whose selector.matchLabels (empty: all) are a subset of the
// pod's labels. Policies [Authorization] does not send to ztunnel
// (targetRefs, AUDIT, CUSTOM) are left out.
func PolicyNames(pod *corev1.Pod, policies []AuthorizationPolicy, rootNamespace string) []string {
	if pod == nil {
		return nil
	}
	var out []string
	for _, ap := range policies {
		s := ap.Spec
		if s.Selector == nil || len(s.TargetRefs) > 0 || s.TargetRef != nil ||
			(s.Action != "" && s.Action != ActionAllow && s.Action != ActionDeny) ||
			(ap.Namespace != pod.Namespace && ap.Namespace != rootNamespace) ||
			!subset(s.Selector.MatchLabels, pod.Labels) {
			continue
		}
		out = append(out, ap.Namespace+"/"+ap.Name)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
