// Package hbone3 implements HBONE/3: the HBONE tunnel of package hbone —
// one CONNECT stream per proxied TCP connection (or, as CONNECT-UDP, per
// UDP flow) between SPIFFE identities —
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
// growing to 16 MiB, 16 MiB connection window growing to 64 MiB,
// max_datagram_frame_size set (DATAGRAM frames, RFC 9221) on both ends.
// Both ends' HTTP/3 SETTINGS carry SETTINGS_H3_DATAGRAM = 1 (RFC 9297);
// the server's also SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 9220).
//
// Every request stream is a CONNECT (RFC 9114 §4.4): exactly :method =
// CONNECT and :authority = the original destination "ip:port"; regular
// fields baggage, forwarded, traceparent. The server rebuilds the field
// list and validates it with hbone.ParseRequest, so the authority rules are
// the same, and answers as hbone does:
//
//	200  tunnel open; DATA frames carry the connection's bytes both ways
//	400  not CONNECT, :authority is not a literal ip:port, a bad
//	     connect-udp request (below), or (Authorize or Dial wrapping
//	     hbone.ErrBadDestination) not a destination served here
//	401  refused by Authorize
//	501  extended CONNECT with a :protocol other than connect-udp
//	503  the upstream connection failed
//
// The FIN of a QUIC stream direction is a TCP half-close of that direction;
// RESET_STREAM / STOP_SENDING (H3_REQUEST_CANCELLED) are a reset.
//
// # UDP: CONNECT-UDP with HTTP/3 datagrams
//
// A UDP flow is an extended CONNECT (RFC 9220) for CONNECT-UDP
// (RFC 9298), with the pseudo-headers and fields of hbone's (see its
// "UDP: extended CONNECT"):
//
//	:method    CONNECT
//	:protocol  connect-udp
//	:scheme    https
//	:authority ip:port of the UDP destination
//	:path      /.well-known/masque/udp/{ip}/{port}/
//	capsule-protocol: ?1
//
// validated by the same hbone.ParseRequest (the server rebuilds
// :protocol, :scheme and :path from what quic-go parsed). Client.DialUDP
// waits for the server's SETTINGS and sends nothing unless they enable
// HTTP/3 datagrams and extended CONNECT (ErrNoDatagrams). The 200 reply
// carries capsule-protocol: ?1. Then each UDP payload is one HTTP/3
// datagram (RFC 9297 §2.1) in one QUIC DATAGRAM frame:
//
//	QUIC DATAGRAM frame payload {
//	  Quarter Stream ID (i),   the request stream's ID / 4
//	  Context ID (i),          0
//	  UDP Payload (..),
//	}
//
// Datagrams are unreliable and unordered, as UDP is; none is split. A
// payload too large for the path's current DATAGRAM frame limit is not
// sent: the client's UDPTunnel.WriteDatagram returns a
// *DatagramTooLargeError, and the server's relay drops it (as a router
// drops a packet over the path MTU). Neither falls back to capsules for
// it.
//
// Both ends also accept DATAGRAM capsules (RFC 9297 §3.5, package
// connectudp) in DATA frames on the request stream, since RFC 9297 lets
// a peer send either; other capsule types are skipped, Context IDs other
// than 0 and HTTP/3 datagrams without a Context ID dropped. A client
// whose SETTINGS do not enable HTTP/3 datagrams is answered with capsules
// on the stream (the server waits up to DialTimeout for the client's
// SETTINGS, which a client sends first thing). The stream's FIN ends the
// flow cleanly; a reset ends it with an error. Either way the server
// closes its UDP socket.
//
// A flow the server relays ends after ServerConfig.UDPIdleTimeout (default
// 60 s, hbone.DefaultUDPIdleTimeout) without a datagram either way: its
// socket is closed, it sends a FIN (a clean end, not a reset), then resets
// the stream if the client has not ended its direction within a few
// seconds; StreamResult.Err wraps hbone.ErrUDPIdle. StreamResult.BytesIn
// and BytesOut count UDP payload bytes.
//
// # Differences from hbone (HTTP/2)
//
//   - Requests HTTP/3 itself finds malformed (RFC 9114 §4.1.2: :path or
//     :scheme on a CONNECT, a connection-specific field, no :authority) are
//     reset with H3_MESSAGE_ERROR by quic-go before any handler runs,
//     instead of answered 400; a header section over 16 KiB is answered 431
//     by quic-go instead of 400. The client refuses to send either. For
//     connect-udp the same goes for an extended CONNECT without :scheme or
//     :path, or with a :path not starting with "/", and for :protocol
//     without extended CONNECT, all 400 on hbone.
//   - quic-go does not hand the handler :scheme's value, only requires it
//     on an extended CONNECT: a connect-udp request with :scheme http is
//     accepted here, refused (400) by hbone.
//   - UDP payloads travel as HTTP/3 datagrams (unreliable, limited to one
//     QUIC packet, about 1,200 bytes before path MTU discovery) rather than
//     as capsules on the stream (reliable, up to 64 KiB).
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
