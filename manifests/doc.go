// Package manifests holds the install YAML of the mesh for a real cluster,
// a kustomize tree applied with `kubectl apply -k manifests/` (see
// README.md): the CRDs of crds/, istiod-lite's RBAC, Deployment and
// Service, the ztunnel DaemonSet, the ambient-cni node agent, and, applied
// separately, the sample application of samples/shop.
//
// The package has no Go code of its own; its tests render the
// kustomizations with kubectl, check the objects against each other and
// against the flags the binaries accept, apply them to a real apiserver
// and run istiod-lite under its own ServiceAccount.
package manifests
