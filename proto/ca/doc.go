// Package capb holds the Go types and gRPC stubs of the certificate-signing
// API that istiod-lite serves on port 15012.
//
// # Wire format
//
// gRPC method /istio.v1.auth.IstioCertificateService/CreateCertificate takes
// an IstioCertificateRequest (a PEM CSR, a requested lifetime in seconds and
// optional metadata) and returns an IstioCertificateResponse (the PEM chain,
// leaf first). The caller authenticates with a bearer token in the call
// metadata or with its client certificate.
//
// # Compatibility promise
//
// Messages, field numbers and the service and method names equal those of
// Istio's public ca.proto (checked by tools/wirecompat), so Istio's ztunnel
// can obtain certificates from istiod-lite and ours from istiod.
//
// The *.pb.go files are generated: edit ca.proto and run `make gen`.
package capb
