// Package istiod holds the mesh's end-to-end tests with its real control
// plane: a Kubernetes apiserver (internal/kubetest), istiod-lite as a
// process in the root network namespace, and one cmd/ztunnel process per
// simulated node (internal/testenv, with a host link so that the nodes
// reach istiod-lite). Configuration and pod certificates reach the ztunnels
// only through istiod-lite; the apps in the pods are plain TCP echo servers
// and clients that know nothing about the mesh, and every change is made
// through the Kubernetes API as a user would (kubectl).
//
// istiod_test.go covers the control plane itself: pod-to-pod and
// pod-to-VIP traffic with the caller's identity in the flow records,
// certificates chaining to istiod-lite's root, an ALLOW policy by
// principal, and istiod-lite killed and restarted (exact resync).
//
// ztunnel_test.go runs the scenarios of package ztunnel's in-process tests
// against that control plane, on one shared cluster: 200 concurrent
// connections with correct bytes; enrolment and opt-out of running pods by
// the namespace label and the pod label istio.io/dataplane-mode=none (the
// pod's nftables table inet ambient comes and goes, and a capture on the
// node link shows plaintext, then HBONE only); a STRICT PeerAuthentication
// refusing a client outside the mesh (the node itself) while meshed pods
// connect; a DENY closing an idle, parked connection and beating an ALLOW;
// bad tunnels (a CONNECT to another pod's IP is 400, a foreign CA fails the
// handshake); and a ztunnel restarted with SIGTERM, its pods keeping their
// capture meanwhile (a client outside the mesh is refused: fail closed),
// with a retrying client getting through and config and certificates from
// istiod-lite again.
//
// The tests need root and the Kubernetes binaries of `make deps`; without
// them they skip, unless CI=true, where they fail. The package has no
// non-test code.
package istiod
