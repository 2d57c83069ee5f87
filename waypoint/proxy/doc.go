// Package proxy is the waypoint's data plane: the shared L7 proxy that
// ztunnels send a service's traffic to when the service is bound to a
// waypoint (Service.waypoint; DESIGN §1, §4, §7, §8).
//
// # Tunnels in
//
// The proxy serves HBONE (internal/hbone) on its Listener (:15008) with its
// own SVID; hbone verifies each client's certificate (trust domain) and
// hands over one CONNECT stream per proxied connection. The stream's
// :authority names the destination: a service VIP and port, or a
// workload's IP and port; anything else is refused with 400. The client
// ztunnel presents the source pod's identity, and its Forwarded header's
// for= carries the original client address.
//
// hbone splices each accepted stream with one end of an AF_UNIX socket
// pair; the proxy serves the other end. The first bytes decide how: an
// upper-case token and a space (an HTTP/1.x request line, or the HTTP/2
// preface "PRI * HTTP/2.0") make it HTTP, anything else L4. HTTP tunnels
// go to one net/http Server that speaks HTTP/1.1 and, by prior knowledge,
// h2c (http.Protocols with UnencryptedHTTP2, the x/net/http2 server bundled
// in net/http), so gRPC works; each request learns its tunnel through the
// connection's context.
//
// # Per request
//
//  1. The destination is resolved again in the current mesh view
//     (internal/state), so a request follows configuration changes.
//  2. L7 authorization (waypoint/l7authz): the policies targeting the
//     waypoint's Gateway, its GatewayClass (from the root namespace) or the
//     destination Service; source = the tunnel's peer identity and address,
//     remote address from Forwarded. The path is normalized first; a path
//     that cannot be is answered 400. A deny is answered 403 "RBAC: access
//     denied", as Istio answers.
//  3. Routing (waypoint/route): the compiled table for (service, port,
//     client namespace) — consumer routes, then the service's, each for the
//     port and then for every port — else the waypoint Gateway's; without
//     one, the default route: the destination service itself (or the
//     addressed workload). NotFound, Fail and Redirect are answered as the
//     Decision says; a Gateway table that matches nothing falls back to the
//     default route.
//  4. Forwarding: per attempt an endpoint is picked (state.PickEndpoint); a
//     mesh workload is reached over HBONE at its ztunnel (ip:15008,
//     :authority ip:targetPort) as the waypoint's identity, verifying the
//     workload's, with hbone's pooled client; a workload outside the mesh
//     over plain TCP. HTTP/1.1 upstreams use an http.Transport whose
//     DialContext returns the tunnel (keep-alive pools per endpoint);
//     HTTP/2 (when the client spoke h2c, or the Service port's appProtocol
//     is HTTP2 or GRPC) a Transport with only UnencryptedHTTP2. The
//     normalized (or rewritten) path is forwarded; hop-by-hop headers are
//     dropped ("TE: trailers" kept), x-forwarded-proto and x-request-id
//     added when missing, traceparent passed untouched, the route's header
//     mutations applied; trailers are passed back (gRPC status).
//  5. Timeouts and retries: HTTPRouteTimeouts.request bounds the whole
//     exchange (504 "upstream request timeout", flag UT), backendRequest
//     each attempt. HTTPRouteRetry retries the listed status codes (any
//     method: the user listed them) and connection failures (a failed dial
//     for any method, other failures only for idempotent methods), waiting
//     the backoff doubled per retry (at most 10×); without a retry stanza,
//     Config.DefaultRetries connection-failure retries. A body is retried
//     (and mirrored) only when its length is known and at most
//     MaxRetryBody (64 KiB), buffered once; other bodies stream once.
//  6. Mirrors are fire and forget, at most MaxMirrors in flight (more are
//     dropped), Host suffixed "-shadow" as Envoy does.
//
// # L4
//
// A tunnel that does not carry HTTP is forwarded as bytes to an endpoint
// of the destination after the endpoint workload's L4 policies
// (internal/authz) allow the tunnel's client.
//
// # Configuration
//
// The mesh comes from Config.Store. The L7 configuration (route tables and
// AuthorizationPolicies, from istiod-lite over xDS or from a local file:
// cmd/waypoint) is compiled by [Compile] off the request path and
// put in force by [Proxy.SetL7] with one atomic pointer store: a request
// reads the pointer once, so requests in flight finish under the
// configuration they started with and none is dropped.
//
// # Telemetry
//
// One flow record per request (telemetry.Flow, reporter "waypoint": source
// identity and workload, destination service, endpoint workload and
// identity, method, normalized path, response code, bytes, duration,
// decision and policy) and per L4 connection; Istio's request metrics
// (telemetry.HTTPMetrics) with reporter="waypoint" and Envoy's response
// flags (NR, UH, UF, URX, UT, DC).
//
// # Not yet
//
// Upgrade (WebSocket) and CONNECT requests inside the tunnel are not
// forwarded (hop-by-hop Upgrade is dropped); server-first protocols wait for
// the client's first bytes; no outlier detection, circuit breaking or rate
// limits.
package proxy
