// Package proxy is the waypoint's data plane: the shared L7 proxy that
// ztunnels send a service's traffic to when the service is bound to a
// waypoint (Service.waypoint; DESIGN §1, §4, §7, §8).
//
// # Tunnels in
//
// The proxy serves HBONE (internal/hbone) on its Listener (:15008) with its
// own SVID, and HBONE/3 (internal/hbone3, QUIC) on its PacketConn (UDP
// :15008) when it has one, for ztunnels whose tunnels to a waypoint that
// asks for QUIC go over it; either verifies each client's certificate
// (trust domain) and hands over one CONNECT stream per proxied connection.
// A waypoint carries TCP only: a connect-udp stream is refused (400, or
// 501 over HBONE/3), as ztunnel sends UDP straight to the endpoint. The stream's
// :authority names the destination: a service VIP and port, or a
// workload's IP and port, that uses this waypoint (its waypoint is the
// Service named after this waypoint's Gateway); anything else is refused
// with 400, as Istio's waypoint serves only what is bound to it. Without
// that, any client could relay through the waypoint and reach other
// destinations as the waypoint's identity, or the waypoint itself in a
// loop. The client
// ztunnel presents the source pod's identity, and its Forwarded header's
// for= carries the original client address.
//
// hbone and hbone3 hand each accepted stream over as a net.Conn
// (ServerConfig.Serve: no socket pair, no splice), and the proxy
// serves it on the stream's goroutine. The protocol the destination
// Service's port declares (appProtocol or port name, Istio's protocol
// selection, translated by istiod-lite) decides how: http, http2 and grpc
// make it HTTP; tcp (mysql, mongo, redis) and tls make it L4 at once, so a
// server that speaks first is not kept waiting. Otherwise the first bytes
// decide: an upper-case token and a space (an HTTP/1.x request line, or
// the HTTP/2 preface "PRI * HTTP/2.0") make it HTTP, anything else L4. An HTTP
// tunnel that opens with the HTTP/2 preface goes to a net/http Server
// that speaks h2c by prior knowledge (http.Protocols with
// UnencryptedHTTP2), so gRPC works; HTTP/1.x is served on the tunnel's
// own goroutine by waypoint/h1server, which checks requests as net/http
// does without its per-request goroutine and context costs. Either way
// each request learns its tunnel through its context.
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
//     denied", as Istio answers. Then the destination service's local rate
//     limit and fault injection (see Resilience).
//  3. Routing (waypoint/route): the compiled table for (service, port,
//     client namespace) — consumer routes, then the service's, each for the
//     port and then for every port — else the waypoint Gateway's; without
//     one, the default route: the destination service itself (or the
//     addressed workload). NotFound, Fail and Redirect are answered as the
//     Decision says; a Gateway table that matches nothing falls back to the
//     default route.
//  4. Forwarding, within the backend's circuit breaker limits: per attempt
//     an endpoint is picked by the backend's load balancer, skipping the
//     endpoints outlier detection ejected (see Resilience); a mesh workload is reached over HBONE at its ztunnel (ip:15008,
//     :authority ip:targetPort) as the waypoint's identity, verifying the
//     workload's, with hbone's pooled client, or hbone3's when the
//     workload asks for QUIC (falling back to HTTP/2 as ztunnel does,
//     internal/quicfallback); a workload outside the mesh over plain TCP. HTTP/1.1 upstreams use an http.Transport whose
//     DialContext returns the tunnel (keep-alive pools per endpoint);
//     HTTP/2 (when the client spoke h2c, or the Service port's appProtocol
//     is HTTP2 or GRPC) a Transport with only UnencryptedHTTP2. The
//     normalized (or rewritten) path is forwarded; hop-by-hop headers are
//     dropped ("TE: trailers" kept), x-forwarded-proto and x-request-id
//     added when missing, the route's header mutations applied, then
//     traceparent set to the waypoint's span when tracing is on (untouched
//     when off; see Telemetry); trailers are passed back (gRPC status).
//  5. Timeouts and retries: HTTPRouteTimeouts.request bounds the whole
//     exchange (504 "upstream request timeout", flag UT), backendRequest
//     each attempt. HTTPRouteRetry retries the listed status codes (any
//     method: the user listed them) and connection failures (a failed dial
//     for any method, other failures only for idempotent methods), waiting
//     the backoff doubled per retry (at most 10×); without a retry stanza,
//     Config.DefaultRetries connection-failure retries; each retry needs
//     one of the backend's http.maxRetries. A body is retried
//     (and mirrored) only when its length is known and at most
//     MaxRetryBody (64 KiB), buffered once; other bodies stream once.
//  6. Mirrors are fire and forget, at most MaxMirrors in flight (more are
//     dropped), Host suffixed "-shadow" as Envoy does.
//
// # L4
//
// A tunnel that does not carry HTTP is forwarded as bytes to an endpoint
// of the destination after two checks. First the waypoint's own policies
// (those step 2 above applies) judge it as Istio judges TCP traffic
// (l7authz.EvaluateConnection): an ALLOW rule with HTTP fields never
// matches and a DENY rule matches without them, so bytes the proxy does
// not parse as HTTP cannot pass an L7 ALLOW. Then the endpoint workload's
// L4 policies (internal/authz) must allow the tunnel's client.
//
// # Resilience
//
// Each service has a ServiceResilience (istiod-lite's DestinationRule and
// LocalTrafficPolicy, [L7Config].Resilience), or Istio's defaults:
// LEAST_REQUEST and nothing else. The mechanisms are waypoint/resilience's,
// with Envoy's semantics and response flags:
//
//   - Local rate limit and fault injection belong to the service the
//     request is addressed to, checked after authorization and before
//     routing, as Envoy's filters before the router: a request beyond the
//     token bucket is answered 429 "local_rate_limited" (RL); a fault delay
//     holds the request (DI), a fault abort answers it with its status,
//     "fault filter abort" (FI), each for its share of requests. A
//     workload-addressed request has neither.
//   - The rest belongs to the backend's cluster, one per service port as
//     in Envoy: the circuit breaker (connectionPool), outlier detection and
//     the load balancer. A request holds one of http2MaxRequests for its
//     whole exchange; to an HTTP/1.1 backend each attempt holds one of
//     maxConnections (an HTTP/1.1 connection carries one request at a
//     time), waiting for one as a pending request, at most
//     http1MaxPendingRequests at once; to an HTTP/2 backend each open
//     connection the cluster's requests opened holds one; a request to
//     an endpoint with no connection open waits for one to be dialled as
//     a pending request (at most http1MaxPendingRequests at once), those
//     that come while it is dialled share it, and a request that would
//     need one connection more than the limit is refused (Envoy's HTTP/2
//     pool). A limit reached is answered 503 at
//     once, "upstream connect error or disconnect/reset before headers.
//     reset reason: overflow" with x-envoy-overloaded (UO), never queued
//     without bound. A retry refused by maxRetries returns the last
//     answer as it is, adding UO. maxRequestsPerConnection closes an
//     HTTP/1.1 connection after that many requests, and an HTTP/2 one
//     after its streams in flight end (it takes no new one).
//   - connectTimeout and idleTimeout belong to the backend service too
//     (upstream.go). connectTimeout bounds the establishing of a new
//     upstream connection: the whole HBONE connect (TCP and TLS to the
//     endpoint's ztunnel when hbone has no pooled connection there, then
//     the CONNECT answered 200), or the plain TCP dial; a reused pooled
//     connection costs nothing. hbone's own 10s handshake timeout still
//     bounds TCP and TLS, so a connectTimeout above 10s is 10s for them.
//     Expired, the attempt is a connect failure: retried as one, else 503
//     "upstream connect error or disconnect/reset before headers. reset
//     reason: connection timeout" (UF; "retried and the latest reset
//     reason" after retries, URX), and a local-origin error for outlier
//     detection. idleTimeout closes a pooled upstream connection (h1client
//     or http.Transport, HTTP/1.1 or h2c) left without a request that
//     long; 0 never. A service without them has Config.DefaultConnectTimeout
//     (10s) and DefaultIdleTimeout (90s), so no connect waits forever.
//     Each distinct pair has its own upstream clients, shared by the
//     services that have it; SetL7 keeps those still used and closes the
//     others' connections once idle. A cluster with maxConnections has
//     clients of its own instead, as Envoy's pools are per cluster: an
//     HTTP/2 connection holding one of its slots carries only its
//     requests, never another service's to the same endpoint.
//   - Outlier detection sees every attempt's outcome per endpoint: the
//     status, or a local-origin error (connect failure, reset, timeout)
//     counted as a 503; not a request the client gave up. The load
//     balancer skips ejected endpoints (all ejected: 503 "no healthy
//     upstream", UH). PASSTHROUGH keeps the mesh's own choice, uniform over
//     the healthy endpoints (state.PickEndpoint). [Proxy.OutlierCollector]
//     exports each service port's ejections (ambient_outlier_ejections_active,
//     ambient_outlier_ejections_total).
//   - A mirror is a request on its own service's cluster, as Envoy's
//     shadow is: that service's load balancer and outlier detection apply
//     and its answers count; over the circuit breaker's limits (requests,
//     or the HTTP/1.1 connections) it is dropped, never queued.
//
// The state (token buckets, circuit breaker counters, ejections,
// round-robin positions, requests in flight per endpoint) lives in the
// Proxy, not in a [Compiled]: [Proxy.SetL7] carries each part over to the
// new configuration unless that part of the service's policy changed
// (proto.Equal), so a push of unrelated routes neither refills a rate
// limit nor brings back an ejected endpoint. A cluster is created on its
// first request and dropped by a SetL7 after its service left the mesh.
// Rate limits and outlier detection read the clock Config.Now, and faults
// and load balancers draw from the seeded random source, so tests drive
// both; waits (fault delays, backoffs, timeouts) are real timers.
//
// # Configuration
//
// The mesh comes from Config.Store. The L7 configuration (route tables,
// AuthorizationPolicies and resilience policies, from istiod-lite over xDS
// or from a local file: cmd/waypoint) is compiled by [Compile] off the
// request path and put in force by [Proxy.SetL7] with one atomic pointer
// store: a request reads the pointer once, so requests in flight finish
// under the configuration they started with and none is dropped.
//
// # Telemetry
//
// One flow record per request (telemetry.Flow, reporter "waypoint": source
// identity and workload, destination service, endpoint workload and
// identity, method, normalized path, response code, bytes, duration,
// decision and policy) and per L4 connection; Istio's request metrics
// (telemetry.HTTPMetrics) with reporter="waypoint" and Envoy's response
// flags (NR, UH, UF, URX, UT, DC, UO, RL, DI, FI; several joined with ","
// in Envoy's order), which the flow record carries too.
//
// With Config.Tracer (waypoint/tracing) each request gets an OpenTelemetry
// SERVER span, exported over OTLP/gRPC: the child of the caller's W3C
// traceparent (same trace id, the caller's span id as parent; a new trace
// without one), sampled parent-based (the caller's sampled flag decides,
// new traces at the Tracer's ratio). The upstream request's traceparent is
// rewritten to carry the caller's trace id with the waypoint's span id as
// parent id (tracestate kept), also when the span is not sampled, so the
// backend's spans hang under the waypoint's. The span has the OTel HTTP
// attributes (http.request.method, url.path as received, url.scheme, server.address,
// server.port, client.address, network.peer.address,
// network.protocol.version, user_agent.original,
// http.response.status_code, body sizes, error.type) and the mesh ones
// (mesh.source.principal/workload/namespace,
// mesh.destination.principal/workload/namespace/service,
// mesh.upstream.address, mesh.response_flags, mesh.policy); its status is
// Error for a 5xx, no response, or a response cut short. It ends, stamped
// with the flow record's start and duration, just before the flow record
// is written. Without a Tracer the hooks (trace.go) cost nothing and
// traceparent passes through untouched. Mirrors carry the same
// traceparent as the request; retries reuse the one span.
//
// # Cost per request
//
// A request allocates only what is its own (memo.go): what it derives
// from the mesh view (service keys, services by key, workload identities),
// from its tunnel (addresses as strings, the source peer) or from its
// cluster's endpoint set (each endpoint's peer) is derived once and kept
// with what it comes from; its record, with the parts of its upstream
// requests, and its buffered body are pooled and reused once nothing can
// read them any more (reuseAfter). The clock is read once when a request
// starts and once when it ends; telemetry renders the flow line without
// reflection and finds the metric series through a bounded cache.
// BenchmarkWaypoint_Request measures it over real HBONE on loopback.
//
// # Not yet
//
// HTTP/2 clients' extended CONNECT (RFC 8441 WebSocket) and CONNECT
// requests inside the tunnel are not forwarded (HTTP/1.1 upgrades are:
// upgrade.go); on a port that does not declare its protocol, a
// server-first protocol waits for the client's first bytes, as Istio's
// default protocol detection does (no timeout: a slow HTTP client must
// not fall to L4).
// Of the resilience policy: DestinationRule subsets (routes cannot name
// them).
package proxy
