// Package hbone implements HBONE, the mesh's secure tunnel: one HTTP/2
// CONNECT stream per proxied TCP connection (or, as CONNECT-UDP, per UDP
// flow), carried over mutual TLS 1.3 between SPIFFE identities.
//
// # Wire format
//
// A tunnel connection is TLS 1.3 with ALPN "h2" on TCP 15008. Both ends
// present SVIDs; the server checks the client's trust domain, the client checks
// the server's exact SPIFFE ID. Inside is ordinary HTTP/2 (RFC 9113) with
// these settings from each end:
//
//	SETTINGS_ENABLE_PUSH             0
//	SETTINGS_MAX_CONCURRENT_STREAMS  100 (server)
//	SETTINGS_INITIAL_WINDOW_SIZE     4 MiB  (per stream)
//	SETTINGS_MAX_FRAME_SIZE          1 MiB
//	SETTINGS_MAX_HEADER_LIST_SIZE    16 KiB
//	SETTINGS_ENABLE_CONNECT_PROTOCOL 1 (server; RFC 8441, for UDP below)
//	connection window                16 MiB (WINDOW_UPDATE on stream 0)
//
// Every stream is a CONNECT request (RFC 9113 §8.5): the pseudo-headers are
// exactly :method = CONNECT and :authority = the original destination as
// "ip:port" (the service VIP when sent to a waypoint). Regular headers may
// carry baggage (source workload metadata), forwarded (for= original
// source) and traceparent. The server replies with a HEADERS frame whose
// :status is
//
//	200  tunnel open; DATA frames carry the connection's bytes both ways
//	400  malformed request, or :authority is not a destination served here
//	401  refused by authorization policy
//	501  extended CONNECT with a :protocol other than connect-udp
//	503  the upstream connection failed
//
// END_STREAM on a DATA frame is a TCP half-close (FIN) of that direction;
// RST_STREAM is a reset. Nothing else is ever sent in the clear.
//
// # UDP: extended CONNECT
//
// UDP flows travel as CONNECT-UDP (RFC 9298) in an extended CONNECT
// (RFC 8441). The server advertises SETTINGS_ENABLE_CONNECT_PROTOCOL = 1;
// a client sends no extended CONNECT before it has the server's SETTINGS
// saying so (Client.DialUDP fails with ErrExtendedConnectDisabled
// instead). The request's pseudo-headers are exactly
//
//	:method    CONNECT
//	:protocol  connect-udp
//	:scheme    https
//	:authority ip:port of the UDP destination, as for TCP
//	:path      /.well-known/masque/udp/{ip}/{port}/  (RFC 9298 default
//	           template; IPv6 ':' as %3A)
//
// and the regular field capsule-protocol: ?1 (RFC 9297 §3.4) is required.
// :authority and :path must name the same ip:port, else 400; so must a
// missing or false capsule-protocol, a :scheme other than https, a bad
// :path, or :scheme or :path in a CONNECT without :protocol. The 200 reply
// carries capsule-protocol: ?1. The stream's DATA then carries capsules
// (package connectudp): each UDP payload is one DATAGRAM capsule (type 0)
// holding Context ID 0 and the payload; other capsule types are skipped
// and datagrams with other Context IDs dropped. END_STREAM or RST_STREAM
// ends the flow (the server closes its UDP socket); so does a minute with
// no datagram either way (ServerConfig.UDPIdleTimeout), with a clean
// END_STREAM.
//
// The implementation sits directly on x/net/http2's Framer and hpack: it
// speaks only CONNECT (classic and connect-udp), so it can move DATA
// payloads between sockets and pooled buffers without the extra copies a
// general HTTP server makes.
// Defences: a bounded handshake and header-block time, a header list limit
// (CONTINUATION floods end the connection), a stream limit that counts a
// stream until its handler has finished (rapid reset), and rate limits on
// client resets, pings and settings.
package hbone
