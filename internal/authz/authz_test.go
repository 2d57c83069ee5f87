package authz_test

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ambientmesh/ambient/internal/authz"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// Identities and addresses used throughout.
var (
	sleep   = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	curl    = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/curl")
	foreign = spiffeid.RequireFromString("spiffe://cluster.local/ns/other/sa/sleep")
	remote  = spiffeid.RequireFromString("spiffe://remote.example/ns/default/sa/sleep")
	odd     = spiffeid.RequireFromString("spiffe://cluster.local/not/a/workload")

	srcIP = netip.MustParseAddr("10.0.1.5")
	dstIP = netip.MustParseAddr("10.0.2.7")
)

// conn is a connection from sleep to dstIP:8080; opts adjust it.
func conn(opts ...func(*authz.Connection)) authz.Connection {
	c := authz.Connection{SrcIdentity: sleep, SrcIP: srcIP, DstIP: dstIP, DstPort: 8080, DstNamespace: "default"}
	for _, o := range opts {
		o(&c)
	}
	return c
}

func from(id spiffeid.ID) func(*authz.Connection) {
	return func(c *authz.Connection) { c.SrcIdentity = id }
}

func plaintext(c *authz.Connection) { c.SrcIdentity = spiffeid.ID{} }

func srcAt(ip string) func(*authz.Connection) {
	return func(c *authz.Connection) { c.SrcIP = netip.MustParseAddr(ip) }
}

func dstAt(ip string) func(*authz.Connection) {
	return func(c *authz.Connection) { c.DstIP = netip.MustParseAddr(ip) }
}

func port(p uint16) func(*authz.Connection) {
	return func(c *authz.Connection) { c.DstPort = p }
}

// Policy builders.

func exact(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
}

func prefix(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: s}}
}

func suffix(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: s}}
}

func presence() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
}

func cidr(s string) *security.Address {
	p := netip.MustParsePrefix(s)
	return &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}

func sa(ns, name string) *security.ServiceAccountMatch {
	return &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: name}
}

// rule is a Rules whose matches are ORed.
func rule(ms ...*security.Match) *security.Rules { return &security.Rules{Matches: ms} }

// group is a Group whose rules are ANDed.
func group(rs ...*security.Rules) *security.Group { return &security.Group{Rules: rs} }

func policy(name string, action security.Action, gs ...*security.Group) *security.Authorization {
	return &security.Authorization{Name: name, Namespace: "default", Scope: security.Scope_NAMESPACE, Action: action, Groups: gs}
}

func allow(name string, ms ...*security.Match) *security.Authorization {
	return policy(name, security.Action_ALLOW, group(rule(ms...)))
}

func deny(name string, ms ...*security.Match) *security.Authorization {
	return policy(name, security.Action_DENY, group(rule(ms...)))
}

func dryRun(p *security.Authorization) *security.Authorization {
	p.DryRun = true
	return p
}

func principals(s ...*security.StringMatch) *security.Match {
	return &security.Match{Principals: s}
}

func TestEvaluate(t *testing.T) {
	allowSleep := allow("allow-sleep", principals(exact("cluster.local/ns/default/sa/sleep")))
	denySleep := deny("deny-sleep", principals(exact("cluster.local/ns/default/sa/sleep")))

	tests := []struct {
		name     string
		conn     authz.Connection
		policies []*security.Authorization
		want     authz.Decision
	}{
		// Istio's decision order.
		{
			name: "no policies allow",
			conn: conn(),
			want: authz.Decision{Allowed: true, Reason: authz.ReasonNoAllowPolicy, DryRunAllowed: true},
		},
		{
			name:     "allow by principal admits the principal",
			conn:     conn(),
			policies: []*security.Authorization{allowSleep},
			want:     authz.Decision{Allowed: true, Policy: "default/allow-sleep", Reason: authz.ReasonAllowMatched, DryRunAllowed: true},
		},
		{
			name:     "allow by principal refuses another principal",
			conn:     conn(from(curl)),
			policies: []*security.Authorization{allowSleep},
			want:     authz.Decision{Allowed: false, Reason: authz.ReasonNoAllowMatched},
		},
		{
			name:     "deny beats allow",
			conn:     conn(),
			policies: []*security.Authorization{allowSleep, denySleep},
			want:     authz.Decision{Allowed: false, Policy: "default/deny-sleep", Reason: authz.ReasonDenyMatched},
		},
		{
			name:     "unmatched deny and no allow policy allow",
			conn:     conn(from(curl)),
			policies: []*security.Authorization{denySleep},
			want:     authz.Decision{Allowed: true, Reason: authz.ReasonNoAllowPolicy, DryRunAllowed: true},
		},
		{
			name: "any matching allow allows",
			conn: conn(from(curl)),
			policies: []*security.Authorization{
				allowSleep,
				allow("allow-curl", principals(exact("cluster.local/ns/default/sa/curl"))),
			},
			want: authz.Decision{Allowed: true, Policy: "default/allow-curl", Reason: authz.ReasonAllowMatched, DryRunAllowed: true},
		},
		{
			name:     "first matching deny is reported",
			conn:     conn(),
			policies: []*security.Authorization{allowSleep, deny("deny-port", &security.Match{DestinationPorts: []uint32{8080}}), denySleep},
			want:     authz.Decision{Allowed: false, Policy: "default/deny-port", Reason: authz.ReasonDenyMatched},
		},
		{
			name:     "unknown action is treated as deny",
			conn:     conn(),
			policies: []*security.Authorization{policy("weird", security.Action(7), group(rule(principals(presence()))))},
			want:     authz.Decision{Allowed: false, Policy: "default/weird", Reason: authz.ReasonDenyMatched},
		},
		{
			name:     "nil policies are skipped",
			conn:     conn(),
			policies: []*security.Authorization{nil, allowSleep, nil},
			want:     authz.Decision{Allowed: true, Policy: "default/allow-sleep", Reason: authz.ReasonAllowMatched, DryRunAllowed: true},
		},

		// Dry run.
		{
			name:     "dry-run deny does not deny but is reported",
			conn:     conn(),
			policies: []*security.Authorization{dryRun(deny("deny-sleep", principals(exact("cluster.local/ns/default/sa/sleep"))))},
			want: authz.Decision{
				Allowed: true, Reason: authz.ReasonNoAllowPolicy,
				DryRun: []string{"default/deny-sleep: would deny"}, DryRunAllowed: false,
			},
		},
		{
			name: "dry-run allow does not make allow policies exist",
			conn: conn(from(curl)),
			policies: []*security.Authorization{
				dryRun(allow("allow-sleep", principals(exact("cluster.local/ns/default/sa/sleep")))),
			},
			want: authz.Decision{Allowed: true, Reason: authz.ReasonNoAllowPolicy, DryRunAllowed: false},
		},
		{
			name: "dry-run allow that matches is reported",
			conn: conn(from(curl)),
			policies: []*security.Authorization{
				allowSleep,
				dryRun(allow("allow-curl", principals(exact("cluster.local/ns/default/sa/curl")))),
			},
			want: authz.Decision{
				Allowed: false, Reason: authz.ReasonNoAllowMatched,
				DryRun: []string{"default/allow-curl: would allow"}, DryRunAllowed: true,
			},
		},
		{
			name:     "unmatched dry-run deny is not reported",
			conn:     conn(from(curl)),
			policies: []*security.Authorization{dryRun(deny("deny-sleep", principals(exact("cluster.local/ns/default/sa/sleep"))))},
			want:     authz.Decision{Allowed: true, Reason: authz.ReasonNoAllowPolicy, DryRunAllowed: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := clonePolicies(tt.policies)
			got := authz.Evaluate(tt.conn, tt.policies)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Evaluate() mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, tt.policies, protocmp.Transform()); diff != "" {
				t.Errorf("Evaluate modified its policies (-before +after):\n%s", diff)
			}
		})
	}
}

func clonePolicies(ps []*security.Authorization) []*security.Authorization {
	if ps == nil {
		return nil
	}
	out := make([]*security.Authorization, len(ps))
	for i, p := range ps {
		if p != nil {
			out[i] = proto.Clone(p).(*security.Authorization)
		}
	}
	return out
}

// TestMatches covers the condition semantics: each case says whether the
// policy matches the connection.
func TestMatches(t *testing.T) {
	badAddr := &security.Address{Address: []byte{10, 0, 0}, Length: 8}
	longPrefix := &security.Address{Address: []byte{10, 0, 0, 0}, Length: 33}
	unset := &security.StringMatch{}

	tests := []struct {
		name   string
		conn   authz.Connection
		policy *security.Authorization
		want   bool
	}{
		// Principals and the spiffe:// scheme.
		{"principal exact without scheme", conn(), allow("p", principals(exact("cluster.local/ns/default/sa/sleep"))), true},
		{"principal exact with scheme", conn(), allow("p", principals(exact("spiffe://cluster.local/ns/default/sa/sleep"))), true},
		{"principal exact other", conn(from(curl)), allow("p", principals(exact("cluster.local/ns/default/sa/sleep"))), false},
		{"principal trust domain counts", conn(from(remote)), allow("p", principals(exact("cluster.local/ns/default/sa/sleep"))), false},
		{"principal prefix", conn(), allow("p", principals(prefix("cluster.local/ns/default/"))), true},
		{"principal prefix with scheme", conn(), allow("p", principals(prefix("spiffe://cluster.local/ns/default/"))), true},
		{"principal prefix other namespace", conn(from(foreign)), allow("p", principals(prefix("cluster.local/ns/default/"))), false},
		{"principal suffix", conn(from(remote)), allow("p", principals(suffix("/sa/sleep"))), true},
		{"principal suffix with scheme is whole ID", conn(), allow("p", principals(suffix("spiffe://cluster.local/ns/default/sa/sleep"))), true},
		{"principal suffix with scheme needs whole ID", conn(from(remote)), allow("p", principals(suffix("spiffe://e/ns/default/sa/sleep"))), false},
		{"principal presence", conn(), allow("p", principals(presence())), true},
		{"principal of non-workload ID", conn(from(odd)), allow("p", principals(exact("cluster.local/not/a/workload"))), true},
		{"principal any entry", conn(from(curl)), allow("p", principals(exact("cluster.local/ns/default/sa/sleep"), exact("cluster.local/ns/default/sa/curl"))), true},

		// Istio AuthorizationPolicy wildcards in exact values.
		{"wildcard star is presence", conn(from(remote)), allow("p", principals(exact("*"))), true},
		{"wildcard trailing star", conn(), allow("p", principals(exact("cluster.local/ns/default/*"))), true},
		{"wildcard trailing star other", conn(from(foreign)), allow("p", principals(exact("cluster.local/ns/default/*"))), false},
		{"wildcard trailing star with scheme", conn(), allow("p", principals(exact("spiffe://cluster.local/*"))), true},
		{"wildcard leading star", conn(from(foreign)), allow("p", principals(exact("*/sa/sleep"))), true},
		{"wildcard leading star other", conn(from(curl)), allow("p", principals(exact("*/sa/sleep"))), false},
		{"wildcard namespace", conn(), allow("p", &security.Match{Namespaces: []*security.StringMatch{exact("def*")}}), true},

		// not_principals.
		{"not_principals excludes", conn(), allow("p", &security.Match{NotPrincipals: []*security.StringMatch{exact("cluster.local/ns/default/sa/sleep")}}), false},
		{"not_principals admits others", conn(from(curl)), allow("p", &security.Match{NotPrincipals: []*security.StringMatch{exact("cluster.local/ns/default/sa/sleep")}}), true},

		// Namespaces.
		{"namespace exact", conn(), allow("p", &security.Match{Namespaces: []*security.StringMatch{exact("default")}}), true},
		{"namespace other", conn(from(foreign)), allow("p", &security.Match{Namespaces: []*security.StringMatch{exact("default")}}), false},
		{"namespace prefix", conn(from(foreign)), allow("p", &security.Match{Namespaces: []*security.StringMatch{prefix("oth")}}), true},
		{"namespace of non-workload ID", conn(from(odd)), allow("p", &security.Match{Namespaces: []*security.StringMatch{presence()}}), false},
		{"not_namespaces excludes", conn(), allow("p", &security.Match{NotNamespaces: []*security.StringMatch{exact("default")}}), false},
		{"not_namespaces admits others", conn(from(foreign)), allow("p", &security.Match{NotNamespaces: []*security.StringMatch{exact("default")}}), true},

		// Service accounts.
		{"service account", conn(), allow("p", &security.Match{ServiceAccounts: []*security.ServiceAccountMatch{sa("default", "sleep")}}), true},
		{"service account needs namespace", conn(from(foreign)), allow("p", &security.Match{ServiceAccounts: []*security.ServiceAccountMatch{sa("default", "sleep")}}), false},
		{"not_service_accounts excludes", conn(), allow("p", &security.Match{NotServiceAccounts: []*security.ServiceAccountMatch{sa("default", "sleep")}}), false},
		{"not_service_accounts admits others", conn(from(curl)), allow("p", &security.Match{NotServiceAccounts: []*security.ServiceAccountMatch{sa("default", "sleep")}}), true},

		// Source IPs.
		{"source CIDR", conn(), allow("p", &security.Match{SourceIps: []*security.Address{cidr("10.0.1.0/24")}}), true},
		{"source CIDR outside", conn(srcAt("10.0.3.5")), allow("p", &security.Match{SourceIps: []*security.Address{cidr("10.0.1.0/24")}}), false},
		{"source host", conn(), allow("p", &security.Match{SourceIps: []*security.Address{cidr("10.0.1.5/32")}}), true},
		{"source unmasked CIDR", conn(), allow("p", &security.Match{SourceIps: []*security.Address{cidr("10.0.1.77/24")}}), true},
		{"source zero-length CIDR", conn(), allow("p", &security.Match{SourceIps: []*security.Address{cidr("0.0.0.0/0")}}), true},
		{"source IPv6 CIDR", conn(srcAt("fd00::1:5")), allow("p", &security.Match{SourceIps: []*security.Address{cidr("fd00::/64")}}), true},
		{"source IPv4 not in IPv6 CIDR", conn(), allow("p", &security.Match{SourceIps: []*security.Address{cidr("::/0")}}), false},
		{"source mapped address matches IPv4 CIDR", conn(srcAt("::ffff:10.0.1.5")), allow("p", &security.Match{SourceIps: []*security.Address{cidr("10.0.1.0/24")}}), true},
		{"source mapped CIDR matches IPv4 address", conn(), allow("p", &security.Match{SourceIps: []*security.Address{cidr("::ffff:10.0.1.0/120")}}), true},
		{"not_source_ips excludes", conn(), allow("p", &security.Match{NotSourceIps: []*security.Address{cidr("10.0.1.0/24")}}), false},
		{"not_source_ips admits others", conn(srcAt("192.168.0.1")), allow("p", &security.Match{NotSourceIps: []*security.Address{cidr("10.0.1.0/24")}}), true},

		// Destination IPs and ports.
		{"destination CIDR", conn(), allow("p", &security.Match{DestinationIps: []*security.Address{cidr("10.0.2.0/24")}}), true},
		{"destination CIDR outside", conn(dstAt("10.9.9.9")), allow("p", &security.Match{DestinationIps: []*security.Address{cidr("10.0.2.0/24")}}), false},
		{"not_destination_ips excludes", conn(), allow("p", &security.Match{NotDestinationIps: []*security.Address{cidr("10.0.2.7/32")}}), false},
		{"not_destination_ips admits others", conn(dstAt("10.0.2.8")), allow("p", &security.Match{NotDestinationIps: []*security.Address{cidr("10.0.2.7/32")}}), true},
		{"port", conn(), allow("p", &security.Match{DestinationPorts: []uint32{80, 8080}}), true},
		{"port other", conn(port(9090)), allow("p", &security.Match{DestinationPorts: []uint32{80, 8080}}), false},
		{"not_destination_ports excludes", conn(), allow("p", &security.Match{NotDestinationPorts: []uint32{8080}}), false},
		{"not_destination_ports admits others", conn(port(9090)), allow("p", &security.Match{NotDestinationPorts: []uint32{8080}}), true},

		// Conditions within one match are ANDed; positive and not_ together.
		{"match ANDs fields", conn(), allow("p", &security.Match{Namespaces: []*security.StringMatch{exact("default")}, DestinationPorts: []uint32{8080}}), true},
		{"match ANDs fields one fails", conn(port(81)), allow("p", &security.Match{Namespaces: []*security.StringMatch{exact("default")}, DestinationPorts: []uint32{8080}}), false},
		{"positive and not_ in one field", conn(), allow("p", &security.Match{Namespaces: []*security.StringMatch{presence()}, NotPrincipals: []*security.StringMatch{suffix("/sa/curl")}}), true},
		{"positive and not_ in one field excluded", conn(from(curl)), allow("p", &security.Match{Namespaces: []*security.StringMatch{presence()}, NotPrincipals: []*security.StringMatch{suffix("/sa/curl")}}), false},

		// Connections without identity.
		{"plaintext matches no principal", conn(plaintext), allow("p", principals(presence())), false},
		{"plaintext matches no wildcard principal", conn(plaintext), allow("p", principals(exact("*"))), false},
		{"plaintext matches no namespace", conn(plaintext), allow("p", &security.Match{Namespaces: []*security.StringMatch{presence()}}), false},
		{"plaintext matches no empty namespace", conn(plaintext), allow("p", &security.Match{Namespaces: []*security.StringMatch{exact("")}}), false},
		{"plaintext matches no service account", conn(plaintext), allow("p", &security.Match{ServiceAccounts: []*security.ServiceAccountMatch{sa("", "")}}), false},
		{"plaintext satisfies not_principals", conn(plaintext), allow("p", &security.Match{NotPrincipals: []*security.StringMatch{exact("cluster.local/ns/default/sa/sleep")}}), true},
		{"plaintext satisfies not_principals presence", conn(plaintext), deny("p", &security.Match{NotPrincipals: []*security.StringMatch{presence()}}), true},
		{"plaintext satisfies not_namespaces", conn(plaintext), allow("p", &security.Match{NotNamespaces: []*security.StringMatch{exact("default")}}), true},
		{"plaintext satisfies not_service_accounts", conn(plaintext), allow("p", &security.Match{NotServiceAccounts: []*security.ServiceAccountMatch{sa("default", "sleep")}}), true},
		{"plaintext still matches by source IP", conn(plaintext), allow("p", &security.Match{SourceIps: []*security.Address{cidr("10.0.0.0/8")}}), true},

		// Structure: groups ANY, rules ALL, matches ANY.
		{"no groups never match", conn(), policy("p", security.Action_ALLOW), false},
		{"empty group matches all", conn(plaintext), policy("p", security.Action_ALLOW, group()), true},
		{"empty rules match", conn(), policy("p", security.Action_ALLOW, group(rule(), rule(principals(presence())))), true},
		{"empty match is skipped", conn(), allow("p", &security.Match{}), false},
		{"empty match is skipped beside a failing one", conn(port(1)), allow("p", &security.Match{}, &security.Match{DestinationPorts: []uint32{8080}}), false},
		{
			"any group matches",
			conn(from(curl)),
			policy("p", security.Action_ALLOW,
				group(rule(principals(exact("cluster.local/ns/default/sa/sleep")))),
				group(rule(principals(exact("cluster.local/ns/default/sa/curl"))))),
			true,
		},
		{
			"all rules of a group must match",
			conn(from(curl)),
			policy("p", security.Action_ALLOW,
				group(
					rule(principals(exact("cluster.local/ns/default/sa/curl"))),
					rule(&security.Match{DestinationPorts: []uint32{9090}}))),
			false,
		},
		{
			"all rules of a group match",
			conn(from(curl), port(9090)),
			policy("p", security.Action_ALLOW,
				group(
					rule(principals(exact("cluster.local/ns/default/sa/curl"))),
					rule(&security.Match{DestinationPorts: []uint32{9090}}))),
			true,
		},
		{
			"any match of a rule matches",
			conn(port(9090)),
			policy("p", security.Action_ALLOW,
				group(rule(
					&security.Match{DestinationPorts: []uint32{8080}},
					&security.Match{Namespaces: []*security.StringMatch{exact("default")}}))),
			true,
		},

		// Malformed entries fail closed: narrower ALLOW, wider DENY.
		{"allow bad address does not match", conn(), allow("p", &security.Match{SourceIps: []*security.Address{badAddr}}), false},
		{"deny bad address matches", conn(), deny("p", &security.Match{SourceIps: []*security.Address{badAddr}}), true},
		{"allow too long prefix does not match", conn(), allow("p", &security.Match{DestinationIps: []*security.Address{longPrefix}}), false},
		{"allow bad not_ address does not match", conn(), allow("p", &security.Match{NotSourceIps: []*security.Address{badAddr}}), false},
		{"deny bad not_ address matches", conn(), deny("p", &security.Match{NotSourceIps: []*security.Address{badAddr}}), true},
		{"allow bad entry beside a good one", conn(), allow("p", &security.Match{SourceIps: []*security.Address{badAddr, cidr("10.0.1.0/24")}}), true},
		{"allow unset string match does not match", conn(), allow("p", principals(unset)), false},
		{"deny unset string match matches", conn(), deny("p", principals(unset)), true},
		{"deny unset string match matches plaintext", conn(plaintext), deny("p", &security.Match{Namespaces: []*security.StringMatch{nil}}), true},
		{"allow port out of range does not match", conn(port(8080)), allow("p", &security.Match{DestinationPorts: []uint32{8080 + 65536}}), false},
		{"deny port out of range matches", conn(port(1)), deny("p", &security.Match{DestinationPorts: []uint32{8080 + 65536}}), true},

		{"nil policy matches nothing", conn(), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := authz.Matches(tt.conn, tt.policy); got != tt.want {
				t.Errorf("Matches(%v) = %v, want %v", tt.policy, got, tt.want)
			}
		})
	}
}

func TestApplicable(t *testing.T) {
	scoped := func(ns, name string, scope security.Scope) *security.Authorization {
		return &security.Authorization{Namespace: ns, Name: name, Scope: scope, Groups: []*security.Group{{}}}
	}
	global := scoped("istio-system", "global", security.Scope_GLOBAL)
	nsDefault := scoped("default", "ns", security.Scope_NAMESPACE)
	nsOther := scoped("other", "ns", security.Scope_NAMESPACE)
	nsRoot := scoped("istio-system", "root-ns", security.Scope_NAMESPACE)
	selDefault := scoped("default", "sel", security.Scope_WORKLOAD_SELECTOR)
	selOther := scoped("default", "sel-other", security.Scope_WORKLOAD_SELECTOR)
	unknownScope := scoped("default", "future", security.Scope(9))
	all := []*security.Authorization{global, nsDefault, nsOther, nsRoot, selDefault, selOther, unknownScope, nil}

	tests := []struct {
		name  string
		ns    string
		named []string
		root  string
		want  []*security.Authorization
	}{
		{"namespace and global", "default", nil, "", []*security.Authorization{global, nsDefault}},
		{"other namespace", "other", nil, "", []*security.Authorization{global, nsOther}},
		{"root namespace policies apply everywhere", "other", nil, "istio-system", []*security.Authorization{global, nsOther, nsRoot}},
		{"selector only when named", "default", []string{"default/sel"}, "", []*security.Authorization{global, nsDefault, selDefault}},
		{"named applies whatever its scope", "default", []string{"other/ns"}, "", []*security.Authorization{global, nsDefault, nsOther}},
		{"unknown scope only when named", "default", []string{"default/future"}, "", []*security.Authorization{global, nsDefault, unknownScope}},
		{"unknown names are ignored", "nowhere", []string{"nowhere/missing"}, "", []*security.Authorization{global}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := authz.Applicable(all, tt.ns, tt.named, tt.root)
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Applicable mismatch (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("duplicate keys kept once", func(t *testing.T) {
		got := authz.Applicable([]*security.Authorization{global, nsDefault, global}, "default", []string{"default/ns"}, "")
		if diff := cmp.Diff([]*security.Authorization{global, nsDefault}, got, protocmp.Transform()); diff != "" {
			t.Errorf("Applicable mismatch (-want +got):\n%s", diff)
		}
	})
}

func TestStrictPolicy(t *testing.T) {
	// Istio's control plane sends exactly this for PeerAuthentication STRICT.
	want := &security.Authorization{
		Name:      "istio_converted_static_strict",
		Namespace: "istio-system",
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
			NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{}}},
		}}}}}},
	}
	strict := authz.StrictPolicy("istio-system")
	if diff := cmp.Diff(want, strict, protocmp.Transform()); diff != "" {
		t.Fatalf("StrictPolicy mismatch (-want +got):\n%s", diff)
	}
	if got, want := authz.Key(strict), "istio-system/"+authz.StrictPolicyName; got != want {
		t.Errorf("Key = %q, want %q", got, want)
	}

	t.Run("applies only to workloads that name it", func(t *testing.T) {
		if got := authz.Applicable([]*security.Authorization{strict}, "default", nil, "istio-system"); len(got) != 0 {
			t.Errorf("Applicable without naming = %v, want none", got)
		}
		got := authz.Applicable([]*security.Authorization{strict}, "default", []string{"istio-system/" + authz.StrictPolicyName}, "istio-system")
		if len(got) != 1 || got[0] != strict {
			t.Errorf("Applicable when named = %v, want the strict policy", got)
		}
	})

	allowPlain := allow("allow-lan", &security.Match{SourceIps: []*security.Address{cidr("10.0.0.0/8")}})
	tests := []struct {
		name     string
		conn     authz.Connection
		policies []*security.Authorization
		want     authz.Decision
	}{
		{
			name:     "denies a connection without identity",
			conn:     conn(plaintext),
			policies: []*security.Authorization{strict},
			want:     authz.Decision{Allowed: false, Policy: "istio-system/istio_converted_static_strict", Reason: authz.ReasonDenyMatched},
		},
		{
			name:     "allows a connection with identity",
			conn:     conn(),
			policies: []*security.Authorization{strict},
			want:     authz.Decision{Allowed: true, Reason: authz.ReasonNoAllowPolicy, DryRunAllowed: true},
		},
		{
			name:     "allows a non-workload identity",
			conn:     conn(from(odd)),
			policies: []*security.Authorization{strict},
			want:     authz.Decision{Allowed: true, Reason: authz.ReasonNoAllowPolicy, DryRunAllowed: true},
		},
		{
			name:     "beats an allow that admits plaintext",
			conn:     conn(plaintext),
			policies: []*security.Authorization{allowPlain, strict},
			want:     authz.Decision{Allowed: false, Policy: "istio-system/istio_converted_static_strict", Reason: authz.ReasonDenyMatched},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, authz.Evaluate(tt.conn, tt.policies)); diff != "" {
				t.Errorf("Evaluate() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEvaluate_DenyByPrincipalDoesNotCatchPlaintext(t *testing.T) {
	// Follows Istio: principal conditions never match a connection without
	// identity, so a DENY naming principals lets plaintext through; STRICT
	// (or a not_principals DENY) is what refuses plaintext.
	d := authz.Evaluate(conn(plaintext), []*security.Authorization{deny("deny-all-ids", principals(presence()))})
	if !d.Allowed {
		t.Errorf("Evaluate = %+v, want allowed", d)
	}
}
