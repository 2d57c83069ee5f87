// Package controller is istiod-lite's Kubernetes watcher: it keeps an
// [xds.Cache] equal to the translation (package istiod-lite/translate) of
// the cluster's Namespaces, Pods, Services, Nodes, EndpointSlices, Gateway
// API Gateways, GatewayClasses, HTTPRoutes and GRPCRoutes (the waypoints'
// L7 routes) and
// ReferenceGrants (which permit the routes' cross-namespace backendRefs;
// v1, or v1beta1 where older CRDs serve only that), and security.istio.io
// AuthorizationPolicies and PeerAuthentications, networking.istio.io
// DestinationRules and policy.ambientmesh.io LocalTrafficPolicies (each
// watched only when its CRD is served). It also watches ServiceAccounts
// (for workload identity), which translation does not read yet.
//
// The controller is a thin shell around pure functions: client-go informers
// (a SharedInformerFactory for the core types, the gateway-api module's
// typed one for the Gateway API, a dynamic one for the Istio CRDs), their
// objects slimmed by a transform to what translation reads, only signal
// that something changed (a Node's or EndpointSlice's update that changes
// nothing translation reads is ignored); after a short quiet period
// ([Config.Debounce]) the controller lists every object from the informer
// caches, recomputes the full set of Address and Authorization resources
// with [Compute], and hands the cache the upserts that differ from the
// previous set and the removals of names that disappeared. A full
// recomputation keeps the logic obviously correct (no per-event
// bookkeeping); it is linear in the number of pods and policies.
//
// When the security.istio.io/v1 CRDs are not installed the controller logs
// a warning and serves workloads and services without policies; when the
// gateway.networking.k8s.io/v1 CRDs are not, without waypoints; when only
// the ReferenceGrant CRD is missing, without grants (every cross-namespace
// backendRef is RefNotPermitted). Install
// manifests/crds (kubectl apply --server-side) and restart to enable them.
//
// Policy status: after each recomputation the controller writes the
// ZtunnelAccepted condition that [translate.Authorization] reports to each
// AuthorizationPolicy's status.conditions (status subresource), only when it
// changed. A policy that does not decode gets ZtunnelAccepted=False with
// reason InvalidValue and is not served. PeerAuthentications get no status:
// Istio's ambient control plane writes none for them either (its status
// queue covers Services, ServiceEntries and AuthorizationPolicies).
package controller
