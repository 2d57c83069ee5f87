package l7authz

// The input types mirror istiod-lite/translate's AuthorizationPolicySpec
// field for field, with the CRD's JSON names, so a spec marshalled by the
// control plane (json.Marshal(ap.Spec)) unmarshals here unchanged and
// Source, Operation, Condition, TargetRef, WorkloadSelector and Provider
// convert from translate's types with a plain Go conversion. This package
// cannot import translate: the waypoint must not link k8s.io/apimachinery
// (internal/archtest). TestSpecMirrorsTranslate keeps the two in step.

// Input is one AuthorizationPolicy as the waypoint receives it.
type Input struct {
	Namespace string
	Name      string
	// DryRun is the istio.io/dry-run annotation: the policy is evaluated
	// and reported, never enforced.
	DryRun bool
	Spec   Spec
}

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
