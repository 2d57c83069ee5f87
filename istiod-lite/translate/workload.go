package translate

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// Labels and annotations this package reads.
const (
	LabelDataplaneMode        = "istio.io/dataplane-mode"
	DataplaneModeAmbient      = "ambient"
	DataplaneModeNone         = "none"
	LabelUseWaypoint          = "istio.io/use-waypoint"
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	// WaypointNone as the value of istio.io/use-waypoint opts an object
	// out of its namespace's waypoint.
	WaypointNone              = "none"
	LabelGatewayName          = "gateway.networking.k8s.io/gateway-name"
	LabelNetwork              = "topology.istio.io/network"
	LabelCanonicalName        = "service.istio.io/canonical-name"
	LabelCanonicalRevision    = "service.istio.io/canonical-revision"
	AnnotationSidecarStatus   = "sidecar.istio.io/status"
	AnnotationDryRun          = "istio.io/dry-run"
	labelPodTemplateHash      = "pod-template-hash"
	defaultCanonicalRevision  = "latest"
	defaultServiceAccountName = "default"
)

// AnnotationTunnelTransport on a pod or, failing that, its namespace sets
// Workload.tunnel_transport: "quic" or "h2" (our extension, hence not
// under istio.io; see [TunnelTransport]).
const AnnotationTunnelTransport = "ambientmesh.io/tunnel-transport"

// HBONEPort is the port a waypoint accepts HBONE on.
const HBONEPort = 15008

// Config is the mesh-wide input of the translation.
type Config struct {
	// ClusterID names this cluster in workload uids; default "Kubernetes",
	// Istio's default.
	ClusterID string
	// TrustDomain of workload identities; default "cluster.local".
	TrustDomain string
	// DomainSuffix of service hostnames; default "cluster.local".
	DomainSuffix string
	// Network of workloads and service VIPs; a topology.istio.io/network
	// label on the pod or its namespace overrides it. Default "".
	Network string
	// DefaultTunnelTransport is the tunnel transport of captured pods
	// whose pod and namespace carry no AnnotationTunnelTransport. Default
	// H2 (the zero value).
	DefaultTunnelTransport workloadapi.TunnelTransport
}

func (c Config) withDefaults() Config {
	if c.ClusterID == "" {
		c.ClusterID = "Kubernetes"
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.DomainSuffix == "" {
		c.DomainSuffix = "cluster.local"
	}
	return c
}

// WorkloadUID returns Istio's uid of a pod workload,
// "<cluster>//Pod/<namespace>/<name>".
func WorkloadUID(clusterID, namespace, name string) string {
	return clusterID + "//Pod/" + namespace + "/" + name
}

// Hostname returns a service's cluster hostname,
// "<name>.<namespace>.svc.<domainSuffix>".
func Hostname(name, namespace, domainSuffix string) string {
	return name + "." + namespace + ".svc." + domainSuffix
}

// Workload translates a pod into the workload ztunnel sees, reading the
// pod's namespace, services, node and waypoints from idx. It returns nil
// for a pod that is not (or no longer) a workload: no IP yet, or
// Succeeded/Failed.
//
// Workload.services lists the services in the pod's namespace whose
// selector selects the pod, and the services whose EndpointSlices name the
// pod in a targetRef (services without a selector, as Istio's
// matchingServicesWithoutSelectors), with target ports resolved against the
// pod. Workload.locality is the pod's node's ([NodeLocality]).
// Workload.waypoint is the waypoint the pod binds to for workload traffic
// (see [Index]); a waypoint's own pods have none.
//
// Workload.authorization_policies is left empty; fill it from
// [PolicyNames] and [PeerAuthenticationNames].
func Workload(pod *corev1.Pod, idx *Index) *workloadapi.Workload {
	if pod == nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	addrs := podAddresses(pod)
	if len(addrs) == 0 {
		return nil
	}
	cfg := idx.cfg
	ns := idx.namespace(pod.Namespace)
	nsLabels := namespaceLabels(ns)
	workloadName := podWorkloadName(pod)
	canonName, canonRev := canonicalService(pod.Labels, workloadName)

	w := &workloadapi.Workload{
		Uid:               WorkloadUID(cfg.ClusterID, pod.Namespace, pod.Name),
		Name:              pod.Name,
		Namespace:         pod.Namespace,
		Addresses:         addrs,
		Network:           network(pod.Labels, nsLabels, cfg),
		TrustDomain:       cfg.TrustDomain,
		ServiceAccount:    pod.Spec.ServiceAccountName,
		Node:              pod.Spec.NodeName,
		CanonicalName:     canonName,
		CanonicalRevision: canonRev,
		WorkloadType:      workloadapi.WorkloadType_POD,
		WorkloadName:      workloadName,
		ClusterId:         cfg.ClusterID,
		Status:            workloadapi.WorkloadStatus_UNHEALTHY,
		Locality:          cloneOrNil(idx.localities[pod.Spec.NodeName]),
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = defaultServiceAccountName
	}
	if podReady(pod) {
		w.Status = workloadapi.WorkloadStatus_HEALTHY
	}
	if pod.Spec.HostNetwork {
		w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
	}
	waypoint := idx.instanceOfWaypoint(pod)
	if CapturedByZtunnel(pod, ns) {
		w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	}
	if w.TunnelProtocol == workloadapi.TunnelProtocol_HBONE || waypoint { // a waypoint serves HBONE, captured or not
		w.TunnelTransport, _ = TunnelTransport(pod, ns, cfg.DefaultTunnelTransport)
	}
	if !waypoint {
		if wp := idx.waypointFor(pod.Labels, pod.Namespace, WaypointForWorkload); wp != nil {
			w.Waypoint = cloneOrNil(wp.address)
		}
	}
	w.Services = workloadServices(pod, idx)
	return w
}

// TunnelTransport is the transport a captured pod asks tunnels to it to
// use (Workload.tunnel_transport): the pod's AnnotationTunnelTransport,
// else its namespace's, else def. An annotation whose value is not "quic"
// or "h2" gives H2 and an error naming the object: HTTP/2 works
// everywhere, so a typo can only ever keep today's behaviour.
func TunnelTransport(pod *corev1.Pod, ns *corev1.Namespace, def workloadapi.TunnelTransport) (workloadapi.TunnelTransport, error) {
	if v, ok := pod.Annotations[AnnotationTunnelTransport]; ok {
		return annotatedTransport("pod "+pod.Namespace+"/"+pod.Name, v)
	}
	if ns != nil {
		if v, ok := ns.Annotations[AnnotationTunnelTransport]; ok {
			return annotatedTransport("namespace "+ns.Name, v)
		}
	}
	return def, nil
}

func annotatedTransport(object, value string) (workloadapi.TunnelTransport, error) {
	t, err := ParseTunnelTransport(value)
	if err != nil {
		return workloadapi.TunnelTransport_H2, fmt.Errorf("%s: annotation %s: %w; using h2", object, AnnotationTunnelTransport, err)
	}
	return t, nil
}

// ParseTunnelTransport reads a transport as annotations and flags write
// it: "h2" or "quic".
func ParseTunnelTransport(s string) (workloadapi.TunnelTransport, error) {
	switch s {
	case "h2":
		return workloadapi.TunnelTransport_H2, nil
	case "quic":
		return workloadapi.TunnelTransport_QUIC, nil
	}
	return workloadapi.TunnelTransport_H2, fmt.Errorf("tunnel transport %q is not h2 or quic", s)
}

// InvalidTunnelTransports reports every namespace and pod whose
// AnnotationTunnelTransport is invalid, keyed "Namespace/<name>" or
// "Pod/<namespace>/<name>", with the problem, for the control plane to
// warn about. The pods concerned get H2 (see [TunnelTransport]).
func InvalidTunnelTransports(namespaces []*corev1.Namespace, pods []*corev1.Pod) map[string]string {
	var out map[string]string
	add := func(key, object, value string) {
		if _, err := annotatedTransport(object, value); err != nil {
			if out == nil {
				out = make(map[string]string)
			}
			out[key] = err.Error()
		}
	}
	for _, ns := range namespaces {
		if v, ok := ns.Annotations[AnnotationTunnelTransport]; ok {
			add("Namespace/"+ns.Name, "namespace "+ns.Name, v)
		}
	}
	for _, pod := range pods {
		if v, ok := pod.Annotations[AnnotationTunnelTransport]; ok {
			add("Pod/"+pod.Namespace+"/"+pod.Name, "pod "+pod.Namespace+"/"+pod.Name, v)
		}
	}
	return out
}

// CapturedByZtunnel reports whether ztunnel captures the pod's traffic, so
// that it is reached over HBONE: the pod or, failing a pod label, its
// namespace is labelled istio.io/dataplane-mode=ambient, the pod does not
// opt out with istio.io/dataplane-mode=none, and it is neither a sidecar pod
// nor on the host network (Istio's CNI plugin skips both).
func CapturedByZtunnel(pod *corev1.Pod, ns *corev1.Namespace) bool {
	if pod == nil || pod.Spec.HostNetwork || pod.Annotations[AnnotationSidecarStatus] != "" {
		return false
	}
	if mode, ok := pod.Labels[LabelDataplaneMode]; ok {
		return mode == DataplaneModeAmbient
	}
	return namespaceLabels(ns)[LabelDataplaneMode] == DataplaneModeAmbient
}

func namespaceLabels(ns *corev1.Namespace) map[string]string {
	if ns == nil {
		return nil
	}
	return ns.Labels
}

func podAddresses(pod *corev1.Pod) [][]byte {
	ips := make([]string, 0, len(pod.Status.PodIPs)+1)
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = append(ips, pod.Status.PodIP)
	}
	var out [][]byte
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap().AsSlice())
		}
	}
	return out
}

func network(podLabels, nsLabels map[string]string, cfg Config) string {
	if n := podLabels[LabelNetwork]; n != "" {
		return n
	}
	if n := nsLabels[LabelNetwork]; n != "" {
		return n
	}
	return cfg.Network
}

// podReady: Running with condition Ready=True.
func podReady(pod *corev1.Pod) bool {
	if pod.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// cronJobName matches the name of a Job created by a CronJob.
var cronJobName = regexp.MustCompile(`^(.+)-\d{8,10}$`)

// podWorkloadName derives the name of the pod's controlling workload as
// Istio does: a ReplicaSet created by a Deployment gives the Deployment's
// name, a Job created by a CronJob the CronJob's, another controller its own
// name, and a pod without a controller (or without a generated name) its
// own name.
func podWorkloadName(pod *corev1.Pod) string {
	if pod.GenerateName == "" {
		return pod.Name
	}
	for _, ref := range pod.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		switch hash := pod.Labels[labelPodTemplateHash]; {
		case ref.Kind == "ReplicaSet" && hash != "" && strings.HasSuffix(ref.Name, hash):
			return strings.TrimSuffix(strings.TrimSuffix(ref.Name, hash), "-")
		case ref.Kind == "Job":
			if m := cronJobName.FindStringSubmatch(ref.Name); m != nil {
				return m[1]
			}
		}
		return ref.Name
	}
	return pod.Name
}

// canonicalService returns the canonical service name and revision Istio
// derives from workload labels.
func canonicalService(labels map[string]string, workloadName string) (name, revision string) {
	name, revision = workloadName, defaultCanonicalRevision
	for _, k := range []string{LabelCanonicalName, "app.kubernetes.io/name", "app"} {
		if v := labels[k]; v != "" {
			name = v
			break
		}
	}
	for _, k := range []string{LabelCanonicalRevision, "app.kubernetes.io/version", "version"} {
		if v := labels[k]; v != "" {
			revision = v
			break
		}
	}
	return name, revision
}

// selects reports whether a non-empty service selector selects labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	return subset(selector, labels)
}

func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// workloadServices returns Workload.services: "namespace/hostname" → the
// service's ports with the target port resolved against the pod, for each
// service in the pod's namespace whose selector selects the pod and each
// service whose EndpointSlices target the pod. A named target port is
// looked up in the pod's container ports (by name and protocol); a port
// whose name the pod does not declare is left out, since the pod cannot be
// reached on it.
func workloadServices(pod *corev1.Pod, idx *Index) map[string]*workloadapi.PortList {
	var out map[string]*workloadapi.PortList
	add := func(svc *corev1.Service) {
		key := svc.Namespace + "/" + Hostname(svc.Name, svc.Namespace, idx.cfg.DomainSuffix)
		if _, ok := out[key]; ok {
			return
		}
		pl := &workloadapi.PortList{}
		for _, sp := range svc.Spec.Ports {
			target, ok := resolveTargetPort(sp, pod)
			if !ok {
				continue
			}
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(sp.Port), TargetPort: target})
		}
		if out == nil {
			out = make(map[string]*workloadapi.PortList)
		}
		out[key] = pl
	}
	for _, svc := range idx.svcsByNS[pod.Namespace] {
		if svc.Spec.Type != corev1.ServiceTypeExternalName && selects(svc.Spec.Selector, pod.Labels) {
			add(svc)
		}
	}
	for _, key := range idx.slicesByPod[targetRef{namespace: pod.Namespace, name: pod.Name, uid: pod.UID}] {
		if svc := idx.services[key]; svc != nil && svc.Spec.Type != corev1.ServiceTypeExternalName {
			add(svc)
		}
	}
	return out
}

func resolveTargetPort(sp corev1.ServicePort, pod *corev1.Pod) (uint32, bool) {
	if sp.TargetPort.Type == intstr.Int {
		if sp.TargetPort.IntVal == 0 {
			return uint32(sp.Port), true
		}
		return uint32(sp.TargetPort.IntVal), true
	}
	proto := sp.Protocol
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
		for _, cp := range c.Ports {
			cpProto := cp.Protocol
			if cpProto == "" {
				cpProto = corev1.ProtocolTCP
			}
			if cp.Name == sp.TargetPort.StrVal && cpProto == proto {
				return uint32(cp.ContainerPort), true
			}
		}
	}
	return 0, false
}
