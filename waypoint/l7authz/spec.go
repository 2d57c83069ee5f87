package l7authz

import "github.com/ambientmesh/ambient/internal/authzapi"

// Input is one AuthorizationPolicy as the waypoint receives it.
type Input struct {
	Namespace string
	Name      string
	// DryRun is the istio.io/dry-run annotation: the policy is evaluated
	// and reported, never enforced.
	DryRun bool
	Spec   Spec
}

// The spec's types are internal/authzapi's, the ones istiod-lite decodes
// the CRD into and marshals for the waypoint.
type (
	Spec             = authzapi.Spec
	WorkloadSelector = authzapi.WorkloadSelector
	TargetRef        = authzapi.TargetRef
	Provider         = authzapi.Provider
	Rule             = authzapi.Rule
	From             = authzapi.From
	To               = authzapi.To
	Source           = authzapi.Source
	Operation        = authzapi.Operation
	Condition        = authzapi.Condition
)
