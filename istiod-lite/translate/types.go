package translate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambientmesh/ambient/internal/authzapi"
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

// The spec's types are internal/authzapi's, shared with the waypoint
// (waypoint/l7authz), which decodes the spec istiod-lite marshals for it.
type (
	AuthorizationPolicySpec = authzapi.Spec
	WorkloadSelector        = authzapi.WorkloadSelector
	PolicyTargetReference   = authzapi.TargetRef
	Provider                = authzapi.Provider
	Rule                    = authzapi.Rule
	From                    = authzapi.From
	To                      = authzapi.To
	Source                  = authzapi.Source
	Operation               = authzapi.Operation
	WhenCondition           = authzapi.Condition
)

// Actions of an AuthorizationPolicy.
const (
	ActionAllow  = authzapi.ActionAllow
	ActionDeny   = authzapi.ActionDeny
	ActionAudit  = authzapi.ActionAudit
	ActionCustom = authzapi.ActionCustom
)

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

// API groups of the other CRDs [FromUnstructured] decodes.
const (
	// NetworkingGroup is Istio's networking API group (DestinationRule).
	NetworkingGroup = "networking.istio.io"
	// AmbientPolicyGroup is our own policy API group (LocalTrafficPolicy).
	AmbientPolicyGroup = "policy.ambientmesh.io"
)

// Policy is the set of CRD types [FromUnstructured] decodes.
type Policy interface {
	AuthorizationPolicy | PeerAuthentication | DestinationRule | LocalTrafficPolicy
}

// DestinationRule is networking.istio.io/v1 DestinationRule (v1beta1 and
// v1alpha3 have the same schema), the fields we implement. Fields of
// Istio's schema we do not implement are kept raw so that an Istio
// manifest still decodes; [Resilience] reports them as ignored.
type DestinationRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              DestinationRuleSpec `json:"spec"`
}

// DestinationRuleSpec is istio.networking.v1.DestinationRule.
type DestinationRuleSpec struct {
	Host          string         `json:"host"`
	TrafficPolicy *TrafficPolicy `json:"trafficPolicy,omitempty"`
	Subsets       []Subset       `json:"subsets,omitempty"`
	ExportTo      []string       `json:"exportTo,omitempty"`
	// WorkloadSelector limits the rule to sidecars; such rules never apply
	// at waypoints.
	WorkloadSelector *WorkloadSelector `json:"workloadSelector,omitempty"`
}

// TrafficPolicy is istio.networking.v1.TrafficPolicy.
type TrafficPolicy struct {
	LoadBalancer     *LoadBalancerSettings   `json:"loadBalancer,omitempty"`
	ConnectionPool   *ConnectionPoolSettings `json:"connectionPool,omitempty"`
	OutlierDetection *OutlierDetection       `json:"outlierDetection,omitempty"`
	// Not implemented at the waypoint (mTLS is HBONE's; the rest later).
	TLS               json.RawMessage `json:"tls,omitempty"`
	PortLevelSettings json.RawMessage `json:"portLevelSettings,omitempty"`
	Tunnel            json.RawMessage `json:"tunnel,omitempty"`
	ProxyProtocol     json.RawMessage `json:"proxyProtocol,omitempty"`
}

// LoadBalancerSettings is istio.networking.v1.LoadBalancerSettings.
type LoadBalancerSettings struct {
	// Simple is UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST, RANDOM or
	// PASSTHROUGH (LEAST_CONN is LEAST_REQUEST's deprecated name).
	Simple string `json:"simple,omitempty"`
	// Not implemented.
	ConsistentHash     json.RawMessage `json:"consistentHash,omitempty"`
	LocalityLbSetting  json.RawMessage `json:"localityLbSetting,omitempty"`
	WarmupDurationSecs json.RawMessage `json:"warmupDurationSecs,omitempty"`
	Warmup             json.RawMessage `json:"warmup,omitempty"`
}

// ConnectionPoolSettings is istio.networking.v1.ConnectionPoolSettings.
type ConnectionPoolSettings struct {
	TCP  *TCPSettings  `json:"tcp,omitempty"`
	HTTP *HTTPSettings `json:"http,omitempty"`
}

// TCPSettings is ConnectionPoolSettings.TCPSettings.
type TCPSettings struct {
	MaxConnections *int32 `json:"maxConnections,omitempty"`
	// ConnectTimeout is a duration ("10s", "500ms").
	ConnectTimeout string `json:"connectTimeout,omitempty"`
	// Not implemented.
	TCPKeepalive          json.RawMessage `json:"tcpKeepalive,omitempty"`
	MaxConnectionDuration json.RawMessage `json:"maxConnectionDuration,omitempty"`
	IdleTimeout           json.RawMessage `json:"idleTimeout,omitempty"`
}

// HTTPSettings is ConnectionPoolSettings.HTTPSettings.
type HTTPSettings struct {
	HTTP1MaxPendingRequests  *int32 `json:"http1MaxPendingRequests,omitempty"`
	HTTP2MaxRequests         *int32 `json:"http2MaxRequests,omitempty"`
	MaxRequestsPerConnection *int32 `json:"maxRequestsPerConnection,omitempty"`
	MaxRetries               *int32 `json:"maxRetries,omitempty"`
	IdleTimeout              string `json:"idleTimeout,omitempty"`
	// Not implemented.
	H2UpgradePolicy      json.RawMessage `json:"h2UpgradePolicy,omitempty"`
	UseClientProtocol    json.RawMessage `json:"useClientProtocol,omitempty"`
	MaxConcurrentStreams json.RawMessage `json:"maxConcurrentStreams,omitempty"`
}

// OutlierDetection is istio.networking.v1.OutlierDetection.
type OutlierDetection struct {
	// Consecutive5xxErrors is nil for Istio's default, 5; 0 disables.
	Consecutive5xxErrors     *uint32 `json:"consecutive5xxErrors,omitempty"`
	ConsecutiveGatewayErrors *uint32 `json:"consecutiveGatewayErrors,omitempty"`
	Interval                 string  `json:"interval,omitempty"`
	BaseEjectionTime         string  `json:"baseEjectionTime,omitempty"`
	MaxEjectionPercent       int32   `json:"maxEjectionPercent,omitempty"`
	MinHealthPercent         int32   `json:"minHealthPercent,omitempty"`
	// Not implemented.
	ConsecutiveErrors              json.RawMessage `json:"consecutiveErrors,omitempty"`
	SplitExternalLocalOriginErrors json.RawMessage `json:"splitExternalLocalOriginErrors,omitempty"`
	ConsecutiveLocalOriginFailures json.RawMessage `json:"consecutiveLocalOriginFailures,omitempty"`
}

// Subset is istio.networking.v1.Subset.
type Subset struct {
	Name          string            `json:"name"`
	Labels        map[string]string `json:"labels,omitempty"`
	TrafficPolicy *TrafficPolicy    `json:"trafficPolicy,omitempty"`
}

// LocalTrafficPolicy is policy.ambientmesh.io/v1alpha1 LocalTrafficPolicy,
// our own CRD (manifests/crds): a local rate limit and fault injection for
// the Services it targets, enforced by their waypoints.
type LocalTrafficPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              LocalTrafficPolicySpec `json:"spec"`
}

// LocalTrafficPolicySpec is the spec of a [LocalTrafficPolicy].
type LocalTrafficPolicySpec struct {
	// TargetRefs name Services in the policy's namespace (group "", kind
	// Service), like Gateway API LocalPolicyTargetReferences.
	TargetRefs []PolicyTargetReference `json:"targetRefs"`
	RateLimit  *LocalRateLimit         `json:"rateLimit,omitempty"`
	Fault      *FaultInjection         `json:"fault,omitempty"`
}

// LocalRateLimit is a token bucket per waypoint replica.
type LocalRateLimit struct {
	RequestsPerUnit int64 `json:"requestsPerUnit"`
	// Unit is "second" or "minute".
	Unit string `json:"unit"`
	// Burst is the bucket's capacity; default requestsPerUnit.
	Burst *int64 `json:"burst,omitempty"`
}

// FaultInjection is Istio's HTTPFaultInjection (delay, and abort with
// httpStatus).
type FaultInjection struct {
	Delay *FaultDelay `json:"delay,omitempty"`
	Abort *FaultAbort `json:"abort,omitempty"`
}

// FaultDelay is HTTPFaultInjection.Delay.
type FaultDelay struct {
	FixedDelay string   `json:"fixedDelay"`
	Percentage *Percent `json:"percentage"`
}

// FaultAbort is HTTPFaultInjection.Abort.
type FaultAbort struct {
	HTTPStatus int32    `json:"httpStatus"`
	Percentage *Percent `json:"percentage"`
}

// Percent is istio.networking.v1.Percent, 0–100.
type Percent struct {
	Value float64 `json:"value"`
}

// FromUnstructured decodes an unstructured object (as a dynamic client or a
// YAML decoder returns it) into T. The object's apiVersion must be one T's
// CRD serves (security.istio.io/v1 or v1beta1 for the security policies,
// networking.istio.io/v1, v1beta1 or v1alpha3 for DestinationRule,
// policy.ambientmesh.io/v1alpha1 for LocalTrafficPolicy) and its kind T's
// kind. Unknown fields in spec are an error: a field this package does not
// know could narrow the policy, and ignoring it could grant access the
// author did not mean to.
func FromUnstructured[T Policy](obj map[string]any) (*T, error) {
	var zero T
	wantKind, wantGroup, versions := "AuthorizationPolicy", Group, []string{"v1", "v1beta1"}
	switch any(zero).(type) {
	case PeerAuthentication:
		wantKind = "PeerAuthentication"
	case DestinationRule:
		wantKind, wantGroup, versions = "DestinationRule", NetworkingGroup, []string{"v1", "v1beta1", "v1alpha3"}
	case LocalTrafficPolicy:
		wantKind, wantGroup, versions = "LocalTrafficPolicy", AmbientPolicyGroup, []string{"v1alpha1"}
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
	if group != wantGroup || !slices.Contains(versions, version) || tm.Kind != wantKind {
		return nil, fmt.Errorf("translate: decode %s: got apiVersion %q kind %q, want %s/%s %s", wantKind, tm.APIVersion, tm.Kind, wantGroup, versions[0], wantKind)
	}
	return out, nil
}

func typeMeta(v any) metav1.TypeMeta {
	switch p := v.(type) {
	case *AuthorizationPolicy:
		return p.TypeMeta
	case *PeerAuthentication:
		return p.TypeMeta
	case *DestinationRule:
		return p.TypeMeta
	case *LocalTrafficPolicy:
		return p.TypeMeta
	}
	return metav1.TypeMeta{}
}
