package translate

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// Service translates a Kubernetes Service into the workload API, reading
// its namespace and waypoints from idx. It returns nil for an ExternalName
// service, which has no VIP or endpoints.
//
// Addresses are the ClusterIPs (none for a headless service) on the
// configured network. A port's target_port is the numeric targetPort (the
// port itself when unset); a named targetPort gives 0, and ztunnel resolves
// it per workload from Workload.services.
//
// Service.waypoint is the waypoint the service binds to for service
// traffic (see [Index]); a waypoint's own Service (labelled
// gateway.istio.io/managed=istio.io-mesh-controller) has none.
func Service(svc *corev1.Service, idx *Index) *workloadapi.Service {
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	cfg := idx.cfg
	out := &workloadapi.Service{
		Name:       svc.Name,
		Namespace:  svc.Namespace,
		Hostname:   Hostname(svc.Name, svc.Namespace, cfg.DomainSuffix),
		IpFamilies: ipFamilies(svc.Spec.IPFamilies),
	}
	if svc.Labels[LabelGatewayManaged] != ManagedByMeshController {
		if wp := idx.waypointFor(svc.Labels, svc.Namespace, WaypointForService); wp != nil {
			out.Waypoint = cloneOrNil(wp.address)
		}
	}
	netw := serviceNetwork(idx.namespace(svc.Namespace), cfg)
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range ips {
		a, err := netip.ParseAddr(ip) // "None" (headless) does not parse
		if err != nil {
			continue
		}
		out.Addresses = append(out.Addresses, &workloadapi.NetworkAddress{Network: netw, Address: a.Unmap().AsSlice()})
	}
	for _, sp := range svc.Spec.Ports {
		p := &workloadapi.Port{ServicePort: uint32(sp.Port), AppProtocol: appProtocol(sp)}
		if sp.TargetPort.Type == intstr.Int {
			p.TargetPort = uint32(sp.TargetPort.IntVal)
			if p.TargetPort == 0 {
				p.TargetPort = uint32(sp.Port)
			}
		}
		out.Ports = append(out.Ports, p)
	}
	return out
}

// serviceNetwork is the network of the VIPs of services in ns: its
// topology.istio.io/network label, else the configured network.
func serviceNetwork(ns *corev1.Namespace, cfg Config) string {
	if n := namespaceLabels(ns)[LabelNetwork]; n != "" {
		return n
	}
	return cfg.Network
}

func ipFamilies(fams []corev1.IPFamily) workloadapi.IPFamilies {
	var v4, v6 bool
	for _, f := range fams {
		switch f {
		case corev1.IPv4Protocol:
			v4 = true
		case corev1.IPv6Protocol:
			v6 = true
		}
	}
	switch {
	case v4 && v6:
		return workloadapi.IPFamilies_DUAL
	case v4:
		return workloadapi.IPFamilies_IPV4_ONLY
	case v6:
		return workloadapi.IPFamilies_IPV6_ONLY
	}
	return workloadapi.IPFamilies_AUTOMATIC
}

// appProtocol infers a port's protocol as Istio's protocol selection does
// (https://istio.io/latest/docs/ops/configuration/traffic-management/protocol-selection/):
// appProtocol first, else the port name, "<protocol>" or
// "<protocol>-<suffix>" ("http-web", "grpc", "tcp-db"). UNKNOWN leaves the
// waypoint to detect HTTP from the client's first bytes, which a
// server-first protocol (MySQL, SMTP) never sends: such ports need tcp (or
// mysql, mongo, redis) declared.
func appProtocol(sp corev1.ServicePort) workloadapi.AppProtocol {
	if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
		return workloadapi.AppProtocol_UNKNOWN
	}
	if sp.AppProtocol != nil {
		return declaredProtocol(strings.ToLower(*sp.AppProtocol))
	}
	prefix, _, _ := strings.Cut(strings.ToLower(sp.Name), "-")
	if prefix == "grpc" && strings.HasPrefix(strings.ToLower(sp.Name), "grpc-web") {
		prefix = "grpc-web"
	}
	return declaredProtocol(prefix)
}

// declaredProtocol maps one of Istio's protocol names, or a Kubernetes
// appProtocol of the kubernetes.io prefix, to the workload API's.
func declaredProtocol(name string) workloadapi.AppProtocol {
	switch name {
	case "http", "grpc-web", "kubernetes.io/ws":
		return workloadapi.AppProtocol_HTTP11
	case "http2", "kubernetes.io/h2c":
		return workloadapi.AppProtocol_HTTP2
	case "grpc":
		return workloadapi.AppProtocol_GRPC
	case "tcp", "mongo", "mysql", "redis":
		return workloadapi.AppProtocol_TCP
	case "tls", "https", "kubernetes.io/wss":
		return workloadapi.AppProtocol_TLS
	}
	return workloadapi.AppProtocol_UNKNOWN
}
