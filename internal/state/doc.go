// Package state is ztunnel's in-memory view of the mesh: the workloads,
// services and L4 authorization policies of the workload API
// (proto/workloadapi), indexed for the data path.
//
// It is the single source of truth that every config source feeds: the
// local YAML file (package ztunnel/localconfig) and the xDS client.
//
// # Model
//
// A [Store] holds the current [View], an immutable, fully indexed snapshot of
// the mesh, behind an atomic pointer. Writers replace the whole view:
//
//   - [Store.Replace] installs a full [Snapshot] (local config, state of the
//     world);
//   - [Store.Apply] applies an [Update], the xDS delta model: upserts and
//     removals keyed by resource name — a Workload by its uid, a Service by
//     "namespace/hostname", an Authorization by "namespace/name" (see
//     [WorkloadKey], [ServiceKey], [PolicyKey]).
//
// Each write builds a new View copy-on-write (the name maps are cloned, the
// indexes rebuilt) and publishes it with one atomic store, so readers see
// the old state or the new one, never half of each, and the data path's
// lookups take no lock. Writers are serialized by a mutex; a write that fails
// validation changes nothing, so the xDS client can NACK it.
//
// Protos handed to the Store become its own: callers must not modify them
// afterwards, and readers must never modify the protos a View returns.
//
// # Lookups
//
// Every lookup is a pure method of a [View]: workload by uid or (network, IP),
// the workloads of a node, service by name or VIP, a service's endpoints (the
// workloads whose Workload.services names it), [View.Resolve] (service VIP,
// workload IP or outside the mesh), [View.PickEndpoint] and
// [View.PoliciesFor]. IPv4-mapped IPv6 addresses are unmapped before any
// lookup, so a dual-stack socket's ::ffff:10.0.0.1 finds 10.0.0.1.
//
// # Notifications
//
// [Store.Subscribe] returns a buffered-1 channel that receives a coalesced
// signal after every write; the writer never blocks on a slow subscriber.
// Subscribers read [Store.Current] when signalled.
package state
