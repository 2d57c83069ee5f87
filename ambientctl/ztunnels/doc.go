// Package ztunnels reaches every node's ztunnel admin port (127.0.0.1:15000
// inside the node's network namespace: ztunnel pods are hostNetwork) and
// reads its /config_dump and /debug/flows.
//
// A Dialer opens a connection to one ztunnel's admin port. Two exist:
//
//   - PortForward, for real clusters: a port-forward to the ztunnel pod
//     through the API server (SPDY, as kubectl port-forward and istioctl do).
//   - Netns, for the local cluster: it enters the node's network namespace
//     by path and connects to 127.0.0.1:15000 there (needs root).
//
// # The local cluster's state file
//
// The local cluster (`ambientctl cluster up`) describes itself in a JSON
// file, by default $XDG_STATE_HOME/ambient/cluster.json
// (~/.local/state/ambient/cluster.json), or the --cluster-state flag, or
// $AMBIENT_CLUSTER_STATE:
//
//	{
//	  "name": "ambient-local",
//	  "server": "https://127.0.0.1:6443",
//	  "kubeconfig": "/root/.local/state/ambient/kubeconfig",
//	  "ztunnelAdminAddr": "127.0.0.1:15000",
//	  "nodes": [
//	    {"name": "node-1", "netns": "/run/netns/ambient-node-1", "ip": "172.30.0.1"},
//	    {"name": "node-2", "netns": "/run/netns/ambient-node-2", "ip": "172.30.0.2"}
//	  ]
//	}
//
// name, server and nodes (name, netns) are required; kubeconfig, ip and
// ztunnelAdminAddr (default 127.0.0.1:15000) are optional. ambientctl uses
// the Netns dialer when the current kubeconfig context's API server URL
// equals server (or --cluster-state is given explicitly), and PortForward
// otherwise. Node names are the Kubernetes Node names.
package ztunnels
