package proxy

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ambientmesh/ambient/waypoint/route"
)

var pathCases = []string{"/", "/echo", "/a/b/c", "/a:b@c;d=e,f+g$h&i~j.k_l-m", "/api/v1/items/42",
	"", "echo", "//host/x", "///x", "/a%2Fb", "/a%zz", "/a?b", "/a#b", "/a b", "/a\x00", "/a!*'()", "/ü",
	"http://h/x", "/a\\b", "/[x]", "/a|b", "/a\"b", "/a<b>", "/a{b}", "/a^b", "/a`b", "/x\x7f"}

// TestPlainPath_IsWhatURLParseReturnsAsIs: a plain path needs no parsing.
func TestPlainPath_IsWhatURLParseReturnsAsIs(t *testing.T) {
	for c := range 256 {
		pathCases = append(pathCases, "/a"+string([]byte{byte(c)})+"b")
	}
	for _, p := range pathCases {
		checkPlainPath(t, p)
	}
}

func FuzzPlainPath(f *testing.F) {
	for _, p := range pathCases {
		f.Add(p)
	}
	f.Fuzz(checkPlainPath)
}

func checkPlainPath(t *testing.T, p string) {
	if !plainPath(p) {
		return
	}
	u, err := url.Parse(p)
	if err != nil || !reflect.DeepEqual(u, &url.URL{Path: p}) {
		t.Errorf("plainPath(%q), but url.Parse = %#v, %v", p, u, err)
	}
}

// TestUpReq_SetURLAsURLParse: the upstream URL is url.Parse's, whether
// the path is parsed or not; a host, a scheme or a bad escape is refused.
func TestUpReq_SetURLAsURLParse(t *testing.T) {
	for _, p := range pathCases {
		var o upReq
		ok := o.setURL(p, "q=1")
		u, err := url.Parse(p)
		if wantOK := err == nil && u.Host == "" && u.Scheme == ""; ok != wantOK {
			t.Errorf("setURL(%q) = %v, want %v", p, ok, wantOK)
			continue
		}
		if !ok {
			continue
		}
		u.Scheme, u.RawQuery = "http", "q=1"
		if !reflect.DeepEqual(&o.url, u) {
			t.Errorf("setURL(%q): %#v, want %#v", p, o.url, *u)
		}
	}
}

func TestIsHopByHop_IsTheList(t *testing.T) {
	for _, k := range append(slices.Clone(hopByHop), "Te", "X-Forwarded-Proto", "te", "Upgrades", "") {
		if got, want := isHopByHop(k), slices.Contains(hopByHop, k); got != want {
			t.Errorf("isHopByHop(%q) = %v, want %v", k, got, want)
		}
	}
}

// upstreamHeaderByClone is upstreamHeader as it was first written: the
// reference for the one that copies less.
func upstreamHeaderByClone(r *http.Request, muts []*route.HeaderMutation) http.Header {
	h := r.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	for _, c := range r.Header.Values("Connection") {
		for _, name := range strings.Split(c, ",") {
			h.Del(strings.TrimSpace(name))
		}
	}
	trailers := slices.ContainsFunc(r.Header.Values("Te"), func(v string) bool { return strings.Contains(strings.ToLower(v), "trailers") })
	for _, k := range hopByHop {
		delete(h, k)
	}
	if trailers {
		h["Te"] = []string{"trailers"}
	}
	if _, ok := h["X-Forwarded-Proto"]; !ok {
		h["X-Forwarded-Proto"] = []string{"http"}
	}
	if _, ok := h["X-Request-Id"]; !ok {
		h["X-Request-Id"] = []string{"generated"}
	}
	for _, m := range muts {
		m.Apply(h)
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""}
	}
	return h
}

func TestUpstreamHeader_AsHeaderClone(t *testing.T) {
	muts := []*route.HeaderMutation{{Set: []route.HeaderValue{{Name: "X-Set", Value: "1"}},
		Add: []route.HeaderValue{{Name: "X-Multi", Value: "added"}}, Remove: []string{"X-Gone"}}}
	for _, h := range []http.Header{
		nil,
		{},
		{"X-Multi": {"a", "b"}, "X-One": {"1"}, "X-Nil": nil, "X-Empty": {}, "X-Gone": {"x"}},
		{"Connection": {"close, X-Multi", "X-Forwarded-Proto"}, "X-Multi": {"a"}, "X-Forwarded-Proto": {"https"}, "Keep-Alive": {"1"}},
		{"Te": {"gzip, Trailers"}, "Transfer-Encoding": {"chunked"}, "Upgrade": {"ws"}, "Trailer": {"X"}, "Proxy-Connection": {"k"},
			"Proxy-Authenticate": {"a"}, "Proxy-Authorization": {"b"}, "X-Request-Id": {"mine"}, "connection": {"lower"}},
		{"Connection": {"upgrade"}, "Upgrade": {"websocket"}, "Content-Type": {"application/grpc"}, "Te": {"trailers"}},
		{"User-Agent": {"curl/8.5.0"}},
	} {
		for _, m := range [][]*route.HeaderMutation{nil, muts} {
			r := &http.Request{Header: h}
			got, want := upstreamHeader(r, m), upstreamHeaderByClone(r, m)
			if _, mine := h["X-Request-Id"]; !mine {
				if len(got.Get("X-Request-Id")) != 36 {
					t.Errorf("%v: X-Request-Id %q, want a UUID", h, got.Get("X-Request-Id"))
				}
				got["X-Request-Id"] = []string{"generated"}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("upstreamHeader(%v)\n= %v\nwant %v", h, got, want)
			}
			for k, vv := range got { // each value slice its own: appending clobbers no other
				if m == nil && cap(vv) != len(vv) {
					t.Errorf("%s: cap %d, len %d", k, cap(vv), len(vv))
				}
			}
		}
	}
}

// TestUpReq_ReusedPartsAreThoseOfTheLatestRequest: the synchronous
// client's requests share the record's parts; the others' are their own.
func TestUpReq_ReusedPartsAreThoseOfTheLatestRequest(t *testing.T) {
	rec := newRecord()
	defer rec.release(&http.Request{})
	o := &rec.out
	o.method, o.host, o.hdr, o.replayable = "POST", "svc", http.Header{"X": {"1"}}, true
	o.buf = []byte("body")
	if !o.setURL("/p", "a=b") {
		t.Fatal("setURL refused /p")
	}
	ctx := context.Background()
	own := o.request(ctx, "10.0.0.1:80", false)
	reused := o.request(ctx, "10.0.0.2:80", true)
	for _, tc := range []struct {
		req  *http.Request
		host string
	}{{own, "10.0.0.1:80"}, {reused, "10.0.0.2:80"}} {
		r := tc.req
		if r.URL.String() != "http://"+tc.host+"/p?a=b" || r.Host != "svc" || r.Method != "POST" || r.ContentLength != 4 {
			t.Errorf("request %s %s (Host %s, length %d)", r.Method, r.URL, r.Host, r.ContentLength)
		}
		for i := range 2 { // the body, then again from GetBody
			b, _ := io.ReadAll(r.Body)
			if string(b) != "body" {
				t.Errorf("body %q", b)
			}
			if i == 0 {
				var err error
				if r.Body, err = r.GetBody(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if again := o.request(ctx, "10.0.0.3:80", true); again.URL != reused.URL || own.URL == reused.URL {
		t.Error("the reused URL is not the record's, or the own one is")
	}
}

// TestReqRecord_ReleaseGivesTheBodyBack: a released record leaves the
// request with its own body; a record that must not be reused is not.
func TestReqRecord_ReleaseGivesTheBodyBack(t *testing.T) {
	orig := io.NopCloser(strings.NewReader("x"))
	r := &http.Request{Body: orig}
	rec := newRecord()
	rec.body.rc, r.Body = orig, &rec.body
	rec.flow.Path = "/x"
	rec.release(r)
	if r.Body != orig || rec.flow.Path != "" || rec.out.getBody == nil || rec.out.readCloser == nil {
		t.Errorf("after release: body %v, record %+v", r.Body, rec.flow)
	}

	rec = newRecord()
	rec.body.rc, r.Body = orig, &rec.body
	rec.recycle = false // a transport still reads the body
	rec.release(r)
	if r.Body != &rec.body {
		t.Error("a record still in use gave the body back")
	}
}

func TestReuseAfter_OnlyWhatNothingReadsAfterTheHandler(t *testing.T) {
	for _, tc := range []struct {
		streamed, mirrored, sync bool
		record, buffer           bool
	}{
		{false, false, true, true, true},   // h1client, buffered or no body
		{false, false, false, true, false}, // h2c or an upgrade: the transport may read the buffer later
		{false, true, true, false, false},  // mirrors read the record's upReq and the buffer
		{false, true, false, false, false},
		{true, false, false, false, false}, // a streamed body is read through the record
		{true, false, true, false, false},  // (not a case forward has: streamed bodies go to http.Transport)
	} {
		record, buffer := reuseAfter(tc.streamed, tc.mirrored, tc.sync)
		if record != tc.record || buffer != tc.buffer {
			t.Errorf("reuseAfter(streamed %v, mirrored %v, sync %v) = %v, %v; want %v, %v",
				tc.streamed, tc.mirrored, tc.sync, record, buffer, tc.record, tc.buffer)
		}
	}
}
