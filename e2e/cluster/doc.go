// Package cluster holds the mesh's user-story tests on the local cluster:
// `ambientctl cluster up` (a real control plane and two simulated nodes run
// by our node agent, with kube-proxy and the cluster DNS), then everything
// a user does, with the same binaries and files a user has — kubectl and
// ambientctl as processes, manifests/ applied with `kubectl apply -k`:
//
//   - the install: ztunnel Ready on every node, istiod-lite Ready, the
//     ambient-cni installer chaining the plugin on each node, real pod IPs;
//   - the sample app in plaintext before ambient mode (seen on the wire in
//     the ratings pod's network namespace), mTLS with the caller's SPIFFE
//     identity in the server side's flows after `ambientctl ambient enable`
//     with no pod restarted, plaintext again after `disable`;
//   - an AuthorizationPolicy from Istio's documentation enforced within
//     seconds, the denial in `ambientctl flows` with both identities;
//   - pods created later (a Deployment scaled up) captured automatically, a
//     deleted pod gone from `ambientctl zc workloads`;
//   - a ztunnel pod deleted with kubectl: its replacement serves every
//     enrolled pod of the node again and a retrying client gets through;
//   - istiod-lite scaled to two replicas: deleting the Lease holder's pod
//     hands the Lease to another, which publishes the root in a new
//     namespace while the mesh keeps its mTLS.
//
// The tests need root, etcd and the Kubernetes binaries of `make deps`;
// without them they skip, unless CI=true, where they fail. The package has
// no non-test code.
package cluster
