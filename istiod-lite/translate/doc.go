// Package translate turns Kubernetes objects into the workload API that
// istiod-lite serves to ztunnel (DESIGN §6, §7). Every function is pure: it
// reads typed objects (k8s.io/api Pod, Namespace, Service, Node,
// EndpointSlice, Gateway API Gateway, GatewayClass, HTTPRoute, GRPCRoute and
// ReferenceGrant, and this package's AuthorizationPolicy and
// PeerAuthentication, which decode security.istio.io/v1 manifests
// unchanged, see [FromUnstructured]) and
// returns protos of proto/workloadapi, shaped as Istio's control plane
// shapes them (pilot/pkg/serviceregistry/kube/controller/ambient).
//
//   - [NewIndex]: the cluster-wide lookups a pod's or service's
//     translation makes ([Cluster] → [Index]): namespaces, services,
//     EndpointSlices by the pods they target, node localities, waypoints,
//     ReferenceGrants by namespace.
//   - [Workload]: a pod → istio.workload.Workload, uid
//     "<cluster>//Pod/<namespace>/<name>", HBONE when the pod is captured
//     ([CapturedByZtunnel]), Workload.services keyed "namespace/hostname"
//     (services selecting the pod, and services whose EndpointSlices target
//     it) with target ports resolved against the pod, locality from its
//     node ([NodeLocality]), waypoint for workload traffic, and, for a
//     captured pod or a waypoint's, our extension tunnel_transport
//     ([TunnelTransport]): the
//     ambientmesh.io/tunnel-transport annotation (quic or h2) of the pod,
//     else of its namespace, else Config.DefaultTunnelTransport; an
//     invalid value means h2 ([InvalidTunnelTransports] lists them).
//   - [Service]: a Service → istio.workload.Service, waypoint for service
//     traffic, each port with the protocol it declares as Istio's protocol
//     selection reads it (appProtocol, else the port name's
//     "<protocol>[-suffix]": http, http2, grpc, grpc-web, tcp, tls, https,
//     mysql, mongo, redis; else UNKNOWN, left to detection).
//   - [Resilience]: DestinationRules (networking.istio.io) and
//     LocalTrafficPolicies (policy.ambientmesh.io), decoded by
//     [FromUnstructured], → one waypointapi.ServiceResilience per Service
//     they apply to, with Istio's host matching, precedence and defaults,
//     and an Accepted condition per rule and policy.
//   - Waypoints, as Istio binds them: istio.io/use-waypoint (and
//     istio.io/use-waypoint-namespace) on the object, else on its
//     namespace, names a Gateway; the Gateway is a waypoint once it has an
//     address (status Hostname, else IPAddress; for class istio-waypoint
//     without status, the ClusterIP of its Service); istio.io/waypoint-for
//     on the Gateway or its GatewayClass (service by default, workload, all,
//     none) says which of services and workloads bind; the HBONE listener's
//     allowedRoutes say which namespaces may. A name that resolves to no
//     waypoint binds to nothing.
//   - [Authorization]: an AuthorizationPolicy → istio.security.Authorization
//     plus a ZtunnelAccepted [Condition]. ztunnel enforces L4 only: an ALLOW
//     rule with L7 fields is omitted (never matches), a DENY rule with L7
//     fields is enforced on its L4 part; both only ever restrict more.
//   - [PeerAuthentications], [ConvertPeerAuthentication]: STRICT →
//     [authz.StrictPolicy] in the root namespace; port-level mTLS → a
//     converted_peer_authentication_<name> DENY policy.
//   - [PolicyNames], [PeerAuthenticationNames]: the
//     Workload.authorization_policies keys of a pod.
//   - [HTTPRoutes]: HTTPRoutes attached to Services (GAMMA) or to a
//     waypoint Gateway → the waypoint's proto/waypointapi ServiceRoutes,
//     one per parent, port and consumer namespace, matches in Gateway API
//     precedence, plus each route's per-parent status conditions; a
//     backendRef to another namespace resolves only when a Gateway API
//     ReferenceGrant there permits it ([ReferencePermitted]). GRPCRoutes
//     go the same way as the HTTPRoutes [GRPCRouteAsHTTP] makes of them.
//
// The wire semantics assumed are those of internal/authz: a group with no
// rules matches everything, an empty match is skipped. So a clause made
// unconditional (an empty `to` operation, a DENY `to` with only methods) is
// left out of its group rather than sent as an empty match.
package translate
