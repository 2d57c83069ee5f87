// Command ambient-cni is a chained CNI plugin that hands each Kubernetes
// pod's network namespace to the node's ztunnel.
//
// It runs after the plugin that creates the pod's interface and addresses
// (it needs prevResult) and changes nothing itself: on ADD it records the
// pod in the state directory (stateDir, one file per pod uid), opens the
// pod's network namespace (CNI_NETNS) and sends it to ztunnel over its unix
// socket (ztunnelSocket) with SCM_RIGHTS (see internal/cniproto), then
// prints prevResult unchanged. If ztunnel is not running the ADD still
// succeeds: ztunnel finds the pod in the state directory when it starts. A
// refusal from a running ztunnel fails the ADD. DEL removes the state file
// and tells ztunnel (best effort) and always succeeds for unknown pods.
// CHECK succeeds when the pod's state file exists.
//
// The pod's identity comes from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME,
// K8S_POD_UID, as kubelet passes them). A sandbox without them is not a
// Kubernetes pod and is passed through untouched.
//
// Diagnostics go to stderr, which container runtimes log.
package main

import (
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

func main() {
	p := &plugin{log: slog.New(slog.NewTextHandler(os.Stderr, nil)).With("plugin", "ambient-cni")}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: p.cmdAdd, Del: p.cmdDel, Check: p.cmdCheck},
		version.All, "ambient-cni: hands pods' network namespaces to ztunnel")
}
