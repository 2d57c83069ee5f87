package translate

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// WaypointPolicy is the policy as waypoints receive it, for an
// AuthorizationPolicy with targetRefs (or the older targetRef): such a
// policy runs at the waypoints in front of its targets, never at ztunnel.
// It reports false for a selector-bound or namespace-wide policy. The spec
// travels as the CRD's own JSON (see proto/waypointapi); the waypoint
// validates and compiles it.
func WaypointPolicy(ap AuthorizationPolicy) (*waypointapi.AuthorizationPolicy, bool, error) {
	if len(ap.Spec.TargetRefs) == 0 && ap.Spec.TargetRef == nil {
		return nil, false, nil
	}
	spec, err := json.Marshal(ap.Spec)
	if err != nil {
		return nil, true, fmt.Errorf("translate: policy %s/%s: %w", ap.Namespace, ap.Name, err)
	}
	return &waypointapi.AuthorizationPolicy{
		Namespace: ap.Namespace, Name: ap.Name,
		DryRun:   strings.EqualFold(ap.Annotations[AnnotationDryRun], "true"),
		SpecJson: spec,
	}, true, nil
}
