// Package controlplane benchmarks istiod-lite at scale: a real
// kube-apiserver (package internal/kubetest) holding 5,000 ambient pods
// behind 50 services on 2 nodes, the built cmd/istiod-lite binary as its own
// process, and one ztunnel Delta ADS client (package internal/xdsclient) per
// node in the benchmark process.
//
// It measures the initial sync (istiod-lite start to /ready, client start to
// a full store), the time for one pod change to reach every client, the
// istiod-lite process's CPU (user+system from /proc) and RSS, and the bytes
// pushed per change (gRPC wire bytes counted by a stats.Handler on each
// client). The package holds only the benchmark:
//
//	go test -run '^$' -bench . -benchtime 1x -timeout 30m ./bench/controlplane/
//
// Results are recorded in docs/benchmarks.md.
package controlplane
