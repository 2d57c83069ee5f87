// Package xdsclient is ztunnel's Delta ADS client: it subscribes to the
// workload API served by istiod-lite (package istiod-lite/xds) and feeds
// every response into a [state.Store].
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
// # Resume
//
// On every (re)connect the client sends, as initial_resource_versions, every
// resource the Store holds with its version computed like the server does
// ([Version]: the first 16 hex digits of the SHA-256 of the deterministic
// encoding of the Address or Authorization), so a restarted client that kept
// its Store receives only what changed. The Store is treated as owned by
// this client: anything in it that the server does not have is removed.
//
// # Lifecycle
//
// [New] then [Client.Run]: Run keeps a stream open until its context ends,
// reconnecting with exponential backoff and full jitter. While disconnected
// the Store keeps the last configuration. Each response is applied with one
// [state.Store.Apply] and ACKed; if the Store rejects it, the response is
// NACKed with the error as error_detail and the Store is unchanged.
// [Client.Synced] turns true once one response of each type has been
// applied, and stays true across reconnects.
package xdsclient
