// Package workloadapi holds the Go types of the workload API, the resources
// istiod-lite pushes to every ztunnel over delta ADS.
//
// # Wire format
//
// The messages are protocol buffers in proto package istio.workload, defined
// in workload.proto beside this file. The xDS resource type is
// type.googleapis.com/istio.workload.Address; each Address carries one
// Workload (named by its uid) or one Service (named "namespace/hostname").
//
// # Compatibility promise
//
// The definitions are our own, but on the wire they are Istio's: the proto
// package, message, field and enum names, field numbers, oneofs and enum
// values equal those of Istio's public workload API, so Istio's ztunnel and
// ours can each read what the other's control plane sends. The test in
// tools/wirecompat compiles Istio's published .proto files next to ours and
// fails on any difference. Fields we add beyond Istio take numbers from 1000
// up, where Istio will not collide with them, and their types live in our
// own proto package ambient.workload.v1 (extensions.proto), never in
// istio.workload; numbers Istio has retired stay reserved. An Istio ztunnel
// skips our fields; their zero values mean "as Istio does it".
//
// Extensions:
//
//	Workload.tunnel_transport = 1000  TunnelTransport: H2 (default, HBONE
//	                                  over HTTP/2 on TCP) or QUIC (HBONE
//	                                  over HTTP/3 on UDP 15008, falling
//	                                  back to H2)
//
// The *.pb.go files are generated: edit the .proto files and run `make gen`.
package workloadapi
