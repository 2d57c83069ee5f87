package translate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Group is the API group of Istio's security CRDs.
const Group = "security.istio.io"

// AuthorizationPolicy is security.istio.io/v1 AuthorizationPolicy (v1beta1
// has the same schema). JSON tags follow the CRD, so an Istio manifest
// decodes into it unchanged.
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              AuthorizationPolicySpec `json:"spec"`
}

// AuthorizationPolicySpec is istio.security.v1beta1.AuthorizationPolicy.
type AuthorizationPolicySpec struct {
	Selector *WorkloadSelector `json:"selector,omitempty"`
	// TargetRef is the deprecated single form of TargetRefs.
	TargetRef  *PolicyTargetReference  `json:"targetRef,omitempty"`
	TargetRefs []PolicyTargetReference `json:"targetRefs,omitempty"`
	Rules      []Rule                  `json:"rules,omitempty"`
	// Action is ALLOW (the default when empty), DENY, AUDIT or CUSTOM.
	Action   string    `json:"action,omitempty"`
	Provider *Provider `json:"provider,omitempty"`
}

// Actions of an AuthorizationPolicy.
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

// PolicyTargetReference is istio.type.v1beta1.PolicyTargetReference.
type PolicyTargetReference struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind,omitempty"`
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Provider names the extension provider of a CUSTOM policy.
type Provider struct {
	Name string `json:"name,omitempty"`
}

// Rule matches requests from a list of sources that perform a list of
// operations subject to a list of conditions; the lists are ANDed, the
// entries of each list ORed.
type Rule struct {
	From []From          `json:"from,omitempty"`
	To   []To            `json:"to,omitempty"`
	When []WhenCondition `json:"when,omitempty"`
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

// WhenCondition is istio.security.v1beta1.Condition, an entry of Rule.When.
// (The name Condition is taken by the status condition this package reports.)
type WhenCondition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

// PeerAuthentication is security.istio.io/v1 PeerAuthentication.
type PeerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PeerAuthenticationSpec `json:"spec"`
}

// PeerAuthenticationSpec is istio.security.v1beta1.PeerAuthentication.
type PeerAuthenticationSpec struct {
	Selector      *WorkloadSelector    `json:"selector,omitempty"`
	MTLS          *MutualTLS           `json:"mtls,omitempty"`
	PortLevelMTLS map[uint32]MutualTLS `json:"portLevelMtls,omitempty"`
}

// MutualTLS holds an mTLS mode: UNSET (or empty), DISABLE, PERMISSIVE or
// STRICT.
type MutualTLS struct {
	Mode string `json:"mode,omitempty"`
}

// mTLS modes.
const (
	ModeUnset      = "UNSET"
	ModeDisable    = "DISABLE"
	ModePermissive = "PERMISSIVE"
	ModeStrict     = "STRICT"
)

// Policy is the set of CRD types [FromUnstructured] decodes.
type Policy interface {
	AuthorizationPolicy | PeerAuthentication
}

// FromUnstructured decodes an unstructured object (as a dynamic client or a
// YAML decoder returns it) into T. The object's apiVersion must be
// security.istio.io/v1 or v1beta1 and its kind T's kind. Unknown fields in
// spec are an error: a field this package does not know could narrow the
// policy, and ignoring it could grant access the author did not mean to.
func FromUnstructured[T Policy](obj map[string]any) (*T, error) {
	var zero T
	wantKind := "AuthorizationPolicy"
	if _, ok := any(zero).(PeerAuthentication); ok {
		wantKind = "PeerAuthentication"
	}
	var raw []byte
	var err error
	// status is written by controllers and has no bearing on translation.
	clean := make(map[string]any, len(obj))
	for k, v := range obj {
		if k != "status" {
			clean[k] = v
		}
	}
	if raw, err = json.Marshal(clean); err != nil {
		return nil, fmt.Errorf("translate: encode %s: %w", wantKind, err)
	}
	out := new(T)
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return nil, fmt.Errorf("translate: decode %s: %w", wantKind, err)
	}
	tm := typeMeta(out)
	group, version, _ := strings.Cut(tm.APIVersion, "/")
	if group != Group || (version != "v1" && version != "v1beta1") || tm.Kind != wantKind {
		return nil, fmt.Errorf("translate: decode %s: got apiVersion %q kind %q, want %s/v1 %s", wantKind, tm.APIVersion, tm.Kind, Group, wantKind)
	}
	return out, nil
}

func typeMeta(v any) metav1.TypeMeta {
	switch p := v.(type) {
	case *AuthorizationPolicy:
		return p.TypeMeta
	case *PeerAuthentication:
		return p.TypeMeta
	}
	return metav1.TypeMeta{}
}
