// Package authzapi is the spec of Istio's AuthorizationPolicy
// (security.istio.io/v1; istio.security.v1beta1.AuthorizationPolicy) as Go
// types with the CRD's JSON names, so an Istio manifest's spec decodes into
// them unchanged.
//
// istiod-lite (istiod-lite/translate) decodes Kubernetes objects into
// these types and sends each waypoint the specs that concern it,
// marshalled; the waypoint (waypoint/l7authz) decodes them with the same
// types, so no field can be lost between the two. The package imports
// nothing beyond the standard library: the waypoint links no
// k8s.io/apimachinery (internal/archtest).
package authzapi

// Spec is istio.security.v1beta1.AuthorizationPolicy.
type Spec struct {
	Selector *WorkloadSelector `json:"selector,omitempty"`
	// TargetRef is the deprecated single form of TargetRefs.
	TargetRef  *TargetRef  `json:"targetRef,omitempty"`
	TargetRefs []TargetRef `json:"targetRefs,omitempty"`
	Rules      []Rule      `json:"rules,omitempty"`
	// Action is ALLOW (the default when empty), DENY, AUDIT or CUSTOM.
	Action   string    `json:"action,omitempty"`
	Provider *Provider `json:"provider,omitempty"`
}

// Actions of an AuthorizationPolicy, as Spec.Action spells them.
const (
	ActionAllow  = "ALLOW"
	ActionDeny   = "DENY"
	ActionAudit  = "AUDIT"
	ActionCustom = "CUSTOM"
)

// WorkloadSelector is istio.type.v1beta1.WorkloadSelector.
type WorkloadSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// TargetRef is istio.type.v1beta1.PolicyTargetReference.
type TargetRef struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind,omitempty"`
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Provider names the extension provider of a CUSTOM policy.
type Provider struct {
	Name string `json:"name,omitempty"`
}

// Rule is istio.security.v1beta1.Rule: from, to and when are ANDed, the
// entries of from and to ORed, the entries of when ANDed.
type Rule struct {
	From []From      `json:"from,omitempty"`
	To   []To        `json:"to,omitempty"`
	When []Condition `json:"when,omitempty"`
}

// From wraps a Source.
type From struct {
	Source Source `json:"source"`
}

// To wraps an Operation.
type To struct {
	Operation Operation `json:"operation"`
}

// Source is istio.security.v1beta1.Source.
type Source struct {
	Principals           []string `json:"principals,omitempty"`
	NotPrincipals        []string `json:"notPrincipals,omitempty"`
	RequestPrincipals    []string `json:"requestPrincipals,omitempty"`
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`
	Namespaces           []string `json:"namespaces,omitempty"`
	NotNamespaces        []string `json:"notNamespaces,omitempty"`
	ServiceAccounts      []string `json:"serviceAccounts,omitempty"`
	NotServiceAccounts   []string `json:"notServiceAccounts,omitempty"`
	IPBlocks             []string `json:"ipBlocks,omitempty"`
	NotIPBlocks          []string `json:"notIpBlocks,omitempty"`
	RemoteIPBlocks       []string `json:"remoteIpBlocks,omitempty"`
	NotRemoteIPBlocks    []string `json:"notRemoteIpBlocks,omitempty"`
}

// Operation is istio.security.v1beta1.Operation.
type Operation struct {
	Hosts      []string `json:"hosts,omitempty"`
	NotHosts   []string `json:"notHosts,omitempty"`
	Ports      []string `json:"ports,omitempty"`
	NotPorts   []string `json:"notPorts,omitempty"`
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	NotPaths   []string `json:"notPaths,omitempty"`
}

// Condition is istio.security.v1beta1.Condition, an entry of Rule.When.
type Condition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}
