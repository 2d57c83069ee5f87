package l7authz

import (
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const ns = "shop"

var waypointRef = []TargetRef{{Group: GroupGateway, Kind: KindGateway, Name: "waypoint"}}

// pol compiles a policy in ns attached to the waypoint.
func pol(t testing.TB, name, action string, rules ...Rule) *Policy {
	t.Helper()
	p, err := Compile(Input{Namespace: ns, Name: name, Spec: Spec{Action: action, TargetRefs: waypointRef, Rules: rules}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func dryRun(p *Policy) *Policy { q := *p; q.DryRun = true; return &q }

func to(ops ...Operation) []To {
	var out []To
	for _, o := range ops {
		out = append(out, To{Operation: o})
	}
	return out
}

func from(ss ...Source) []From {
	var out []From
	for _, s := range ss {
		out = append(out, From{Source: s})
	}
	return out
}

func paths(p ...string) Rule { return Rule{To: to(Operation{Paths: p})} }

// req returns GET /public from frontend in shop; mods change it.
func req(mods ...func(*Request)) *Request {
	r := &Request{
		Source:          PeerOf(spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/frontend")),
		SourceIP:        netip.MustParseAddr("10.244.1.5"),
		DestinationIP:   netip.MustParseAddr("10.244.2.7"),
		DestinationPort: 8080,
		Method:          "GET",
		Host:            "reviews.shop.svc.cluster.local",
		Path:            "/public",
		Header:          http.Header{"User-Agent": {"curl/8"}},
	}
	for _, m := range mods {
		m(r)
	}
	return r
}

func withPath(p string) func(*Request)   { return func(r *Request) { r.Path = p } }
func withMethod(m string) func(*Request) { return func(r *Request) { r.Method = m } }
func withHost(h string) func(*Request)   { return func(r *Request) { r.Host = h } }
func withPeer(id string) func(*Request) {
	return func(r *Request) {
		if id == "" {
			r.Source = Peer{}
			return
		}
		r.Source = PeerOf(spiffeid.RequireFromString(id))
	}
}
func withHeader(k string, v ...string) func(*Request) {
	return func(r *Request) { r.Header = http.Header{http.CanonicalHeaderKey(k): v} }
}
func withSrcIP(a string) func(*Request) {
	return func(r *Request) { r.SourceIP = netip.MustParseAddr(a) }
}

// The table of Istio's security best practices, for a DENY of "/admin".
func TestEvaluate_DenyAdminResistsPathTricks(t *testing.T) {
	deny := pol(t, "deny-admin", "DENY", paths("/admin"))
	for _, p := range []string{"/admin", "//admin", "/%2Fadmin", "/%2fadmin", "/%5Cadmin", "/\\admin", "/admin;x=y",
		"/./admin", "/a/../admin", "/admin#x", "/admin?x=1", "/public/..;/admin", "/%2e/admin", "/x/..%2Fadmin"} {
		d := Evaluate([]*Policy{deny}, req(withPath(p)))
		if d.Allow || d.Status != http.StatusForbidden || d.Policy != "shop/deny-admin" || d.Reason != ReasonDenyMatched || d.Path != "/admin" {
			t.Errorf("%q: got %+v, want denied 403 by shop/deny-admin on /admin", p, d)
		}
	}
	// Case is kept: a case-sensitive rule does not see /ADMIN (documented).
	if d := Evaluate([]*Policy{deny}, req(withPath("/ADMIN"))); !d.Allow {
		t.Errorf("/ADMIN: got %+v, want allowed (rule is case-sensitive)", d)
	}
	for _, p := range []string{"/admin%00", "/adm%zzin", "/admin%2"} {
		d := Evaluate([]*Policy{deny}, req(withPath(p)))
		if d.Allow || d.Status != http.StatusBadRequest || d.Reason != ReasonBadPath {
			t.Errorf("%q: got %+v, want 400 %q", p, d, ReasonBadPath)
		}
	}
}

func TestEvaluate_IstioModesAsDocumented(t *testing.T) {
	deny := pol(t, "deny-admin", "DENY", paths("/admin"))
	tests := []struct {
		path   string
		mode   Normalization
		denied bool
	}{
		{"//admin", NormalizeBase, false},
		{"//admin", NormalizeMergeSlashes, true},
		{"/%2Fadmin", NormalizeMergeSlashes, false},
		{"/%2Fadmin", NormalizeDecodeAndMergeSlashes, true},
		{"/admin;x=y", NormalizeDecodeAndMergeSlashes, false}, // Envoy keeps ;params
		{"/a/../admin", NormalizeBase, true},
		{"/a/../admin", NormalizeNone, false},
	}
	for _, tt := range tests {
		if d := EvaluateWith([]*Policy{deny}, req(withPath(tt.path)), tt.mode); d.Allow == tt.denied {
			t.Errorf("%q %v: got %+v, want denied=%v", tt.path, tt.mode, d, tt.denied)
		}
	}
}

func TestEvaluate(t *testing.T) {
	allowPublic := pol(t, "allow-public", "ALLOW", Rule{To: to(Operation{Methods: []string{"GET"}, Paths: []string{"/public"}})})
	denyPostAdmin := pol(t, "deny-post-admin", "DENY", Rule{To: to(Operation{Methods: []string{"POST"}, Paths: []string{"/admin", "/admin/*"}})})
	allowAll := pol(t, "allow-all", "ALLOW", Rule{})
	allowNothing := pol(t, "allow-nothing", "ALLOW")
	denyNothing := pol(t, "deny-nothing", "DENY")
	denyAll := pol(t, "deny-all", "DENY", Rule{})
	audit := pol(t, "audit-admin", "AUDIT", paths("/admin*"))

	type want struct {
		allow  bool
		status int
		policy string
		reason string
	}
	allowedBy := func(p string) want { return want{true, 0, p, ReasonAllowMatched} }
	deniedBy := func(p string) want { return want{false, 403, p, ReasonDenyMatched} }
	noAllow := want{true, 0, "", ReasonNoAllowPolicy}
	noneMatched := want{false, 403, "", ReasonNoAllowMatched}

	tests := []struct {
		name     string
		policies []*Policy
		req      *Request
		want     want
	}{
		{"no policies allow", nil, req(), noAllow},
		{"nil policies skipped", []*Policy{nil}, req(), noAllow},
		{"GET /public allowed", []*Policy{allowPublic, denyPostAdmin}, req(), allowedBy("shop/allow-public")},
		{"POST /admin denied", []*Policy{allowPublic, denyPostAdmin}, req(withMethod("POST"), withPath("/admin")), deniedBy("shop/deny-post-admin")},
		{"POST /admin/x denied", []*Policy{allowAll, denyPostAdmin}, req(withMethod("POST"), withPath("/admin/x")), deniedBy("shop/deny-post-admin")},
		{"GET /admin not allowed", []*Policy{allowPublic, denyPostAdmin}, req(withPath("/admin")), noneMatched},
		{"methods are case-sensitive, lower case is 400", []*Policy{allowPublic}, req(withMethod("get")), want{false, 400, "", ReasonBadMethod}},
		{"empty method is 400", nil, req(withMethod("")), want{false, 400, "", ReasonBadMethod}},
		{"DENY beats ALLOW", []*Policy{allowAll, denyAll}, req(), deniedBy("shop/deny-all")},
		{"DENY beats ALLOW whatever the order", []*Policy{denyAll, allowAll}, req(), deniedBy("shop/deny-all")},
		{"rules: [{}] matches all", []*Policy{allowAll}, req(withPath("/anything")), allowedBy("shop/allow-all")},
		{"ALLOW without rules matches nothing", []*Policy{allowNothing}, req(), noneMatched},
		{"DENY without rules denies nothing", []*Policy{denyNothing}, req(), noAllow},
		{"AUDIT does not decide", []*Policy{audit}, req(withPath("/admin")), noAllow},
		{"AUDIT is not an ALLOW", []*Policy{audit, allowNothing}, req(withPath("/admin")), noneMatched},
		{"dry-run DENY not enforced", []*Policy{dryRun(denyAll)}, req(), noAllow},
		{"dry-run ALLOW not enforced", []*Policy{dryRun(allowNothing)}, req(), noAllow},
		{"first matching ALLOW reported", []*Policy{allowNothing, allowPublic, allowAll}, req(), allowedBy("shop/allow-public")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Evaluate(tt.policies, tt.req)
			got := want{d.Allow, d.Status, d.Policy, d.Reason}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestEvaluate_AuditAndDryRun(t *testing.T) {
	audit := pol(t, "audit-admin", "AUDIT", paths("/admin*"))
	denyAll := pol(t, "deny-all", "DENY", Rule{})
	d := Evaluate([]*Policy{audit, dryRun(denyAll), dryRun(pol(t, "a", "AUDIT", Rule{}))}, req(withPath("/admin/x")))
	if !d.Allow || !d.Audited || d.AuditPolicy != "shop/audit-admin" || d.DryRunAllow {
		t.Errorf("got %+v, want allowed, audited by shop/audit-admin, dry-run deny", d)
	}
	if want := []string{"shop/deny-all: would deny", "shop/a: would audit"}; !slices.Equal(d.DryRun, want) {
		t.Errorf("DryRun = %q, want %q", d.DryRun, want)
	}
	if d := Evaluate([]*Policy{audit}, req()); d.Audited {
		t.Errorf("GET /public audited: %+v", d)
	}
	if d := Evaluate([]*Policy{dryRun(audit)}, req(withPath("/admin"))); d.Audited {
		t.Errorf("dry-run AUDIT marked the request audited: %+v", d)
	}
}

// TestMatches_Fields: one row per field, positive and not forms.
func TestMatches_Fields(t *testing.T) {
	tests := []struct {
		name string
		rule Rule
		req  *Request
		want bool
	}{
		// principals
		{"principal exact", Rule{From: from(Source{Principals: []string{"cluster.local/ns/shop/sa/frontend"}})}, req(), true},
		{"principal with scheme", Rule{From: from(Source{Principals: []string{"spiffe://cluster.local/ns/shop/sa/frontend"}})}, req(), true},
		{"principal suffix", Rule{From: from(Source{Principals: []string{"*/sa/frontend"}})}, req(), true},
		{"principal prefix other", Rule{From: from(Source{Principals: []string{"cluster.local/ns/other/*"}})}, req(), false},
		{"principal presence, no identity", Rule{From: from(Source{Principals: []string{"*"}})}, req(withPeer("")), false},
		{"notPrincipals presence = no identity", Rule{From: from(Source{NotPrincipals: []string{"*"}})}, req(withPeer("")), true},
		{"notPrincipals presence, identity", Rule{From: from(Source{NotPrincipals: []string{"*"}})}, req(), false},
		{"notPrincipals other", Rule{From: from(Source{NotPrincipals: []string{"cluster.local/ns/shop/sa/admin"}})}, req(), true},
		// namespaces, service accounts
		{"namespace", Rule{From: from(Source{Namespaces: []string{"shop"}})}, req(), true},
		{"namespace other", Rule{From: from(Source{Namespaces: []string{"billing"}})}, req(), false},
		{"notNamespaces", Rule{From: from(Source{NotNamespaces: []string{"shop"}})}, req(), false},
		{"namespace and notPrincipal ANDed", Rule{From: from(Source{Namespaces: []string{"shop"}, NotPrincipals: []string{"*/sa/frontend"}})}, req(), false},
		{"serviceAccounts local name", Rule{From: from(Source{ServiceAccounts: []string{"frontend"}})}, req(), true},
		{"serviceAccounts ns/name", Rule{From: from(Source{ServiceAccounts: []string{"billing/frontend"}})}, req(), false},
		{"notServiceAccounts", Rule{From: from(Source{NotServiceAccounts: []string{"shop/frontend"}})}, req(), false},
		// from entries are ORed
		{"from entries ORed", Rule{From: from(Source{Namespaces: []string{"billing"}}, Source{Namespaces: []string{"shop"}})}, req(), true},
		// IPs
		{"ipBlocks cidr", Rule{From: from(Source{IPBlocks: []string{"10.244.1.0/24"}})}, req(), true},
		{"ipBlocks single", Rule{From: from(Source{IPBlocks: []string{"10.244.1.6"}})}, req(), false},
		{"ipBlocks mapped source", Rule{From: from(Source{IPBlocks: []string{"10.244.1.0/24"}})}, req(withSrcIP("::ffff:10.244.1.5")), true},
		{"ipBlocks mapped prefix", Rule{From: from(Source{IPBlocks: []string{"::ffff:10.244.0.0/112"}})}, req(), true},
		{"notIpBlocks", Rule{From: from(Source{NotIPBlocks: []string{"10.0.0.0/8"}})}, req(), false},
		{"remoteIpBlocks falls back to source", Rule{From: from(Source{RemoteIPBlocks: []string{"10.244.1.5"}})}, req(), true},
		{"remoteIpBlocks uses remote", Rule{From: from(Source{RemoteIPBlocks: []string{"10.244.1.5"}})},
			req(func(r *Request) { r.RemoteIP = netip.MustParseAddr("203.0.113.9") }), false},
		// operation
		{"host case-insensitive", Rule{To: to(Operation{Hosts: []string{"Reviews.Shop.svc.cluster.local"}})}, req(), true},
		{"host exact does not strip port", Rule{To: to(Operation{Hosts: []string{"reviews.shop.svc.cluster.local"}})}, req(withHost("reviews.shop.svc.cluster.local:8080")), false},
		{"host with port wildcard", Rule{To: to(Operation{Hosts: []string{"reviews.shop.svc.cluster.local:*"}})}, req(withHost("REVIEWS.shop.svc.cluster.local:8080")), true},
		{"host suffix", Rule{To: to(Operation{Hosts: []string{"*.svc.cluster.local"}})}, req(), true},
		{"notHosts", Rule{To: to(Operation{NotHosts: []string{"reviews.*"}})}, req(withHost("REVIEWS.x")), false},
		{"ports", Rule{To: to(Operation{Ports: []string{"8080"}})}, req(), true},
		{"notPorts", Rule{To: to(Operation{NotPorts: []string{"8080"}})}, req(), false},
		{"methods", Rule{To: to(Operation{Methods: []string{"GET", "HEAD"}})}, req(), true},
		{"methods case-sensitive", Rule{To: to(Operation{Methods: []string{"get"}})}, req(), false},
		{"notMethods", Rule{To: to(Operation{NotMethods: []string{"GET"}})}, req(), false},
		{"paths prefix", Rule{To: to(Operation{Paths: []string{"/pub*"}})}, req(), true},
		{"paths suffix", Rule{To: to(Operation{Paths: []string{"*lic"}})}, req(), true},
		{"paths presence", Rule{To: to(Operation{Paths: []string{"*"}})}, req(), true},
		{"notPaths", Rule{To: to(Operation{NotPaths: []string{"/public"}})}, req(), false},
		{"paths and notPaths", Rule{To: to(Operation{Paths: []string{"/api/*"}, NotPaths: []string{"/api/internal*"}})}, req(withPath("/api/internal/x")), false},
		{"paths and notPaths other", Rule{To: to(Operation{Paths: []string{"/api/*"}, NotPaths: []string{"/api/internal*"}})}, req(withPath("/api/x")), true},
		{"to entries ORed", Rule{To: to(Operation{Paths: []string{"/x"}}, Operation{Methods: []string{"GET"}})}, req(), true},
		{"from and to ANDed", Rule{From: from(Source{Namespaces: []string{"billing"}}), To: to(Operation{Paths: []string{"/public"}})}, req(), false},
		// when
		{"header exact", Rule{When: []Condition{{Key: "request.headers[user-agent]", Values: []string{"curl/8"}}}}, req(), true},
		{"header prefix", Rule{When: []Condition{{Key: "request.headers[User-Agent]", Values: []string{"curl/*"}}}}, req(), true},
		{"header duplicates joined", Rule{When: []Condition{{Key: "request.headers[x-a]", Values: []string{"foo,bar"}}}}, req(withHeader("x-a", "foo", "bar")), true},
		{"header presence empty value", Rule{When: []Condition{{Key: "request.headers[x-a]", Values: []string{"*"}}}}, req(withHeader("x-a", "")), true},
		{"header presence absent", Rule{When: []Condition{{Key: "request.headers[x-a]", Values: []string{"*"}}}}, req(), false},
		{"header notValues absent", Rule{When: []Condition{{Key: "request.headers[x-a]", NotValues: []string{"*"}}}}, req(), true},
		{"header notValues present", Rule{When: []Condition{{Key: "request.headers[x-a]", NotValues: []string{"evil"}}}}, req(withHeader("x-a", "evil")), false},
		{"header host", Rule{When: []Condition{{Key: "request.headers[host]", Values: []string{"reviews.*"}}}}, req(), true},
		{"header :method", Rule{When: []Condition{{Key: "request.headers[:method]", Values: []string{"GET"}}}}, req(), true},
		{"when entries ANDed", Rule{When: []Condition{
			{Key: "request.headers[user-agent]", Values: []string{"curl/8"}},
			{Key: "source.namespace", Values: []string{"billing"}}}}, req(), false},
		{"source.ip", Rule{When: []Condition{{Key: "source.ip", Values: []string{"10.244.0.0/16"}}}}, req(), true},
		{"remote.ip", Rule{When: []Condition{{Key: "remote.ip", NotValues: []string{"10.244.0.0/16"}}}}, req(), false},
		{"source.namespace", Rule{When: []Condition{{Key: "source.namespace", Values: []string{"shop"}}}}, req(), true},
		{"source.principal", Rule{When: []Condition{{Key: "source.principal", Values: []string{"cluster.local/ns/shop/*"}}}}, req(), true},
		{"destination.ip", Rule{When: []Condition{{Key: "destination.ip", Values: []string{"10.244.2.7"}}}}, req(), true},
		{"destination.port", Rule{When: []Condition{{Key: "destination.port", NotValues: []string{"8080"}}}}, req(), false},
		{"connection.sni", Rule{When: []Condition{{Key: "connection.sni", Values: []string{"*.example.com"}}}},
			req(func(r *Request) { r.SNI = "api.example.com" }), true},
		{"connection.sni absent", Rule{When: []Condition{{Key: "connection.sni", Values: []string{"*"}}}}, req(), false},
		// empty source / operation match everything, as in translate
		{"empty source", Rule{From: from(Source{})}, req(), true},
		{"empty operation", Rule{To: to(Operation{})}, req(), true},
	}
	for _, tt := range tests {
		for _, action := range []string{"ALLOW", "DENY"} {
			p := pol(t, "p", action, tt.rule)
			if got := Matches(p, tt.req, NormalizeStrict); got != tt.want {
				t.Errorf("%s (%s): Matches = %v, want %v (warnings %q)", tt.name, action, got, tt.want, p.Warnings)
			}
		}
	}
}

func TestMatches_PathTemplates(t *testing.T) {
	// The examples of Istio's Operation.paths reference.
	tests := []struct {
		tmpl string
		path string
		want bool
	}{
		{"/foo/{*}", "/foo/bar", true},
		{"/foo/{*}", "/foo/bar/baz", false},
		{"/foo/{*}", "/foo/", false},
		{"/foo/{**}/", "/foo/bar/", true},
		{"/foo/{**}/", "/foo/bar/baz/", true},
		{"/foo/{**}/", "/foo//", true},
		{"/foo/{**}/", "/foo/bar", false},
		{"/foo/{*}/bar/{**}", "/foo/buzz/bar/", true},
		{"/foo/{*}/bar/{**}", "/foo/buzz/bar/baz", true},
		{"/foo/{*}/bar/{**}", "/foo/buzz/baz/bar/x", false},
		{"/{**}", "/anything/at/all", true},
		{"/{*}/x/{*}", "/a/x/b", true},
		{"/{*}/x/{*}", "/a/y/b", false},
	}
	for _, tt := range tests {
		p := pol(t, "p", "ALLOW", paths(tt.tmpl))
		if len(p.Warnings) > 0 {
			t.Fatalf("%q: warnings %q", tt.tmpl, p.Warnings)
		}
		if got := Matches(p, req(withPath(tt.path)), NormalizeBase); got != tt.want {
			t.Errorf("%q on %q: got %v, want %v", tt.tmpl, tt.path, got, tt.want)
		}
	}
	// Invalid templates, per the same reference, fail closed.
	for _, tmpl := range []string{"/*/baz/{*}", "/**/baz/{*}", "/{**}/foo/{*}", "/foo/{*}.txt", "foo/{*}", "/a/{*}}"} {
		allow := pol(t, "p", "ALLOW", paths(tmpl))
		deny := pol(t, "p", "DENY", paths(tmpl))
		if len(allow.Warnings) == 0 || Matches(allow, req(withPath("/foo/x")), NormalizeStrict) {
			t.Errorf("%q: ALLOW should never match and warn; warnings %q", tmpl, allow.Warnings)
		}
		if !Matches(deny, req(withPath("/anything")), NormalizeStrict) {
			t.Errorf("%q: DENY should be widened to any path", tmpl)
		}
	}
}

// TestCompile_FailsClosed: unsupported and invalid values narrow an ALLOW
// and widen a DENY, and say so.
func TestCompile_FailsClosed(t *testing.T) {
	tests := []struct {
		name string
		rule Rule
		warn string
	}{
		{"requestPrincipals", Rule{From: from(Source{RequestPrincipals: []string{"issuer/sub"}})}, "requestPrincipals"},
		{"notRequestPrincipals", Rule{From: from(Source{NotRequestPrincipals: []string{"*"}})}, "requestPrincipals"},
		{"request.auth.claims", Rule{When: []Condition{{Key: "request.auth.claims[iss]", Values: []string{"x"}}}}, "request.auth.claims[iss]"},
		{"experimental", Rule{When: []Condition{{Key: "experimental.envoy.filters.a.b[c]", Values: []string{"x"}}}}, "experimental"},
		{"unknown key", Rule{When: []Condition{{Key: "source.ips", Values: []string{"10.0.0.1"}}}}, "unknown when key"},
		{"when without values", Rule{When: []Condition{{Key: "source.ip"}}}, "neither values"},
		{"bad port", Rule{To: to(Operation{Ports: []string{"http"}})}, `"http"`},
		{"bad notPort", Rule{To: to(Operation{NotPorts: []string{"99999"}})}, `"99999"`},
		{"bad cidr", Rule{From: from(Source{IPBlocks: []string{"10.0.0.0/33"}})}, "10.0.0.0/33"},
		{"bad when cidr", Rule{When: []Condition{{Key: "source.ip", Values: []string{"nope"}}}}, "nope"},
		{"empty value", Rule{To: to(Operation{Methods: []string{""}})}, "methods"},
		{"bad service account", Rule{From: from(Source{ServiceAccounts: []string{"a/b/c"}})}, "a/b/c"},
	}
	for _, tt := range tests {
		allow := pol(t, "allow", "ALLOW", tt.rule)
		deny := pol(t, "deny", "DENY", tt.rule)
		for _, p := range []*Policy{allow, deny} {
			if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], tt.warn) || !strings.HasPrefix(p.Warnings[0], "rules[0]: ") {
				t.Errorf("%s %v: warnings %q, want one about %q", tt.name, p.Action, p.Warnings, tt.warn)
			}
		}
		if Matches(allow, req(), NormalizeStrict) {
			t.Errorf("%s: ALLOW matched; it must never match", tt.name)
		}
		if !Matches(deny, req(withPeer("")), NormalizeStrict) || !Matches(deny, req(), NormalizeStrict) {
			t.Errorf("%s: DENY did not match; it must be widened", tt.name)
		}
	}
	// A valid alternative survives an invalid one in an ALLOW.
	p := pol(t, "p", "ALLOW", Rule{To: to(Operation{Ports: []string{"http", "8080"}})})
	if !Matches(p, req(), NormalizeStrict) {
		t.Error("ALLOW ports [http, 8080] should still match 8080")
	}
	p = pol(t, "p", "ALLOW", Rule{From: from(Source{RequestPrincipals: []string{"*"}}, Source{Namespaces: []string{"shop"}})})
	if !Matches(p, req(), NormalizeStrict) {
		t.Error("ALLOW with an unsupported from entry should still match through the other entry")
	}
	// Other rules of the policy are untouched.
	p = pol(t, "p", "ALLOW", Rule{From: from(Source{RequestPrincipals: []string{"*"}})}, paths("/public"))
	if !Matches(p, req(), NormalizeStrict) {
		t.Error("the second rule should still match")
	}
}

func TestCompile_Refuses(t *testing.T) {
	sel := &WorkloadSelector{MatchLabels: map[string]string{"app": "x"}}
	gw := TargetRef{Group: GroupGateway, Kind: KindGateway, Name: "waypoint"}
	tests := []struct {
		name string
		spec Spec
		err  error
	}{
		{"custom", Spec{Action: "CUSTOM", Provider: &Provider{Name: "ext"}, TargetRefs: []TargetRef{gw}}, ErrCustomAction},
		{"unknown action", Spec{Action: "allow", TargetRefs: []TargetRef{gw}}, ErrUnknownAction},
		{"selector and targetRefs", Spec{Selector: sel, TargetRefs: []TargetRef{gw}}, ErrSelectorTargetRefs},
		{"targetRef and targetRefs", Spec{TargetRef: &gw, TargetRefs: []TargetRef{gw}}, ErrTargetRefAndRefs},
		{"no targetRefs", Spec{}, ErrNoTargetRefs},
		{"selector only", Spec{Selector: sel}, ErrNoTargetRefs},
		{"cross namespace", Spec{TargetRefs: []TargetRef{{Group: GroupGateway, Kind: KindGateway, Name: "w", Namespace: "other"}}}, ErrTargetRef},
		{"gateway wrong group", Spec{TargetRefs: []TargetRef{{Kind: KindGateway, Name: "w"}}}, ErrTargetRef},
		{"service wrong group", Spec{TargetRefs: []TargetRef{{Group: "apps", Kind: KindService, Name: "s"}}}, ErrTargetRef},
		{"unknown kind", Spec{TargetRefs: []TargetRef{{Kind: "Pod", Name: "p"}}}, ErrTargetRef},
		{"no name", Spec{TargetRefs: []TargetRef{{Group: GroupGateway, Kind: KindGateway}}}, ErrTargetRef},
	}
	for _, tt := range tests {
		p, err := Compile(Input{Namespace: ns, Name: "p", Spec: tt.spec})
		if p != nil || !errorsIs(err, tt.err) || !strings.HasPrefix(err.Error(), "l7authz: policy shop/p: ") {
			t.Errorf("%s: got %v, %v; want error %v", tt.name, p, err, tt.err)
		}
	}
	// The deprecated single targetRef works alone; "core" is the core group.
	for _, spec := range []Spec{
		{TargetRef: &gw},
		{TargetRefs: []TargetRef{{Group: "core", Kind: KindService, Name: "reviews", Namespace: ns}}},
		{TargetRefs: []TargetRef{{Group: GroupIstioNetworking, Kind: KindServiceEntry, Name: "ext"}}},
	} {
		if _, err := Compile(Input{Namespace: ns, Name: "p", Spec: spec}); err != nil {
			t.Errorf("%+v: %v", spec, err)
		}
	}
}

func TestApplicable(t *testing.T) {
	mk := func(ns, name string, refs ...TargetRef) *Policy {
		p, err := Compile(Input{Namespace: ns, Name: name, Spec: Spec{TargetRefs: refs}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	gw := TargetRef{Group: GroupGateway, Kind: KindGateway, Name: "waypoint"}
	svc := TargetRef{Kind: KindService, Name: "reviews"}
	class := TargetRef{Group: GroupGateway, Kind: KindGatewayClass, Name: "istio-waypoint"}
	onGateway := mk("shop", "on-gateway", gw)
	onService := mk("shop", "on-service", TargetRef{Group: "core", Kind: KindService, Name: "reviews"})
	onOtherService := mk("shop", "on-ratings", TargetRef{Kind: KindService, Name: "ratings"})
	onBoth := mk("shop", "on-both", svc, gw)
	otherNS := mk("billing", "on-gateway", gw)
	classRoot := mk("istio-system", "on-class", class)
	classNotRoot := mk("shop", "on-class", class)
	rootOnGateway := mk("istio-system", "root-gateway", gw)
	all := []*Policy{nil, onGateway, onService, onOtherService, onBoth, otherNS, classRoot, classNotRoot, rootOnGateway, onGateway}

	keys := func(ps []*Policy) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Key())
		}
		return out
	}
	got := keys(Applicable(all, "istio-system", GatewayTarget("shop", "waypoint"), GatewayClassTarget("istio-waypoint"), ServiceTarget("shop", "reviews")))
	want := []string{"shop/on-gateway", "shop/on-service", "shop/on-both", "istio-system/on-class"}
	if !slices.Equal(got, want) {
		t.Errorf("waypoint + class + reviews: got %q, want %q", got, want)
	}
	got = keys(Applicable(all, "istio-system", GatewayTarget("shop", "waypoint")))
	want = []string{"shop/on-gateway", "shop/on-both"}
	if !slices.Equal(got, want) {
		t.Errorf("waypoint only: got %q, want %q", got, want)
	}
	got = keys(Applicable(all, "istio-system", TargetRef{Group: "core", Kind: KindService, Namespace: "shop", Name: "ratings"}))
	want = []string{"shop/on-ratings"}
	if !slices.Equal(got, want) {
		t.Errorf("ratings: got %q, want %q", got, want)
	}
	if got := Applicable(all, "", GatewayClassTarget("istio-waypoint")); len(got) != 0 {
		t.Errorf("no root namespace: got %q, want none", keys(got))
	}
}

func TestPeerOf(t *testing.T) {
	if p := PeerOf(spiffeid.ID{}); p != (Peer{}) {
		t.Errorf("zero ID: %+v", p)
	}
	p := PeerOf(spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b"))
	if p != (Peer{Principal: "example.org/ns/a/sa/b", Namespace: "a", ServiceAccount: "b"}) {
		t.Errorf("workload ID: %+v", p)
	}
	p = PeerOf(spiffeid.RequireFromString("spiffe://example.org/other"))
	if p != (Peer{Principal: "example.org/other"}) {
		t.Errorf("non-workload ID: %+v", p)
	}
}

func TestEvaluate_DoesNotAllocate(t *testing.T) {
	policies := benchPolicies(t)
	r := req(withPath("/api/v1/items/42?x=1"))
	allocs := testing.AllocsPerRun(200, func() { Evaluate(policies, r) })
	if allocs != 0 {
		t.Errorf("Evaluate allocates %v times per request, want 0", allocs)
	}
}

// A connection that does not carry HTTP is judged as Istio judges TCP
// traffic: HTTP-only fields cannot hold, so ALLOW rules with them never
// match and DENY rules match without them.
func TestEvaluateConnection_HTTPFieldsFailClosed(t *testing.T) {
	conn := func(peer string, port uint16) *Connection {
		return &Connection{Source: PeerOf(spiffeid.RequireFromString(peer)),
			SourceIP: netip.MustParseAddr("10.244.1.5"), DestinationIP: netip.MustParseAddr("10.244.2.7"), DestinationPort: port}
	}
	const frontend, other = "spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/other/sa/x"
	allowGetPublic := pol(t, "allow-get-public", "ALLOW", Rule{To: to(Operation{Methods: []string{"GET"}, Paths: []string{"/public"}})})
	allowFrontend := pol(t, "allow-frontend", "ALLOW", Rule{From: from(Source{Namespaces: []string{"shop"}}), To: to(Operation{Ports: []string{"8080"}})})
	allowByHeader := pol(t, "allow-header", "ALLOW", Rule{When: []Condition{{Key: "request.headers[x-user]", Values: []string{"beta"}}}})
	denyPostAdmin := pol(t, "deny-post-admin", "DENY", Rule{
		From: from(Source{NotNamespaces: []string{"shop"}}),
		To:   to(Operation{Methods: []string{"POST"}, Paths: []string{"/admin"}, Ports: []string{"8080"}}),
	})
	denyByHeader := pol(t, "deny-header", "DENY", Rule{When: []Condition{{Key: "request.headers[x-evil]", Values: []string{"*"}}}})
	for _, tc := range []struct {
		name     string
		policies []*Policy
		c        *Connection
		allow    bool
		policy   string
	}{
		{"no policy", nil, conn(frontend, 8080), true, ""},
		{"ALLOW with methods and paths never matches", []*Policy{allowGetPublic}, conn(frontend, 8080), false, ""},
		{"ALLOW by header never matches", []*Policy{allowByHeader}, conn(frontend, 8080), false, ""},
		{"ALLOW by namespace and port matches", []*Policy{allowGetPublic, allowFrontend}, conn(frontend, 8080), true, "shop/allow-frontend"},
		{"ALLOW by port: other port", []*Policy{allowFrontend}, conn(frontend, 9090), false, ""},
		{"DENY widened to its source and port", []*Policy{denyPostAdmin}, conn(other, 8080), false, "shop/deny-post-admin"},
		{"DENY widened, source excluded", []*Policy{denyPostAdmin}, conn(frontend, 8080), true, ""},
		{"DENY widened, other port", []*Policy{denyPostAdmin}, conn(other, 9090), true, ""},
		{"DENY by header widened to everything", []*Policy{denyByHeader, allowFrontend}, conn(frontend, 8080), false, "shop/deny-header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := EvaluateConnection(tc.policies, tc.c)
			if d.Allow != tc.allow || d.Policy != tc.policy {
				t.Fatalf("EvaluateConnection = allow %v policy %q (%s), want allow %v policy %q", d.Allow, d.Policy, d.Reason, tc.allow, tc.policy)
			}
			if !d.Allow && d.Status != http.StatusForbidden {
				t.Fatalf("status %d, want 403", d.Status)
			}
		})
	}
	// The same policies still judge HTTP requests by their HTTP fields, and
	// the TCP view adds no warning to the policy's status.
	if d := Evaluate([]*Policy{allowGetPublic}, req()); !d.Allow {
		t.Fatalf("GET /public over HTTP: %+v", d)
	}
	if len(allowGetPublic.Warnings)+len(denyPostAdmin.Warnings) > 0 {
		t.Fatalf("warnings %q %q", allowGetPublic.Warnings, denyPostAdmin.Warnings)
	}
}
