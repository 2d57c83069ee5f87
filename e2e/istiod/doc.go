// Package istiod holds the mesh's end-to-end tests with its real control
// plane: a Kubernetes apiserver (internal/kubetest), istiod-lite as a
// process in the root network namespace, and one cmd/ztunnel process per
// simulated node (internal/testenv, with a host link so that the nodes
// reach istiod-lite). Configuration and pod certificates reach the ztunnels
// only through istiod-lite; the apps in the pods are plain TCP echo servers
// and clients that know nothing about the mesh.
//
// The tests need root and the Kubernetes binaries of `make deps`; without
// them they skip, unless CI=true, where they fail. The package has no
// non-test code.
package istiod
