// Package localcluster runs the local cluster: a real Kubernetes control
// plane plus N simulated nodes on one Linux machine, as root, without
// containers (DESIGN.md §9.3). `ambientctl cluster up|down|status` drives it.
//
// # Shape
//
//	root netns: etcd (127.0.0.1) ─ kube-apiserver on HostIP:6443 (advertised) ─ controller-manager, scheduler (127.0.0.1)
//	            nodeagent × N (each drives its node's namespace)
//	            <name>-host (HostIP/24) ══ veth ══┐
//	<name>-link netns: br0 ◀──────────────────────┤ the node link
//	<name>-node-i netns: eth0 172.30.0.i/24 ══════┘ + kube-proxy (iptables) + the node's pods (ptp + host-local, ambient-cni)
//
// The apiserver listens on the host link's root-namespace address (HostIP,
// 172.30.0.254 by default), so the node namespaces, hostNetwork pods and
// pods reach it; its advertise address is the same, so the default/
// kubernetes Service's endpoint is reachable through kube-proxy. Pods'
// connections to HostIP are masqueraded to their node's address inside
// the node namespace (the root namespace has no route back to pods). The
// controller-manager allocates each Node a /24 from the pod CIDR
// (10.244.0.0/16); services come from 10.96.0.0/16; the node agents route
// peer pod CIDRs via the nodes' addresses (--peer-routes). The root
// namespace gets `unreachable` routes (protocol GuardProto) for the pod,
// service and node CIDRs, so nothing the cluster sends can leave by the
// machine's default route; the host link's connected /24 is the only way in.
//
// # Cluster DNS and host paths
//
// The node agents get --cluster-dns at the service CIDR's address + 10
// (Plan.ClusterDNS, 10.96.0.10), and Up ends by applying manifests/cluster/
// (clusterdns as Service kube-system/kube-dns at that address; image
// ambient/clusterdns → <BinDir>/clusterdns) with the cached kubectl
// (apply -k, server-side) and waiting for a ready kube-dns endpoint, so
// pods resolve <svc>.<ns>.svc.cluster.local. Each node agent gets
// --host-path-root <state-dir>/nodes/<node>/root: the nodes share the
// machine's file system, so each node's hostPath volumes live under its
// own root (the netns paths excepted). The node's CNI configuration and
// plugin directories are root/etc/cni/net.d and root/opt/cni/bin
// (CNIConfDir, CNIPluginDir): the node agent writes the primary network
// (ptp + host-local) there and uses that file for each new pod, and the
// mesh's ambient-cni-node DaemonSet, once installed, copies ambient-cni
// into root/opt/cni/bin and chains it into that file, pointing it at
// ztunnel's socket and state directory under root/var/run/ambient
// (ZtunnelSocket, CNIStateDir) — the same steps as on a real node.
//
// # State directory
//
//	<state-dir>/resources.json    every process (pid + start time), namespace, root link, route and file, recorded before it is created
//	<state-dir>/kubeconfig        admin kubeconfig (server https://HostIP:6443)
//	<state-dir>/pki/, tokens.csv  CA, serving certificate, service-account keys, admin token
//	<state-dir>/logs/<component>.log
//	<state-dir>/etcd/             etcd's data
//	<state-dir>/nodes/<node>/     the node agent's state dir (pods, logs), kube-proxy's config
//	<state-dir>/nodes/<node>/root/  the node's hostPath volumes: etc/cni/net.d, opt/cni/bin, var/run/ambient (ztunnel's CNI socket and state)
//
// Down reads resources.json, so it removes everything even after a crash of
// the processes or of ambientctl: the node agents get SIGTERM (they stop
// their pods) then `nodeagent cleanup`, every recorded process group is
// killed, namespaces (which take their links, iptables rules and pods'
// veths with them), root links and guard routes are deleted, then the
// recorded files and the state directory. Up on a dirty state directory
// runs Down first. ambientctl's cluster-state file (ambientctl/ztunnels)
// is written so `ambientctl zc` and `flows` reach the nodes' ztunnels.
package localcluster
