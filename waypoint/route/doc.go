// Package route decides, for one HTTP request at the waypoint, what the
// Gateway API HTTPRoutes attached to its destination say to do. It is pure:
// no I/O, no clock, randomness injected.
//
// # Model
//
// istiod-lite sends one [waypointapi.ServiceRoutes] table per parent (a
// Service, or the waypoint Gateway) and port. The table is already in the
// spec's precedence order: every HTTPRouteMatch of every rule of every
// route attached to the parent, sorted (Exact path, then the longest
// PathPrefix, then RegularExpression paths; then method; most header
// matches; most query matches; oldest route; route namespace/name; rule
// and match order), each pointing at its rule. The waypoint:
//
//  1. [Compile]s a table once per config update into a [Table]: regular
//     expressions compiled (RE2, anchored: they must match the whole path
//     or value), header names canonicalised for [net/http.Header] lookups,
//     each backend's filters merged with its rule's, cumulative weights
//     summed, so that nothing is parsed or compiled per request.
//  2. Calls [Table.Select] per request with a [RequestView]. The first
//     match whose path, method, headers (names case-insensitive, values
//     case-sensitive) and query parameters (first value, decoded) all hold
//     picks the rule. Paths are case-sensitive; PathPrefix matches whole
//     segments ("/foo" matches "/foo" and "/foo/bar", not "/foobar"). For
//     a Gateway table whose routes list hostnames, a match whose route has
//     the most specific hostname matching the request's Host (most
//     characters of an exact hostname, then of any hostname) wins first.
//  3. Gets a [Decision]: a 404 when nothing matched (HTTPRouteRule.matches
//     doc); a redirect (status and Location computed); a 500 when the
//     weighted pick lands on a backend that did not resolve or the rule has
//     no backends (HTTPRouteRule.backendRefs doc); else the backend plus the
//     effects of the filters as data — header mutations in filter order
//     (rule's, then the backend's), the rewritten path and Host, mirror
//     targets chosen by their fraction, timeouts and retry policy — for the
//     proxy to apply.
//
// Weighted choice and mirror fractions draw from the rnd function passed
// to Select, so a seeded source gives a reproducible sequence.
//
// A plain match (no rewrite, no redirect, no fractional mirror) allocates
// nothing; a redirect or a rewrite allocates the new string.
package route
