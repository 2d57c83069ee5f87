// Package xds is istiod-lite's Delta ADS server: it pushes the workload API
// (package proto/workloadapi) to every ztunnel over gRPC.
//
// # Wire format
//
// The service is envoy.service.discovery.v3.AggregatedDiscoveryService, and
// only its incremental method, DeltaAggregatedResources, is implemented
// (StreamAggregatedResources returns Unimplemented). Five resource types are
// served on one stream:
//
//   - [TypeAddress], type.googleapis.com/istio.workload.Address: a Workload or
//     a Service wrapped in an Address. A Workload is named by its uid, a
//     Service by "namespace/hostname" ([AddressName]). Both kinds share one
//     name space, so a removed name denotes whichever kind held it.
//   - [TypeAuthorization], type.googleapis.com/istio.security.Authorization,
//     named "namespace/name" ([AuthorizationName]).
//   - [TypeServiceRoutes], type.googleapis.com/ambient.waypoint.v1.ServiceRoutes:
//     a waypoint's routing table for one parent and port (package
//     proto/waypointapi, named by its ResourceName). ztunnels never
//     subscribe to it; waypoints do.
//   - [TypeWaypointPolicy], type.googleapis.com/ambient.waypoint.v1.AuthorizationPolicy:
//     an AuthorizationPolicy with targetRefs, named "namespace/name", for
//     waypoints.
//   - [TypeServiceResilience], type.googleapis.com/ambient.waypoint.v1.ServiceResilience:
//     a Service's resilience policy (DestinationRule resolved with Istio's
//     defaults, LocalTrafficPolicy), named by the service key
//     "namespace/hostname", for waypoints.
//
// These are the same keys as internal/state's WorkloadKey, ServiceKey and
// PolicyKey, which the ztunnel client feeds.
//
// A resource's version is [Version]: the first 16 hex digits of the SHA-256
// of its deterministic protobuf encoding. A client that holds resources can
// therefore compute their versions itself and send them as
// initial_resource_versions; a version computed differently only costs a
// resend, never a wrong state.
//
// # Stream protocol
//
// The first request of each type subscribes: an empty resource_names_subscribe
// or "*" is a wildcard; explicit names are honoured too. The server answers
// every first request of a type with exactly one response carrying the
// resources whose version differs from initial_resource_versions and, in
// removed_resources, the names the client claims but the server does not
// have — possibly an empty response, so a client knows it is in sync.
// Afterwards it pushes deltas (changed resources plus removed_resources).
//
// Each type has at most one response in flight: the next one for that type is
// sent after the client answers the previous nonce. An ACK (no error_detail)
// and a NACK (error_detail set) both release the type; a NACK is logged and
// counted, and the stream stays up (the server does not resend the rejected
// content, as Istio does not).
//
// # Bounds
//
// Changes are debounced per stream: a push goes out [Config.DebounceAfter]
// after the last change, or [Config.DebounceMax] after the first, whichever
// comes first. The names pending for a stream are bounded by
// [Config.MaxPending], and a response must be answered within
// [Config.AckTimeout]; a stream that exceeds either is closed with
// ResourceExhausted or DeadlineExceeded. The server never blocks on a slow
// client: the [Cache] only marks names dirty, and responses are written by a
// per-stream sender goroutine.
package xds
