// Package procbench measures the waypoint as it runs in production: the
// cmd/waypoint binary in its own pod, between the client's and the
// server's ztunnels (cmd/ztunnel processes), in real network namespaces
// (internal/testenv), against nginx doing the same job. Run as root (or
// `make bench-waypoint`):
//
//	go test -run '^$' -bench . -benchtime 1x -timeout 30m ./waypoint/procbench/
//
// BenchmarkWaypoint_MeshVsNginx compares, over one topology, HTTP/1.1 from
// the client pod to the server pod with no proxy, through the mesh (client
// ztunnel → waypoint → server ztunnel) and through three nginx processes
// in the same places (stream TLS origination → http reverse proxy → stream
// TLS termination): latency at fixed rates, the middle proxy's CPU and
// memory, and the maximum request rate. The method is in
// docs/benchmarks.md. The pure parts (knobs, the shared mesh config, the
// search, summaries, the table) are tested by `go test` without root.
package procbench
