// Package resilience holds the waypoint's resilience mechanisms as pure,
// concurrency-safe state machines: circuit breaking ([Limiter]), outlier
// detection ([Outlier]), load balancing ([Picker]), local rate limiting
// ([TokenBucket]) and fault injection ([Fault]). Nothing here does I/O,
// reads the clock or draws random numbers on its own: time comes in as a
// time.Time or through an injected clock, randomness as a func() uint64
// (as in waypoint/route), so tests drive them with fake clocks and seeded
// sources. The hot-path methods (Acquire and release, Healthy, Observe,
// Pick, Allow, Decide) do not allocate.
//
// The configuration comes from istiod-lite as
// [waypointapi.ServiceResilience] (DestinationRule plus our
// LocalTrafficPolicy, defaults already filled in); each mechanism has a
// constructor from its part of that proto.
//
// # Semantics
//
// They follow Envoy as Istio configures it, so that a DestinationRule means
// at the waypoint what it means at an Istio sidecar or waypoint:
//
//   - [Limiter] is Envoy's per-cluster circuit breaker
//     (arch_overview/upstream/circuit_breaking): counters for connections
//     (tcp.maxConnections), pending requests (http.http1MaxPendingRequests),
//     active requests (http.http2MaxRequests) and active retries
//     (http.maxRetries). Acquire never waits: at the limit it returns
//     [ErrOverflow] at once, which the proxy answers with 503 and the
//     response flag "UO" ([FlagUpstreamOverflow]).
//   - [Outlier] is Envoy's outlier detection
//     (arch_overview/upstream/outlier) restricted to what Istio's
//     OutlierDetection sets: consecutive 5xx (any 5xx, and local-origin
//     errors counted as 503, since Istio leaves
//     split_external_local_origin_errors off) and consecutive gateway
//     errors (502, 503, 504); an ejected host stays out for
//     baseEjectionTime × the number of times it was ejected in a row
//     (capped at Envoy's max_ejection_time, 300 s, or the base time when
//     larger), is brought back by the sweep every interval after that time
//     has passed, and each sweep that finds a returned host healthy
//     decrements its multiplier; no more than maxEjectionPercent of the
//     hosts are ejected, but always at least one; when fewer than
//     minHealthPercent of the hosts are healthy every host counts as
//     healthy (Envoy's panic threshold, which Istio sets to
//     minHealthPercent). Sweeps are lazy: they run inside the next call
//     after their time, so no goroutine is needed.
//   - [Picker] is Envoy's ROUND_ROBIN, LEAST_REQUEST (power of two
//     choices: two random healthy hosts, the one with fewer active
//     requests) and RANDOM over the healthy candidates; PASSTHROUGH means
//     the proxy keeps the original destination and never asks a Picker.
//   - [TokenBucket] is a local rate limit like Envoy's local_ratelimit
//     filter (answer 429, flag "RL"), with a continuous refill: rate
//     requestsPerUnit per unit, capacity burst (requestsPerUnit when not
//     set), starting full.
//   - [Fault] is Envoy's HTTP fault filter as Istio's HTTPFaultInjection
//     configures it: a delay for a percentage of requests and an abort
//     with a status for a percentage of requests, drawn independently;
//     percentages have Envoy's resolution of one per million.
package resilience
