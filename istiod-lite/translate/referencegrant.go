package translate

import (
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// kindHTTPRoute is the kind a ReferenceGrant's from entry names to admit
// HTTPRoutes (of group gateway.networking.k8s.io).
const kindHTTPRoute = "HTTPRoute"

// Reference is one object's reference to another, described as a Gateway
// API ReferenceGrant describes its two ends: the referrer's group ("" is
// the core group), kind and namespace, and the referent's group, kind,
// namespace and name.
type Reference struct {
	FromGroup, FromKind, FromNamespace string
	ToGroup, ToKind, ToNamespace       string
	ToName                             string
}

// ReferencePermitted reports whether grants permit ref, as the Gateway
// API defines ReferenceGrant: a reference within one namespace needs no
// grant; a reference to another namespace needs a ReferenceGrant in the
// referent's namespace (grants in any other namespace count for nothing)
// with a from entry whose group, kind and namespace are the referrer's
// and, in the same grant, a to entry whose group and kind are the
// referent's and whose name is unset (every object of that kind) or the
// referent's. Entries of a list are alternatives. Groups, kinds and names
// compare exactly ("" is the core group, as the CRD says). It is pure.
func ReferencePermitted(grants []*gatewayv1.ReferenceGrant, ref Reference) bool {
	if ref.FromNamespace == ref.ToNamespace {
		return true
	}
	for _, g := range grants {
		if g != nil && g.Namespace == ref.ToNamespace && grantAllowsFrom(g, ref) && grantAllowsTo(g, ref) {
			return true
		}
	}
	return false
}

func grantAllowsFrom(g *gatewayv1.ReferenceGrant, ref Reference) bool {
	for _, f := range g.Spec.From {
		if string(f.Group) == ref.FromGroup && string(f.Kind) == ref.FromKind && string(f.Namespace) == ref.FromNamespace {
			return true
		}
	}
	return false
}

func grantAllowsTo(g *gatewayv1.ReferenceGrant, ref Reference) bool {
	for _, t := range g.Spec.To {
		if string(t.Group) == ref.ToGroup && string(t.Kind) == ref.ToKind &&
			(t.Name == nil || *t.Name == "" || string(*t.Name) == ref.ToName) {
			return true
		}
	}
	return false
}

// referencePermitted is [ReferencePermitted] over the indexed grants of
// the referent's namespace.
func (idx *Index) referencePermitted(ref Reference) bool {
	return ReferencePermitted(idx.grants[ref.ToNamespace], ref)
}
