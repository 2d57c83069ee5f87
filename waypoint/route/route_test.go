package route

import (
	"math"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/ambientmesh/ambient/proto/waypointapi"
)

// Builders: a table is a list of (match, rule) pairs in precedence order.

const svcKey = "default/reviews.default.svc.cluster.local"

func dest(name string) *pb.Destination {
	return &pb.Destination{Service: "default/" + name + ".default.svc.cluster.local", Port: 9080}
}

func be(name string, weight uint32, filters ...*pb.Filter) *pb.Backend {
	return &pb.Backend{Destination: dest(name), Weight: weight, Filters: filters}
}

func prefix(v string) *pb.PathMatch {
	return &pb.PathMatch{Type: pb.PathMatchType_PATH_MATCH_PATH_PREFIX, Value: v}
}
func exact(v string) *pb.PathMatch {
	return &pb.PathMatch{Type: pb.PathMatchType_PATH_MATCH_EXACT, Value: v}
}
func regex(v string) *pb.PathMatch {
	return &pb.PathMatch{Type: pb.PathMatchType_PATH_MATCH_REGULAR_EXPRESSION, Value: v}
}

func hdr(name, value string) *pb.HeaderMatch { return &pb.HeaderMatch{Name: name, Value: value} }
func hdrRe(name, value string) *pb.HeaderMatch {
	return &pb.HeaderMatch{Name: name, Value: value, Type: pb.StringMatchType_STRING_MATCH_REGULAR_EXPRESSION}
}
func qp(name, value string) *pb.QueryParamMatch { return &pb.QueryParamMatch{Name: name, Value: value} }

type entry struct {
	match *pb.RouteMatch
	rule  *pb.RouteRule
}

// table builds a ServiceRoutes from entries; entries sharing a rule pointer
// share the rule.
func table(t testing.TB, entries ...entry) *Table {
	t.Helper()
	src := &pb.ServiceRoutes{ServiceKey: svcKey}
	idx := map[*pb.RouteRule]uint32{}
	for _, e := range entries {
		i, ok := idx[e.rule]
		if !ok {
			i = uint32(len(src.Rules))
			idx[e.rule] = i
			src.Rules = append(src.Rules, e.rule)
		}
		m := e.match
		if m == nil {
			m = &pb.RouteMatch{}
		}
		m.Rule = i
		src.Matches = append(src.Matches, m)
	}
	tb, err := Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func to(backends ...*pb.Backend) *pb.RouteRule {
	return &pb.RouteRule{Route: "default/reviews", Backends: backends}
}

func get(path string) *RequestView {
	return &RequestView{Method: "GET", Scheme: "http", Host: "reviews", Port: 9080, Path: path, Header: http.Header{}}
}

func fixed(v uint64) func() uint64 { return func() uint64 { return v } }

func backendOf(d Decision) string {
	switch d.Action {
	case Forward:
		return d.Backend.GetService()
	default:
		return d.Action.String()
	}
}

func name(n string) string {
	if n == "NotFound" || n == "Fail" || n == "Redirect" {
		return n
	}
	return dest(n).Service
}

func TestSelect_PathPrefixMatchesWholeSegments(t *testing.T) {
	tb := table(t, entry{&pb.RouteMatch{Path: prefix("/foo")}, to(be("foo", 1))})
	for path, want := range map[string]string{
		"/foo":     "foo",
		"/foo/":    "foo",
		"/foo/bar": "foo",
		"/foobar":  "NotFound",
		"/fo":      "NotFound",
		"/Foo":     "NotFound", // paths are case-sensitive
		"/":        "NotFound",
		"":         "NotFound",
	} {
		if got := backendOf(tb.Select(get(path), fixed(0))); got != name(want) {
			t.Errorf("%q: got %s, want %s", path, got, want)
		}
	}
}

func TestSelect_PathPrefixTrailingSlashIgnored(t *testing.T) {
	tb := table(t, entry{&pb.RouteMatch{Path: prefix("/foo/")}, to(be("foo", 1))})
	for path, want := range map[string]string{"/foo": "foo", "/foo/": "foo", "/foo/x": "foo", "/foox": "NotFound"} {
		if got := backendOf(tb.Select(get(path), fixed(0))); got != name(want) {
			t.Errorf("%q: got %s, want %s", path, got, want)
		}
	}
}

func TestSelect_RootPrefixMatchesEverything(t *testing.T) {
	for _, m := range []*pb.RouteMatch{nil, {Path: prefix("/")}, {Path: prefix("")}} {
		tb := table(t, entry{m, to(be("all", 1))})
		for _, p := range []string{"/", "/a", "/a/b/c", ""} {
			if got := backendOf(tb.Select(get(p), fixed(0))); got != name("all") {
				t.Errorf("match %v, path %q: got %s", m, p, got)
			}
		}
	}
}

func TestSelect_ExactPathIsCaseSensitiveAndWhole(t *testing.T) {
	tb := table(t, entry{&pb.RouteMatch{Path: exact("/abc")}, to(be("abc", 1))})
	for path, want := range map[string]string{"/abc": "abc", "/abc/": "NotFound", "/Abc": "NotFound", "/abcd": "NotFound"} {
		if got := backendOf(tb.Select(get(path), fixed(0))); got != name(want) {
			t.Errorf("%q: got %s, want %s", path, got, want)
		}
	}
}

func TestSelect_RegexMustMatchWholePath(t *testing.T) {
	tb := table(t, entry{&pb.RouteMatch{Path: regex(`/v[0-9]+/.*`)}, to(be("api", 1))})
	for path, want := range map[string]string{"/v1/x": "api", "/v12/": "api", "/x/v1/y": "NotFound", "/V1/x": "NotFound"} {
		if got := backendOf(tb.Select(get(path), fixed(0))); got != name(want) {
			t.Errorf("%q: got %s, want %s", path, got, want)
		}
	}
}

// The spec's canary example: x-user: beta goes to v2, everything else to v1.
func TestSelect_HeaderMatchRoutesBetaUsersToV2(t *testing.T) {
	tb := table(t,
		entry{&pb.RouteMatch{Path: prefix("/"), Headers: []*pb.HeaderMatch{hdr("x-user", "beta")}}, to(be("v2", 1))},
		entry{&pb.RouteMatch{Path: prefix("/")}, to(be("v1", 1))},
	)
	cases := []struct {
		header http.Header
		want   string
	}{
		{http.Header{"X-User": {"beta"}}, "v2"},
		{http.Header{"X-User": {"Beta"}}, "v1"}, // values are case-sensitive
		{http.Header{"X-User": {"alpha"}}, "v1"},
		{http.Header{}, "v1"},
		{http.Header{"X-User": {"beta", "gamma"}}, "v1"}, // joined "beta,gamma"
	}
	for _, c := range cases {
		req := get("/reviews/1")
		req.Header = c.header
		if got := backendOf(tb.Select(req, fixed(0))); got != name(c.want) {
			t.Errorf("%v: got %s, want %s", c.header, got, c.want)
		}
	}
}

func TestSelect_HeaderNamesAreCaseInsensitive(t *testing.T) {
	for _, n := range []string{"x-user", "X-USER", "X-User", "x-UsEr"} {
		tb := table(t, entry{&pb.RouteMatch{Headers: []*pb.HeaderMatch{hdr(n, "beta")}}, to(be("v2", 1))})
		req := get("/")
		req.Header = http.Header{"X-User": {"beta"}}
		if got := backendOf(tb.Select(req, fixed(0))); got != name("v2") {
			t.Errorf("header name %q: got %s", n, got)
		}
	}
}

func TestSelect_AllHeadersMustMatch(t *testing.T) {
	tb := table(t, entry{&pb.RouteMatch{Headers: []*pb.HeaderMatch{hdr("a", "1"), hdrRe("b", "[0-9]+")}}, to(be("ab", 1))})
	cases := []struct {
		h    http.Header
		want string
	}{
		{http.Header{"A": {"1"}, "B": {"42"}}, "ab"},
		{http.Header{"A": {"1"}, "B": {"x42"}}, "NotFound"}, // regex is anchored
		{http.Header{"A": {"1"}}, "NotFound"},
		{http.Header{"B": {"1"}}, "NotFound"},
	}
	for _, c := range cases {
		req := get("/")
		req.Header = c.h
		if got := backendOf(tb.Select(req, fixed(0))); got != name(c.want) {
			t.Errorf("%v: got %s, want %s", c.h, got, c.want)
		}
	}
}

func TestSelect_HostHeaderMatchReadsHost(t *testing.T) {
	tb := table(t, entry{&pb.RouteMatch{Headers: []*pb.HeaderMatch{hdr("host", "reviews:9080")}}, to(be("v1", 1))})
	req := get("/")
	req.Host = "reviews:9080"
	if got := backendOf(tb.Select(req, fixed(0))); got != name("v1") {
		t.Errorf("got %s", got)
	}
}

func TestSelect_QueryParams(t *testing.T) {
	tb := table(t,
		entry{&pb.RouteMatch{QueryParams: []*pb.QueryParamMatch{qp("animal", "whale"), qp("color", "blue")}}, to(be("blue-whale", 1))},
		entry{&pb.RouteMatch{QueryParams: []*pb.QueryParamMatch{qp("animal", "whale")}}, to(be("whale", 1))},
		entry{&pb.RouteMatch{QueryParams: []*pb.QueryParamMatch{{Name: "id", Value: "[0-9]+", Type: pb.StringMatchType_STRING_MATCH_REGULAR_EXPRESSION}}}, to(be("id", 1))},
		entry{&pb.RouteMatch{QueryParams: []*pb.QueryParamMatch{qp("q", "a b&c")}}, to(be("encoded", 1))},
	)
	for query, want := range map[string]string{
		"animal=whale":                    "whale",
		"animal=whale&color=blue":         "blue-whale",
		"color=blue&animal=whale":         "blue-whale",
		"animal=whale&animal=dolphin":     "whale", // first value
		"animal=dolphin&animal=whale":     "NotFound",
		"Animal=whale":                    "NotFound", // names are exact
		"animal=Whale":                    "NotFound",
		"id=123":                          "id",
		"id=12a":                          "NotFound",
		"q=a+b%26c":                       "encoded",
		"%71=a%20b%26c":                   "encoded",
		"":                                "NotFound",
		"&&animal=whale&":                 "whale",
		"animal":                          "NotFound",
		"bad=%zz&animal=whale&color=blue": "blue-whale",
	} {
		req := get("/")
		req.RawQuery = query
		if got := backendOf(tb.Select(req, fixed(0))); got != name(want) {
			t.Errorf("%q: got %s, want %s", query, got, want)
		}
	}
}

func TestSelect_Method(t *testing.T) {
	tb := table(t,
		entry{&pb.RouteMatch{Method: "POST"}, to(be("writer", 1))},
		entry{&pb.RouteMatch{}, to(be("reader", 1))},
	)
	for method, want := range map[string]string{"POST": "writer", "GET": "reader", "post": "reader", "PUT": "reader"} {
		req := get("/")
		req.Method = method
		if got := backendOf(tb.Select(req, fixed(0))); got != name(want) {
			t.Errorf("%s: got %s, want %s", method, got, want)
		}
	}
}

// The table is already in precedence order: the first match wins even when
// a later one is also satisfied, and a rule with several matches is
// reachable through each.
func TestSelect_FirstMatchInTableOrderWins(t *testing.T) {
	both := to(be("both", 1))
	tb := table(t,
		entry{&pb.RouteMatch{Path: exact("/a")}, both},
		entry{&pb.RouteMatch{Path: prefix("/a")}, to(be("prefix-a", 1))},
		entry{&pb.RouteMatch{Path: prefix("/b")}, both},
		entry{&pb.RouteMatch{Path: prefix("/")}, to(be("root", 1))},
	)
	for path, want := range map[string]string{"/a": "both", "/a/x": "prefix-a", "/b/x": "both", "/c": "root"} {
		d := tb.Select(get(path), fixed(0))
		if got := backendOf(d); got != name(want) {
			t.Errorf("%q: got %s, want %s", path, got, want)
		}
	}
}

func TestSelect_NoMatchIs404(t *testing.T) {
	for _, tb := range []*Table{table(t), table(t, entry{&pb.RouteMatch{Path: exact("/x")}, to(be("x", 1))})} {
		d := tb.Select(get("/y"), fixed(0))
		if d.Action != NotFound || d.Status != 404 || d.Rule != nil {
			t.Errorf("got %+v, want 404", d)
		}
	}
}

func share(t *testing.T, tb *Table, n int, seed uint64) map[string]int {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	got := map[string]int{}
	for range n {
		got[backendOf(tb.Select(get("/"), r.Uint64))]++
	}
	return got
}

func TestSelect_Weights90_10(t *testing.T) {
	tb := table(t, entry{nil, to(be("v1", 90), be("v2", 10))})
	for seed := range uint64(5) {
		got := share(t, tb, 2000, seed)
		if f := float64(got[name("v1")]) / 2000; math.Abs(f-0.9) > 0.03 {
			t.Errorf("seed %d: v1 got %.3f of traffic (%v), want 0.90±0.03", seed, f, got)
		}
		if got[name("v1")]+got[name("v2")] != 2000 {
			t.Errorf("seed %d: %v", seed, got)
		}
	}
}

func TestSelect_Weights0_100(t *testing.T) {
	tb := table(t, entry{nil, to(be("v1", 0), be("v2", 100))})
	if got := share(t, tb, 2000, 1); got[name("v2")] != 2000 {
		t.Errorf("got %v, want all to v2", got)
	}
	// The extremes of rnd stay inside the weights.
	for _, x := range []uint64{0, math.MaxUint64} {
		if got := backendOf(tb.Select(get("/"), fixed(x))); got != name("v2") {
			t.Errorf("rnd %d: got %s", x, got)
		}
	}
}

func TestSelect_WeightedPickIsDeterministic(t *testing.T) {
	tb := table(t, entry{nil, to(be("a", 1), be("b", 1), be("c", 2))})
	for x, want := range map[uint64]string{0: "a", 1 << 62: "b", 1<<63 - 1: "b", 1 << 63: "c", math.MaxUint64: "c"} {
		if got := backendOf(tb.Select(get("/"), fixed(x))); got != name(want) {
			t.Errorf("rnd %#x: got %s, want %s", x, got, want)
		}
	}
}

func TestSelect_InvalidBackendGets500ForItsShare(t *testing.T) {
	bad := &pb.Backend{Weight: 1, InvalidStatus: 500}
	tb := table(t, entry{nil, to(be("good", 1), bad)})
	got := share(t, tb, 2000, 7)
	if f := float64(got["Fail"]) / 2000; math.Abs(f-0.5) > 0.04 {
		t.Errorf("failures %.3f of requests (%v), want about half", f, got)
	}
	d := tb.Select(get("/"), fixed(math.MaxUint64))
	if d.Action != Fail || d.Status != 500 || d.Rule == nil {
		t.Errorf("got %+v", d)
	}
}

func TestSelect_RuleWithoutBackendsIs500(t *testing.T) {
	for _, r := range []*pb.RouteRule{to(), to(be("a", 0), be("b", 0))} {
		tb := table(t, entry{nil, r})
		if d := tb.Select(get("/"), fixed(0)); d.Action != Fail || d.Status != 500 {
			t.Errorf("%v: got %+v, want 500", r, d)
		}
	}
}

func redirectRule(rd *pb.Redirect) *pb.RouteRule {
	return &pb.RouteRule{Filters: []*pb.Filter{{Kind: &pb.Filter_RequestRedirect{RequestRedirect: rd}}}}
}

func full(p string) *pb.PathModifier {
	return &pb.PathModifier{Type: &pb.PathModifier_ReplaceFullPath{ReplaceFullPath: p}}
}

func replPrefix(p string) *pb.PathModifier {
	return &pb.PathModifier{Type: &pb.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: p}}
}

func TestSelect_Redirect(t *testing.T) {
	cases := []struct {
		name       string
		rd         *pb.Redirect
		match      *pb.PathMatch
		req        func(*RequestView)
		wantStatus int
		wantLoc    string
	}{
		{"defaults: 302, same scheme host and listener port", &pb.Redirect{}, nil, nil, 302, "http://reviews:9080/foo/bar"},
		{"hostname", &pb.Redirect{Hostname: "example.org"}, nil, nil, 302, "http://example.org:9080/foo/bar"},
		{"https scheme takes 443 and omits it", &pb.Redirect{Scheme: "https"}, nil, nil, 302, "https://reviews/foo/bar"},
		{"http scheme takes 80 and omits it", &pb.Redirect{Scheme: "http"}, nil, nil, 302, "http://reviews/foo/bar"},
		{"explicit port", &pb.Redirect{Scheme: "https", Port: 8443}, nil, nil, 302, "https://reviews:8443/foo/bar"},
		{"explicit well-known port omitted", &pb.Redirect{Port: 80}, nil, nil, 302, "http://reviews/foo/bar"},
		{"listener port 80 omitted", &pb.Redirect{}, nil, func(r *RequestView) { r.Port = 80 }, 302, "http://reviews/foo/bar"},
		{"request port in Host is ignored", &pb.Redirect{Hostname: "x"}, nil, func(r *RequestView) { r.Host = "reviews:1234" }, 302, "http://x:9080/foo/bar"},
		{"status 301", &pb.Redirect{StatusCode: 301}, nil, nil, 301, "http://reviews:9080/foo/bar"},
		{"status 308", &pb.Redirect{StatusCode: 308, Scheme: "https"}, nil, nil, 308, "https://reviews/foo/bar"},
		{"full path", &pb.Redirect{Path: full("/new")}, nil, nil, 302, "http://reviews:9080/new"},
		{"prefix path", &pb.Redirect{Path: replPrefix("/v2")}, prefix("/foo"), nil, 302, "http://reviews:9080/v2/bar"},
		{"query kept", &pb.Redirect{Hostname: "h"}, nil, func(r *RequestView) { r.RawQuery = "a=1&b=2" }, 302, "http://h:9080/foo/bar?a=1&b=2"},
		{"https request keeps scheme", &pb.Redirect{}, nil, func(r *RequestView) { r.Scheme = "https"; r.Port = 443 }, 302, "https://reviews/foo/bar"},
		{"ipv6 host", &pb.Redirect{}, nil, func(r *RequestView) { r.Host = "[fd00::1]:9080" }, 302, "http://[fd00::1]:9080/foo/bar"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tb := table(t, entry{&pb.RouteMatch{Path: c.match}, redirectRule(c.rd)})
			req := get("/foo/bar")
			if c.req != nil {
				c.req(req)
			}
			d := tb.Select(req, fixed(0))
			if d.Action != Redirect || d.Status != c.wantStatus || d.Location != c.wantLoc {
				t.Errorf("got %v %d %q, want Redirect %d %q", d.Action, d.Status, d.Location, c.wantStatus, c.wantLoc)
			}
			if d.Backend != nil {
				t.Errorf("redirect has backend %v", d.Backend)
			}
		})
	}
}

// The table in the HTTPPathModifier.replacePrefixMatch documentation.
func TestSelect_RewriteReplacePrefixMatch(t *testing.T) {
	cases := []struct{ path, prefix, repl, want string }{
		{"/foo/bar", "/foo", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo", "/xyz/", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz/", "/xyz/bar"},
		{"/foo", "/foo", "/xyz", "/xyz"},
		{"/foo/", "/foo", "/xyz", "/xyz/"},
		{"/foo/bar", "/foo", "", "/bar"},
		{"/foo/", "/foo", "", "/"},
		{"/foo", "/foo", "", "/"},
		{"/foo/", "/foo", "/", "/"},
		{"/foo", "/foo", "/", "/"},
		// Beyond the table.
		{"/anything", "/", "/v2", "/v2/anything"},
		{"/", "/", "/v2", "/v2/"},
		{"/foo/bar/baz", "/foo/bar", "/x", "/x/baz"},
	}
	for _, c := range cases {
		r := to(be("v1", 1))
		r.Filters = []*pb.Filter{{Kind: &pb.Filter_UrlRewrite{UrlRewrite: &pb.URLRewrite{Path: replPrefix(c.repl)}}}}
		tb := table(t, entry{&pb.RouteMatch{Path: prefix(c.prefix)}, r})
		d := tb.Select(get(c.path), fixed(0))
		if d.Action != Forward || d.Path != c.want {
			t.Errorf("path %q prefix %q replace %q: got %v %q, want %q", c.path, c.prefix, c.repl, d.Action, d.Path, c.want)
		}
	}
}

func TestSelect_RewriteFullPathAndHostname(t *testing.T) {
	r := to(be("v1", 1))
	r.Filters = []*pb.Filter{{Kind: &pb.Filter_UrlRewrite{UrlRewrite: &pb.URLRewrite{Hostname: "internal.example", Path: full("/one")}}}}
	d := table(t, entry{&pb.RouteMatch{Path: prefix("/foo")}, r}).Select(get("/foo/bar"), fixed(0))
	if d.Path != "/one" || d.Host != "internal.example" || d.Backend.GetService() != name("v1") {
		t.Errorf("got %+v", d)
	}
	// No rewrite: nothing to change.
	d = table(t, entry{nil, to(be("v1", 1))}).Select(get("/foo"), fixed(0))
	if d.Path != "" || d.Host != "" {
		t.Errorf("got path %q host %q, want both empty", d.Path, d.Host)
	}
}

func hm(set, add map[string]string, remove ...string) *pb.HeaderModifier {
	m := &pb.HeaderModifier{Remove: remove}
	for k, v := range set {
		m.Set = append(m.Set, &pb.Header{Name: k, Value: v})
	}
	for k, v := range add {
		m.Add = append(m.Add, &pb.Header{Name: k, Value: v})
	}
	return m
}

func TestSelect_HeaderModifiersInOrderRuleThenBackend(t *testing.T) {
	req1 := &pb.Filter{Kind: &pb.Filter_RequestHeaderModifier{RequestHeaderModifier: hm(map[string]string{"x-set": "rule"}, map[string]string{"x-add": "rule"}, "x-drop")}}
	req2 := &pb.Filter{Kind: &pb.Filter_RequestHeaderModifier{RequestHeaderModifier: hm(map[string]string{"x-set": "backend"}, nil)}}
	resp := &pb.Filter{Kind: &pb.Filter_ResponseHeaderModifier{ResponseHeaderModifier: hm(nil, map[string]string{"x-served-by": "v1"})}}
	r := to(be("v1", 1, req2), be("v2", 1))
	r.Filters = []*pb.Filter{req1, resp}
	tb := table(t, entry{nil, r})

	apply := func(muts []*HeaderMutation, h http.Header) http.Header {
		for _, m := range muts {
			m.Apply(h)
		}
		return h
	}
	in := func() http.Header { return http.Header{"X-Add": {"client"}, "X-Drop": {"secret"}, "X-Set": {"client"}} }

	d := tb.Select(get("/"), fixed(0)) // v1
	if got, want := apply(d.RequestHeaders, in()), (http.Header{"X-Add": {"client", "rule"}, "X-Set": {"backend"}}); !cmp.Equal(got, want) {
		t.Errorf("v1 request headers: %s", cmp.Diff(want, got))
	}
	if got, want := apply(d.ResponseHeaders, http.Header{}), (http.Header{"X-Served-By": {"v1"}}); !cmp.Equal(got, want) {
		t.Errorf("v1 response headers: %s", cmp.Diff(want, got))
	}
	d = tb.Select(get("/"), fixed(math.MaxUint64)) // v2: rule filters only
	if got, want := apply(d.RequestHeaders, in()), (http.Header{"X-Add": {"client", "rule"}, "X-Set": {"rule"}}); !cmp.Equal(got, want) {
		t.Errorf("v2 request headers: %s", cmp.Diff(want, got))
	}
}

func mirrorFilter(name string, num, den uint32) *pb.Filter {
	return &pb.Filter{Kind: &pb.Filter_RequestMirror{RequestMirror: &pb.Mirror{Backend: dest(name), Numerator: num, Denominator: den}}}
}

func TestSelect_Mirrors(t *testing.T) {
	r := to(be("v1", 1))
	r.Filters = []*pb.Filter{mirrorFilter("shadow", 0, 0), mirrorFilter("half", 50, 100), mirrorFilter("never", 0, 100)}
	tb := table(t, entry{nil, r})
	rng := rand.New(rand.NewPCG(1, 2))
	counts := map[string]int{}
	for range 2000 {
		d := tb.Select(get("/"), rng.Uint64)
		for _, m := range d.Mirrors {
			counts[m.Service]++
		}
	}
	if counts[name("shadow")] != 2000 || counts[name("never")] != 0 {
		t.Errorf("got %v, want shadow always and never never", counts)
	}
	if f := float64(counts[name("half")]) / 2000; math.Abs(f-0.5) > 0.04 {
		t.Errorf("half mirrored %.3f of requests", f)
	}
	// Without fractions every mirror is returned, from the shared list.
	r2 := to(be("v1", 1))
	r2.Filters = []*pb.Filter{mirrorFilter("a", 0, 0), mirrorFilter("b", 100, 100)}
	d := table(t, entry{nil, r2}).Select(get("/"), nil)
	if want := []Mirror{{dest("a").Service, 9080}, {dest("b").Service, 9080}}; !cmp.Equal(d.Mirrors, want) {
		t.Errorf("mirrors %v, want %v", d.Mirrors, want)
	}
}

func TestSelect_TimeoutsAndRetry(t *testing.T) {
	three := uint32(3)
	r := to(be("v1", 1))
	r.Timeouts = &pb.Timeouts{Request: durationpb.New(10 * time.Second), BackendRequest: durationpb.New(0)}
	r.Retry = &pb.Retry{Attempts: &three, Codes: []uint32{502, 503}, Backoff: durationpb.New(100 * time.Millisecond)}
	d := table(t, entry{nil, r}).Select(get("/"), fixed(0))
	want := Timeouts{Request: 10 * time.Second, RequestSet: true, BackendRequestSet: true}
	if d.Timeouts != want {
		t.Errorf("timeouts %+v, want %+v", d.Timeouts, want)
	}
	if wantR := (&Retry{Attempts: 3, AttemptsSet: true, Codes: []uint32{502, 503}, Backoff: 100 * time.Millisecond, BackoffSet: true}); !cmp.Equal(d.Retry, wantR) {
		t.Errorf("retry %+v, want %+v", d.Retry, wantR)
	}
	d = table(t, entry{nil, to(be("v1", 1))}).Select(get("/"), fixed(0))
	if d.Retry != nil || d.Timeouts != (Timeouts{}) {
		t.Errorf("unset timeouts/retry: got %+v %+v", d.Timeouts, d.Retry)
	}
}

// Gateway tables: the most specific matching hostname wins before list
// order (HTTPRouteSpec.hostnames), and a route whose hostnames do not
// match the Host never applies.
func TestSelect_GatewayHostnamePrecedence(t *testing.T) {
	withHosts := func(b string, hosts ...string) *pb.RouteRule {
		r := to(be(b, 1))
		r.Hostnames = hosts
		return r
	}
	tb := table(t,
		entry{&pb.RouteMatch{Path: exact("/x")}, withHosts("any")},
		entry{&pb.RouteMatch{Path: prefix("/")}, withHosts("wild", "*.example.com")},
		entry{&pb.RouteMatch{Path: prefix("/")}, withHosts("exact", "foo.example.com")},
		entry{&pb.RouteMatch{Path: prefix("/only")}, withHosts("other", "other.test")},
	)
	cases := []struct{ host, path, want string }{
		{"foo.example.com", "/", "exact"},
		{"FOO.example.com:8080", "/", "exact"},
		{"bar.example.com", "/", "wild"},
		{"a.b.example.com", "/", "wild"},
		{"example.com", "/x", "any"},
		{"example.com", "/", "NotFound"},
		{"foo.example.com", "/x", "exact"}, // hostname first, then match precedence
		{"other.test", "/", "NotFound"},
		{"other.test", "/only/1", "other"},
	}
	for _, c := range cases {
		req := get(c.path)
		req.Host = c.host
		if got := backendOf(tb.Select(req, fixed(0))); got != name(c.want) {
			t.Errorf("%s%s: got %s, want %s", c.host, c.path, got, c.want)
		}
	}
}

func TestCompile_RejectsBrokenTables(t *testing.T) {
	cases := map[string]*pb.ServiceRoutes{
		"bad path regex":              {Rules: []*pb.RouteRule{{}}, Matches: []*pb.RouteMatch{{Path: regex("(")}}},
		"bad header regex":            {Rules: []*pb.RouteRule{{}}, Matches: []*pb.RouteMatch{{Headers: []*pb.HeaderMatch{hdrRe("a", "[")}}}},
		"rule out of range":           {Rules: []*pb.RouteRule{{}}, Matches: []*pb.RouteMatch{{Rule: 1}}},
		"backend without destination": {Rules: []*pb.RouteRule{{Backends: []*pb.Backend{{Weight: 1}}}}},
		"mirror without backend":      {Rules: []*pb.RouteRule{{Filters: []*pb.Filter{{Kind: &pb.Filter_RequestMirror{RequestMirror: &pb.Mirror{}}}}}}},
	}
	for n, src := range cases {
		if _, err := Compile(src); err == nil {
			t.Errorf("%s: compiled", n)
		}
	}
}

func plainTable(t testing.TB) *Table {
	return table(t,
		entry{&pb.RouteMatch{Path: exact("/healthz")}, to(be("health", 1))},
		entry{&pb.RouteMatch{Path: prefix("/api/v2"), Method: "GET"}, to(be("api-v2", 1))},
		entry{&pb.RouteMatch{Path: prefix("/reviews"), Headers: []*pb.HeaderMatch{hdr("x-user", "beta")}, QueryParams: []*pb.QueryParamMatch{qp("debug", "1")}}, to(be("debug", 1))},
		entry{&pb.RouteMatch{Path: prefix("/reviews"), Headers: []*pb.HeaderMatch{hdr("x-user", "beta")}}, to(be("v2", 1))},
		entry{&pb.RouteMatch{Path: regex(`/ratings/[0-9]+`)}, to(be("ratings", 1))},
		entry{&pb.RouteMatch{Path: prefix("/")}, to(be("v1", 90), be("v3", 10))},
	)
}

func plainRequest() *RequestView {
	req := get("/reviews/42")
	req.RawQuery = "page=2&debug=0"
	req.Header = http.Header{"X-User": {"beta"}, "Accept": {"*/*"}, "User-Agent": {"curl"}}
	return req
}

func TestSelect_PlainMatchDoesNotAllocate(t *testing.T) {
	tb := plainTable(t)
	req := plainRequest()
	rnd := rand.New(rand.NewPCG(1, 2)).Uint64
	if d := tb.Select(req, rnd); backendOf(d) != name("v2") {
		t.Fatalf("got %s", backendOf(d))
	}
	if n := testing.AllocsPerRun(1000, func() { tb.Select(req, rnd) }); n != 0 {
		t.Errorf("Select allocated %v times per request", n)
	}
	weighted := get("/other")
	if n := testing.AllocsPerRun(1000, func() { tb.Select(weighted, rnd) }); n != 0 {
		t.Errorf("weighted Select allocated %v times per request", n)
	}
}

func BenchmarkSelect(b *testing.B) {
	tb := plainTable(b)
	rnd := rand.New(rand.NewPCG(1, 2)).Uint64
	for _, bc := range []struct {
		name string
		req  *RequestView
	}{
		{"header", plainRequest()},
		{"exact", get("/healthz")},
		{"weighted", get("/productpage")},
		{"regex", get("/ratings/7")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tb.Select(bc.req, rnd)
			}
		})
	}
}
