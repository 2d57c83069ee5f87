// Package l7authz is the L7 AuthorizationPolicy evaluator the waypoint runs
// on every HTTP request (DESIGN §7). It is pure: no I/O, no clock, no
// logging; the caller passes the request and the compiled policies and
// gets back a [Decision] to enforce and log.
//
// # Input and compilation
//
// The waypoint enforces the AuthorizationPolicies that have targetRefs;
// ztunnel enforces the others (internal/authz). [Input] carries one policy
// with its spec in internal/authzapi's types, the ones istiod-lite decodes
// the CRD into. [Compile] turns it into an immutable [Policy], once per
// config change; [Applicable] picks the policies attached to a target;
// [Evaluate] decides, per request, without allocating in the common case;
// [EvaluateConnection] decides a tunnel that does not carry HTTP.
//
// Compile refuses, with an error for the policy's status: CUSTOM (no
// external authorizer here) and unknown actions; a selector together with
// targetRefs; targetRef together with targetRefs; no targetRefs (a ztunnel
// policy); a targetRef that is not kind Gateway or GatewayClass (group
// gateway.networking.k8s.io), Service (group "" or "core") or ServiceEntry
// (group networking.istio.io), or that names another namespace than the
// policy's. A GatewayClass reference applies only from a policy in the root
// namespace. These are the rules of Istio's AuthorizationPolicy reference
// (https://istio.io/latest/docs/reference/config/security/authorization-policy/).
//
// # Matching
//
//   - A policy matches when any rule matches; a policy without rules
//     matches nothing ("allow-nothing" for ALLOW), a rule without fields,
//     rules: [{}], matches every request.
//   - A rule matches when some from entry, some to entry (when present) and
//     every when condition match.
//   - Within a source, an operation or a condition every set field must
//     hold: some value of a positive list matches and no value of its not
//     list does. An empty source or operation matches everything.
//   - Values use Istio's wildcards: "x*" prefix, "*x" suffix, "*" presence
//     (any non-empty value; for headers: the header is present).
//
// Fields are taken from the request so:
//
//   - principals, source.principal: the peer's SPIFFE ID without the
//     scheme (a value written with "spiffe://" is accepted too);
//     namespaces, source.namespace, serviceAccounts: from that ID. A
//     request without identity matches no entry, so a not list never
//     excludes it.
//   - ipBlocks, source.ip: the downstream address; remoteIpBlocks,
//     remote.ip: the original client address the caller determined
//     (falling back to the downstream one); destination.ip.
//   - ports, destination.port: the destination port.
//   - hosts: the :authority, case-insensitively, port included — Istio's
//     exact host match does not strip the port; write
//     ["example.com", "example.com:*"] (Istio security best practices,
//     "Writing Host Match Policies").
//   - methods: case-sensitive; a request whose method is not upper case is
//     refused with 400 before matching, as Istio does
//     (https://istio.io/latest/docs/reference/config/security/normalization/).
//   - paths: the normalized path (below), case-sensitive. Besides the
//     wildcards, a value containing {*} or {**} is a path template as
//     Istio's Operation.paths documents: {*} is one non-empty segment, {**}
//     any remainder, the last operator, no other "*", "{" or "}".
//   - request.headers[name]: header names case-insensitive, duplicates
//     joined with "," (Istio's header normalization); "Host"/":authority",
//     ":method", ":path" read the request's fields.
//   - connection.sni: the downstream TLS server name.
//
// # Path normalization
//
// Paths are normalized before matching by [NormalizePath], as Istio's mesh
// config pathNormalization does
// (https://istio.io/latest/docs/ops/best-practices/security/#customize-your-system-on-path-normalization):
// Istio's NONE, BASE (its install default), MERGE_SLASHES and
// DECODE_AND_MERGE_SLASHES are available, and the default is our
// [NormalizeStrict], which DESIGN §7 asks for: query and fragment cut,
// %2F and %5C decoded, "\" → "/", ";params" removed from every segment,
// slashes merged, dot segments resolved. With a DENY of paths ["/admin"],
// "//admin", "/%2Fadmin", "/%5Cadmin", "/admin;x=y", "/./admin",
// "/a/../admin", "/admin#x" and "/admin?x" are all denied. Case is kept:
// "/ADMIN" is not "/admin". An application that treats paths
// case-insensitively needs every spelling listed, or, better, an ALLOW of
// the paths it serves (Istio's "ALLOW-with-positive-matching"), which
// fails closed. A path that cannot be normalized (bad or %00
// percent-encoding, control characters, not starting with "/") is refused
// with 400.
//
// # Unsupported fields fail closed
//
// requestPrincipals, notRequestPrincipals and the request.auth.* and
// experimental.* when keys need JWT authentication, which the waypoint
// does not do yet; unknown when keys and invalid values (a port, CIDR or
// path template that does not parse, a when without values) cannot be
// judged. In an ALLOW policy such a rule (or source, or operation
// alternative) never matches; in a DENY or AUDIT policy the condition is
// dropped, so the policy matches more. Both only ever refuse more than the
// author asked, the rule istiod-lite/translate applies for ztunnel.
// Policy.Warnings lists each case.
//
// # Connections without HTTP
//
// The same policies judge the tunnels the waypoint forwards as bytes, as
// Istio applies an AuthorizationPolicy to TCP traffic: hosts, methods,
// paths (and their not forms) and request.headers conditions are HTTP-only
// and fail closed as unsupported fields do. An ALLOW rule using them never
// matches; a DENY or AUDIT rule matches without them. So an ALLOW of
// "GET /public" refuses a connection that is not HTTP, and a DENY of
// "POST /admin" from other namespaces refuses their every connection on
// the rule's ports. Compile prepares this view beside the HTTP one; it
// adds no warning.
//
// # Decision
//
// Istio's order: dry-run policies (istio.io/dry-run) are evaluated and
// reported, never enforced; if any DENY policy matches, deny (403); if no
// ALLOW policy applies, allow; if any ALLOW policy matches, allow;
// otherwise deny (403). AUDIT policies never change the outcome: a
// matching one sets Decision.Audited.
package l7authz
