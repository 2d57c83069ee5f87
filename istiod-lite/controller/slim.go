package controller

import (
	"maps"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
)

// stripObject drops what the controller never reads before an object
// enters an informer cache: managedFields and the last-applied annotation
// of every object, and per type:
//   - Pod: all of spec and status but what translation reads;
//   - Node: everything but metadata (locality is in its labels), and its
//     annotations;
//   - EndpointSlice: of each endpoint only its targetRef, and the ports;
//   - ServiceAccount: its secret references;
//   - Gateway: status but the addresses (conditions are written by
//     gateway controllers and read by no one here);
//   - HTTPRoute and GRPCRoute: nothing more (their status is kept: the
//     controller merges its own parents into it, keeping the other
//     controllers' entries and the unchanged conditions' times);
//   - ReferenceGrant (v1 or v1beta1): its labels and annotations (only
//     its namespace and spec are read; it has no status).
func stripObject(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
		if ann := a.GetAnnotations(); ann[corev1.LastAppliedConfigAnnotation] != "" {
			ann = maps.Clone(ann)
			delete(ann, corev1.LastAppliedConfigAnnotation)
			a.SetAnnotations(ann)
		}
	}
	switch o := obj.(type) {
	case *corev1.Pod:
		slim := func(cs []corev1.Container) []corev1.Container {
			out := make([]corev1.Container, len(cs))
			for i, c := range cs {
				out[i] = corev1.Container{Name: c.Name, Ports: c.Ports, RestartPolicy: c.RestartPolicy}
			}
			return out
		}
		o.Spec = corev1.PodSpec{
			ServiceAccountName: o.Spec.ServiceAccountName,
			NodeName:           o.Spec.NodeName,
			HostNetwork:        o.Spec.HostNetwork,
			Containers:         slim(o.Spec.Containers),
			InitContainers:     slim(o.Spec.InitContainers),
		}
		o.Status = corev1.PodStatus{
			Phase: o.Status.Phase, Conditions: o.Status.Conditions,
			PodIP: o.Status.PodIP, PodIPs: o.Status.PodIPs, HostIP: o.Status.HostIP,
		}
	case *corev1.Node:
		o.Annotations = nil
		o.Spec = corev1.NodeSpec{}
		o.Status = corev1.NodeStatus{}
	case *discoveryv1.EndpointSlice:
		eps := make([]discoveryv1.Endpoint, 0, len(o.Endpoints))
		for _, ep := range o.Endpoints {
			if ep.TargetRef != nil {
				eps = append(eps, discoveryv1.Endpoint{TargetRef: ep.TargetRef})
			}
		}
		o.Endpoints = eps
		o.Ports = nil
	case *corev1.ServiceAccount:
		o.Secrets = nil
		o.ImagePullSecrets = nil
	case *gatewayv1.Gateway:
		o.Status = gatewayv1.GatewayStatus{Addresses: o.Status.Addresses}
	case *gatewayv1.ReferenceGrant:
		o.Labels, o.Annotations = nil, nil
	case *gatewayv1beta1.ReferenceGrant:
		o.Labels, o.Annotations = nil, nil
	}
	return obj, nil
}

// sameForTranslation reports whether an update changed nothing the
// translation reads, for the types whose updates are mostly noise once
// stripped: a Node's status heartbeats (only its labels matter) and an
// EndpointSlice's readiness changes (only its targets matter; readiness
// comes from the pods).
func sameForTranslation(old, cur any) bool {
	switch o := old.(type) {
	case *corev1.Node:
		c, ok := cur.(*corev1.Node)
		return ok && maps.Equal(o.Labels, c.Labels)
	case *discoveryv1.EndpointSlice:
		c, ok := cur.(*discoveryv1.EndpointSlice)
		return ok && maps.Equal(o.Labels, c.Labels) && o.AddressType == c.AddressType &&
			reflect.DeepEqual(o.Endpoints, c.Endpoints)
	}
	return false
}
