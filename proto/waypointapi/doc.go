// Package waypointapi holds the Go types of the waypoint's L7 configuration,
// which istiod-lite sends to waypoints on the same delta ADS stream as the
// workload API (DESIGN §6).
//
// # Wire format
//
// Protocol buffers in proto package ambient.waypoint.v1, defined in
// routes.proto beside this file. The xDS resource type is
// type.googleapis.com/ambient.waypoint.v1.ServiceRoutes: one routing table
// per parent (a Service, or the waypoint Gateway), port and consumer
// namespace, named by [ResourceName]. A table holds Gateway API HTTPRoute
// rules already resolved and merged in the spec's precedence order, so the
// waypoint (package waypoint/route) only compiles and walks it.
//
// The resource type type.googleapis.com/ambient.waypoint.v1.ServiceResilience
// (resilience.proto) is one destination Service's resilience policy, named
// by its service key ([ServiceResilience.Name]): Istio's DestinationRule
// (load balancing, connection pool limits, outlier detection, subsets)
// resolved with Istio's defaults filled in, and our LocalTrafficPolicy (local
// rate limit, fault injection); the waypoint runs it with package
// waypoint/resilience.
//
// This API is ours; nothing outside the project reads it. Field numbers are
// still never reused: retire a field with `reserved`.
//
// The *.pb.go files are generated: edit the .proto files and run `make gen`.
package waypointapi
