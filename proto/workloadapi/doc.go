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
// up, where Istio will not collide with them; numbers Istio has retired stay
// reserved.
//
// The *.pb.go files are generated: edit workload.proto and run `make gen`.
package workloadapi
