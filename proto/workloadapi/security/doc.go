// Package security holds the Go types of the L4 authorization resource that
// istiod-lite pushes to every ztunnel, next to the workload API.
//
// # Wire format
//
// The messages are protocol buffers in proto package istio.security, defined
// in authorization.proto beside this file; the xDS resource type is
// type.googleapis.com/istio.security.Authorization, named "namespace/name".
// A policy matches when any of its groups matches; a group, when all of its
// rules do; a rule, when any of its matches does.
//
// # Compatibility promise
//
// Names, field numbers, oneofs and enum values equal those of Istio's public
// definition (checked by tools/wirecompat), so Istio's ztunnel can enforce
// what we send. Our own additions, if any, use field numbers from 1000 up.
//
// The *.pb.go files are generated: edit authorization.proto and run `make gen`.
package security
