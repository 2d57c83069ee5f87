// Package connectudp is the wire codec for proxying UDP in HTTP
// (CONNECT-UDP, RFC 9298) over a byte stream: QUIC variable-length
// integers, the default URI template path, capsules (RFC 9297 §3.2) and
// HTTP Datagrams carried in DATAGRAM capsules. It decides nothing about
// sockets or policy; Session is the thin datagram-oriented shell over a
// stream that the HBONE tunnel (package hbone) hands out.
//
// # Wire format
//
// A CONNECT-UDP request names its target in its path, using the RFC 9298
// default template with a literal IP address (the mesh never resolves
// names here):
//
//	/.well-known/masque/udp/{host}/{port}/
//	/.well-known/masque/udp/10.0.0.1/53/
//	/.well-known/masque/udp/fd00%3A%3A1/53/      (IPv6: ':' as %3A)
//
// Once the tunnel is open, each direction of the stream is a sequence of
// capsules:
//
//	Capsule {
//	  Capsule Type (i),
//	  Capsule Length (i),
//	  Capsule Value (..),
//	}
//
// where (i) is a QUIC variable-length integer (RFC 9000 §16: the two top
// bits of the first byte give the length, 1, 2, 4 or 8 bytes, the rest is
// the value, big-endian). One UDP payload travels as one DATAGRAM capsule
// (type 0x00) whose value is an HTTP Datagram payload (RFC 9298 §5):
//
//	UDP Proxying HTTP Datagram Payload {
//	  Context ID (i),        0 for UDP payloads
//	  UDP Proxying Payload (..),
//	}
//
// We always send Context ID 0 (one byte) and minimal varints. A receiver
// accepts any varint encoding, skips capsules of other types (RFC 9297
// §3.2), drops datagrams with a non-zero Context ID (RFC 9298 §5), and
// refuses capsules whose value is over its bound (64 KiB plus the largest
// Context ID) without buffering them.
package connectudp
