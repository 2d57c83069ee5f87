package l7authz

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// FromProto decodes the policy istiod-lite sends (the CRD's spec as JSON)
// into an Input for Compile. Unknown fields are errors: a field this
// waypoint does not know could change the policy's meaning, so the policy
// is refused (and the caller fails closed) rather than half-read.
func FromProto(p *waypointapi.AuthorizationPolicy) (Input, error) {
	in := Input{Namespace: p.GetNamespace(), Name: p.GetName(), DryRun: p.GetDryRun()}
	dec := json.NewDecoder(bytes.NewReader(p.GetSpecJson()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in.Spec); err != nil {
		return Input{}, fmt.Errorf("l7authz: policy %s/%s: spec: %w", in.Namespace, in.Name, err)
	}
	return in, nil
}
