// Package xdsclient is the proxies' Delta ADS client (ztunnel's and the
// waypoint's): it subscribes to the workload API served by istiod-lite
// (package istiod-lite/xds) and feeds every response into a [state.Store];
// further types (the waypoint's routes and policies) go to a [Sink] each.
//
// # Wire format
//
// One DeltaAggregatedResources stream carries two wildcard subscriptions:
//
//   - [TypeAddress], type.googleapis.com/istio.workload.Address. Each
//     resource is an Address wrapping a Workload, named by its uid, or a
//     Service, named "namespace/hostname" — [state.WorkloadKey] and
//     [state.ServiceKey]. Workloads and services share this one name space:
//     a removed name is removed from both kinds, and an upsert of one kind
//     removes a same-named resource of the other.
//   - [TypeAuthorization], type.googleapis.com/istio.security.Authorization,
//     named "namespace/name" ([state.PolicyKey]).
//
// A response whose resource name does not match its content is rejected.
//
// Besides these, [Config.Extra] subscribes (wildcard, same stream) to more
// types, each delivered to its [Sink] as the upserted resources by name
// (still wrapped in Any; a resource of another type rejects the response)
// and the removed names. The Sink decodes and validates them; its error
// NACKs the response, and it must then keep what it had.//
// # Resume
//
// On every (re)connect the client sends, as initial_resource_versions, every
// resource the Store holds with its version computed like the server does
// ([Version]: the first 16 hex digits of the SHA-256 of the deterministic
// encoding of the Address or Authorization), so a restarted client that kept
// its Store receives only what changed. The Store is treated as owned by
// this client: anything in it that the server does not have is removed.
// Each Sink reports its own resources' versions ([Sink.Versions], computed
// with the same [Version]).
//
// # Lifecycle
//
// [New] then [Client.Run]: Run keeps a stream open until its context ends,
// reconnecting with exponential backoff and full jitter. While disconnected
// the Store keeps the last configuration. Each response is applied with one
// [state.Store.Apply] and ACKed; if the Store rejects it, the response is
// NACKed with the error as error_detail and the Store is unchanged.
// [Client.Synced] turns true once one response of each subscribed type
// (the Store's and every Extra) has been applied, and stays true across
// reconnects.
package xdsclient
