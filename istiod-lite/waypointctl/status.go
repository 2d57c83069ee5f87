package waypointctl

import (
	"errors"
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Observed is what the cluster holds of a waypoint Gateway's objects.
type Observed struct {
	Service    *corev1.Service    // nil while missing
	Deployment *appsv1.Deployment // nil while missing
	// ApplyErr is why applying the objects failed, if it did.
	ApplyErr error
}

// unexpectedListener is Istio's message for a waypoint listener that is
// not the HBONE one.
const unexpectedListener = `Expected a single listener on port 15008 with protocol "HBONE"`

// GatewayStatus computes waypoint Gateway gw's status from checkErr (the
// result of [Check]) and the objects observed:
//
//   - addresses: once accepted and the Service has a ClusterIP, each
//     ClusterIP (type IPAddress), then the Service's DNS name
//     <name>.<ns>.svc.<clusterDomain> (type Hostname);
//   - Accepted: True, or False with reason ListenersNotValid (no HBONE
//     listener) or Invalid (a name that cannot name a Service) and
//     checkErr's message;
//   - Programmed: True once the Service has a ClusterIP and the Deployment
//     an available replica; else False with reason Invalid (not accepted),
//     AddressNotAssigned (no Service or ClusterIP yet) or Pending (no
//     available replica) or Invalid (applying the objects failed), and a
//     message saying what is awaited or what failed;
//   - listeners: the HBONE listener Accepted, ResolvedRefs, not Conflicted
//     and Programmed as the Gateway; any other listener Accepted=False with
//     reason UnsupportedProtocol, as Istio reports it.
//
// Every condition carries gw's generation; a condition whose status does
// not change keeps its lastTransitionTime, the others get now. Conditions
// of other types on gw are kept.
func GatewayStatus(gw *gatewayv1.Gateway, checkErr error, obs Observed, clusterDomain string, now metav1.Time) gatewayv1.GatewayStatus {
	if clusterDomain == "" {
		clusterDomain = DefaultClusterDomain
	}
	gen := gw.Generation
	cond := func(t string, ok bool, reason, msg string) metav1.Condition {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		return metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen, LastTransitionTime: now}
	}

	var st gatewayv1.GatewayStatus
	st.Conditions = slices.Clone(gw.Status.Conditions)
	accepted := checkErr == nil
	var progOK bool
	var progReason, progMsg string
	switch {
	case !accepted:
		reason := gatewayv1.GatewayReasonListenersNotValid
		if errors.Is(checkErr, ErrInvalidName) {
			reason = gatewayv1.GatewayReasonInvalid
		}
		apimeta.SetStatusCondition(&st.Conditions, cond(string(gatewayv1.GatewayConditionAccepted), false, string(reason), checkErr.Error()))
		progReason, progMsg = string(gatewayv1.GatewayReasonInvalid), "Not deployed: the Gateway is not accepted"
	default:
		apimeta.SetStatusCondition(&st.Conditions, cond(string(gatewayv1.GatewayConditionAccepted), true,
			string(gatewayv1.GatewayReasonAccepted), "Resource accepted"))
		host := fmt.Sprintf("%s.%s.svc.%s", gw.Name, gw.Namespace, clusterDomain)
		ips := clusterIPs(obs.Service)
		for _, ip := range ips {
			st.Addresses = append(st.Addresses, gatewayv1.GatewayStatusAddress{Type: new(gatewayv1.IPAddressType), Value: ip})
		}
		if len(ips) > 0 {
			st.Addresses = append(st.Addresses, gatewayv1.GatewayStatusAddress{Type: new(gatewayv1.HostnameAddressType), Value: host})
		}
		progOK, progReason, progMsg = programmed(gw, obs, len(ips) > 0, host)
	}
	apimeta.SetStatusCondition(&st.Conditions, cond(string(gatewayv1.GatewayConditionProgrammed), progOK, progReason, progMsg))

	hbone := hboneListener(gw)
	for _, l := range gw.Spec.Listeners {
		ls := gatewayv1.ListenerStatus{Name: l.Name}
		for _, old := range gw.Status.Listeners {
			if old.Name == l.Name {
				ls.Conditions = slices.Clone(old.Conditions)
			}
		}
		set := func(t gatewayv1.ListenerConditionType, ok bool, reason gatewayv1.ListenerConditionReason, msg string) {
			apimeta.SetStatusCondition(&ls.Conditions, cond(string(t), ok, string(reason), msg))
		}
		set(gatewayv1.ListenerConditionConflicted, false, gatewayv1.ListenerReasonNoConflicts, "No conflicts")
		set(gatewayv1.ListenerConditionResolvedRefs, true, gatewayv1.ListenerReasonResolvedRefs, "No references to resolve")
		if hbone != nil && l.Name == hbone.Name && accepted {
			set(gatewayv1.ListenerConditionAccepted, true, gatewayv1.ListenerReasonAccepted, "Listener accepted")
			reason := gatewayv1.ListenerReasonProgrammed
			if !progOK {
				reason = gatewayv1.ListenerReasonPending
			}
			set(gatewayv1.ListenerConditionProgrammed, progOK, reason, progMsg)
		} else {
			msg := unexpectedListener
			if hbone != nil && l.Name == hbone.Name { // accepted listener of a rejected Gateway
				msg = "The Gateway is not accepted: " + checkErr.Error()
			}
			set(gatewayv1.ListenerConditionAccepted, false, gatewayv1.ListenerReasonUnsupportedProtocol, msg)
			set(gatewayv1.ListenerConditionProgrammed, false, gatewayv1.ListenerReasonInvalid, "Listener not accepted")
		}
		st.Listeners = append(st.Listeners, ls)
	}
	return st
}

// programmed says whether an accepted waypoint is ready to take traffic,
// and if not, why.
func programmed(gw *gatewayv1.Gateway, obs Observed, haveIP bool, host string) (bool, string, string) {
	key := gw.Namespace + "/" + gw.Name
	if obs.ApplyErr != nil {
		return false, string(gatewayv1.GatewayReasonInvalid), "Deploying the waypoint failed (retrying): " + obs.ApplyErr.Error()
	}
	if !haveIP {
		return false, string(gatewayv1.GatewayReasonAddressNotAssigned), fmt.Sprintf("Waiting for Service %s to get a ClusterIP", key)
	}
	d := obs.Deployment
	if d == nil {
		return false, string(gatewayv1.GatewayReasonPending), fmt.Sprintf("Waiting for Deployment %s to be created", key)
	}
	if d.Status.AvailableReplicas < 1 {
		msg := fmt.Sprintf("Deployment %s has no available replica yet (%d of %d ready)", key, d.Status.ReadyReplicas, d.Status.Replicas)
		for _, c := range d.Status.Conditions {
			if c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue {
				msg += ": " + c.Message
			}
		}
		return false, string(gatewayv1.GatewayReasonPending), msg
	}
	return true, string(gatewayv1.GatewayReasonProgrammed),
		fmt.Sprintf("Resource programmed, assigned to service(s) %s:%d", host, HBONEPort)
}

// clusterIPs are svc's cluster IPs, none for a missing or headless Service.
func clusterIPs(svc *corev1.Service) []string {
	if svc == nil {
		return nil
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []string
	for _, ip := range ips {
		if ip != "" && ip != corev1.ClusterIPNone {
			out = append(out, ip)
		}
	}
	return out
}

// ClassConditions are the conditions of a GatewayClass whose controllerName
// is [MeshController]: Accepted=True, lastTransitionTime kept when the
// status does not change.
func ClassConditions(gc *gatewayv1.GatewayClass, now metav1.Time) []metav1.Condition {
	conds := slices.Clone(gc.Status.Conditions)
	apimeta.SetStatusCondition(&conds, metav1.Condition{
		Type:               string(gatewayv1.GatewayClassConditionStatusAccepted),
		Status:             metav1.ConditionTrue,
		Reason:             string(gatewayv1.GatewayClassReasonAccepted),
		Message:            "Handled by istiod-lite's waypoint controller",
		ObservedGeneration: gc.Generation,
		LastTransitionTime: now,
	})
	return conds
}
