// Package hbone3 implements HBONE/3: the HBONE tunnel of package hbone —
// one CONNECT stream per proxied TCP connection between SPIFFE identities —
// carried over HTTP/3 (RFC 9114) on QUIC instead of HTTP/2 on TCP, with
// quic-go's http3 package.
//
// # Wire format
//
// A tunnel connection is QUIC v1 on UDP 15008 (beside the TCP listener),
// TLS 1.3 with ALPN "h3" and the same SVIDs and verification as HTTP/2:
// the server checks the client's trust domain, the client checks the
// server's exact SPIFFE ID (identity.ServerConfig / identity.ClientConfig;
// both ends here replace the configuration's ALPN with "h3"). 0-RTT is off:
// a replayed CONNECT would open a second upstream connection. Transport
// parameters: at most 100 concurrent bidirectional streams per connection
// (as HBONE's SETTINGS_MAX_CONCURRENT_STREAMS), 4 MiB initial stream window
// growing to 16 MiB, 16 MiB connection window growing to 64 MiB.
//
// Every request stream is a CONNECT (RFC 9114 §4.4): exactly :method =
// CONNECT and :authority = the original destination "ip:port"; regular
// fields baggage, forwarded, traceparent. The server rebuilds the field
// list and validates it with hbone.ParseRequest, so the authority rules are
// the same, and answers as hbone does:
//
//	200  tunnel open; DATA frames carry the connection's bytes both ways
//	400  not CONNECT, :authority is not a literal ip:port, or (Authorize or
//	     Dial wrapping hbone.ErrBadDestination) not a destination served here
//	401  refused by Authorize
//	503  the upstream connection failed
//
// The FIN of a QUIC stream direction is a TCP half-close of that direction;
// RESET_STREAM / STOP_SENDING (H3_REQUEST_CANCELLED) are a reset.
//
// # Differences from hbone (HTTP/2)
//
//   - Requests HTTP/3 itself finds malformed (RFC 9114 §4.1.2: :path or
//     :scheme on a CONNECT, a connection-specific field, no :authority) are
//     reset with H3_MESSAGE_ERROR by quic-go before any handler runs,
//     instead of answered 400; a header section over 16 KiB is answered 431
//     by quic-go instead of 400. The client refuses to send either.
//   - Close on a tunnel behaves like close(2) on a TCP socket: a FIN if none
//     was sent, STOP_SENDING if the peer's data was not read to its end.
//     hbone resets a stream not finished both ways. Abort resets; Splice
//     (hbone.Splice, via hbone.Aborter) aborts on a failed copy, so a
//     truncated transfer is never seen as complete.
//   - Server.OnConnRefused reports the refusals this server made (client
//     certificate verification, ALPN), not handshakes the client abandoned.
//   - OnStreamEnd receives hbone.StreamResult, and Stream embeds
//     hbone.Stream, so flow logs and policy code serve both transports.
//   - Server.Serve takes a net.PacketConn (and closes it when it returns).
//
// # Pooling
//
// Client pools QUIC connections per (source identity, destination identity,
// server address), as hbone.Client does: up to MaxStreamsPerConn streams
// each, a new connection dialed when all are full, idle connections closed
// after IdleTimeout (5 min). A connection takes no new streams once its
// client certificate is half way through its life, or after Rotate for its
// source identity; it closes when its last stream ends. GOAWAY from a
// draining server moves new streams to a fresh connection. Each connection
// has its own UDP socket from ClientConfig.ListenPacket, so ztunnel can
// create it inside the source pod's network namespace.
//
// # Tuning
//
// quic-go asks for 7 MiB UDP receive and send buffers and GSO
// (UDP_SEGMENT) for throughput, and only prints to the standard logger
// when the system refuses. Both ends here apply that tuning themselves
// first — setsockopt, then SO_RCVBUFFORCE / SO_SNDBUFFORCE past
// net.core.rmem_max / wmem_max when privileged — read back what the kernel
// granted, probe GSO, log the outcome through the configured logger (a
// warning when refused, saying which sysctl to raise) and report it from
// Server.Tuning and Client.Tuning.
package hbone3
