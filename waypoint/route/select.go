package route

import (
	"math/bits"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// RequestView is what routing reads of a request.
type RequestView struct {
	// Method, upper case as sent ("GET").
	Method string
	// Scheme the client used, "http" or "https" ("" is "http"); the default
	// scheme of a redirect.
	Scheme string
	// Host is the Host header or :authority, port allowed.
	Host string
	// Port is the port the request was sent to (the Service port): the
	// default port of a redirect without a scheme.
	Port uint32
	// Path is the request path without the query, as the proxy normalized
	// it (DESIGN §7); matching is case-sensitive.
	Path string
	// RawQuery is the query without "?", still encoded.
	RawQuery string
	// Header holds the request headers under canonical keys, as net/http
	// and x/net/http2 build them. "Host" is read from Host.
	Header http.Header
}

// Action is what the proxy does with a request.
type Action uint8

// Actions.
const (
	// NotFound: no rule matched; answer Status (404).
	NotFound Action = iota
	// Forward the request to Backend, applying the Decision's effects.
	Forward
	// Redirect: answer Status with a Location header.
	Redirect
	// Fail: answer Status (500) — the rule's pick is a backend that did
	// not resolve, or the rule has none.
	Fail
)

func (a Action) String() string {
	switch a {
	case NotFound:
		return "NotFound"
	case Forward:
		return "Forward"
	case Redirect:
		return "Redirect"
	case Fail:
		return "Fail"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// Decision is what to do with one request. Slices and pointers in it are
// shared with the [Table]: read them, never modify them.
type Decision struct {
	Action Action
	// Status of the response for NotFound, Redirect and Fail.
	Status int
	// Location header of a Redirect.
	Location string
	// Rule is the rule that matched (nil for NotFound).
	Rule *waypointapi.RouteRule
	// Backend is the Service port to forward to (Forward only).
	Backend *waypointapi.Destination
	// Path is the rewritten request path, "" to keep it (URLRewrite).
	Path string
	// Host is the rewritten Host, "" to keep it (URLRewrite).
	Host string
	// RequestHeaders and ResponseHeaders are applied in order.
	RequestHeaders  []*HeaderMutation
	ResponseHeaders []*HeaderMutation
	// Mirrors receive a copy of the request (RequestMirror, fraction
	// already drawn).
	Mirrors  []Mirror
	Timeouts Timeouts
	// Retry is nil when the rule has no retry stanza.
	Retry *Retry
}

// Select routes req by table t. rnd supplies uniformly distributed random
// numbers for the weighted backend pick and mirror fractions; it is called
// only when a choice needs it.
func (t *Table) Select(req *RequestView, rnd func() uint64) Decision {
	m := t.find(req)
	if m == nil {
		return Decision{Action: NotFound, Status: http.StatusNotFound}
	}
	r := m.rule
	d := Decision{Rule: r.src, Timeouts: r.timeouts, Retry: r.retry}
	eff := &r.noBackend
	if eff.redirect == nil {
		if r.total == 0 {
			d.Action, d.Status = Fail, http.StatusInternalServerError
			return d
		}
		b := &r.backends[pick(r, rnd)]
		if b.src.GetInvalidStatus() != 0 {
			d.Action, d.Status = Fail, int(b.src.GetInvalidStatus())
			return d
		}
		eff = &b.eff
		d.Backend = b.src.GetDestination()
	}
	if eff.redirect != nil {
		d.Action = Redirect
		d.Backend = nil
		d.Status, d.Location = redirect(eff.redirect, m, req)
		d.ResponseHeaders = eff.responseHeaders
		return d
	}
	d.Action = Forward
	d.RequestHeaders = eff.requestHeaders
	d.ResponseHeaders = eff.responseHeaders
	d.Host = eff.rewriteHost
	if eff.rewritePath != nil {
		d.Path = modifyPath(eff.rewritePath, m, req.Path)
	}
	d.Mirrors = chooseMirrors(eff, rnd)
	return d
}

// find returns the winning match, or nil.
func (t *Table) find(req *RequestView) *match {
	if !t.hostnames {
		for i := range t.matches {
			if t.matches[i].matches(req) {
				return &t.matches[i]
			}
		}
		return nil
	}
	// Gateway tables with hostnames: the most specific matching hostname
	// wins first (HTTPRouteSpec.hostnames doc), then list order.
	host := hostOnly(req.Host)
	var best *match
	var bestRank [2]int
	for i := range t.matches {
		m := &t.matches[i]
		rank, ok := hostRank(m.rule.hostnames, host)
		if !ok || (best != nil && !rankAbove(rank, bestRank)) {
			continue
		}
		if m.matches(req) {
			best, bestRank = m, rank
		}
	}
	return best
}

func rankAbove(a, b [2]int) bool {
	return a[0] > b[0] || (a[0] == b[0] && a[1] > b[1])
}

// hostRank ranks the best of hostnames matching host: characters of a
// matching exact hostname, then characters of any matching hostname. No
// hostnames matches every host at the lowest rank.
func hostRank(hostnames []string, host string) ([2]int, bool) {
	if len(hostnames) == 0 {
		return [2]int{}, true
	}
	var best [2]int
	found := false
	for _, h := range hostnames {
		var r [2]int
		if suffix, ok := strings.CutPrefix(h, "*"); ok {
			// "*.example.com" matches any name ending in ".example.com"
			// with at least one label before it.
			if len(host) <= len(suffix) || !hasSuffixFold(host, suffix) {
				continue
			}
			r = [2]int{0, len(h)}
		} else {
			if !strings.EqualFold(host, h) {
				continue
			}
			r = [2]int{len(h), len(h)}
		}
		if !found || rankAbove(r, best) {
			best, found = r, true
		}
	}
	return best, found
}

func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix)
}

// hostOnly strips the port from a Host header value ("a:80" → "a",
// "[::1]:80" → "::1").
func hostOnly(host string) string {
	if strings.HasPrefix(host, "[") {
		if i := strings.IndexByte(host, ']'); i > 0 {
			return host[1:i]
		}
		return host
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host, ':') == i {
		return host[:i]
	}
	return host
}

func (m *match) matches(req *RequestView) bool {
	if m.method != "" && m.method != req.Method {
		return false
	}
	switch {
	case m.pathRe != nil:
		if !m.pathRe.MatchString(req.Path) {
			return false
		}
	case m.pathType == waypointapi.PathMatchType_PATH_MATCH_EXACT:
		if req.Path != m.path {
			return false
		}
	default:
		if !prefixMatch(req.Path, m.path) {
			return false
		}
	}
	for i := range m.headers {
		h := &m.headers[i]
		v, ok := headerValue(req, h.name)
		if !ok || !h.matches(v) {
			return false
		}
	}
	for i := range m.query {
		q := &m.query[i]
		v, ok := queryValue(req.RawQuery, q.name)
		if !ok || !q.matches(v) {
			return false
		}
	}
	return true
}

// prefixMatch reports whether path starts with the path elements of prefix
// (given without its trailing "/"): "/foo" matches "/foo", "/foo/" and
// "/foo/bar", not "/foobar".
func prefixMatch(path, prefix string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/'
}

// headerValue returns the request's value of header name (canonical). A
// repeated header is matched as its values joined by "," (RFC 7230
// §3.2.2); that is the only case that allocates.
func headerValue(req *RequestView, name string) (string, bool) {
	if name == "Host" {
		if req.Host != "" {
			return req.Host, true
		}
	}
	vs := req.Header[name]
	switch len(vs) {
	case 0:
		return "", false
	case 1:
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

// queryValue returns the decoded first value of query parameter name in
// raw, allocating only when a key or value is percent- or plus-encoded.
func queryValue(raw, name string) (string, bool) {
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if needsUnescape(k) {
			dk, err := url.QueryUnescape(k)
			if err != nil {
				continue
			}
			k = dk
		}
		if k != name {
			continue
		}
		if needsUnescape(v) {
			dv, err := url.QueryUnescape(v)
			if err != nil {
				return "", false
			}
			v = dv
		}
		return v, true
	}
	return "", false
}

func needsUnescape(s string) bool {
	return strings.ContainsAny(s, "%+")
}

// pick chooses a backend index with probability weight/total.
func pick(r *rule, rnd func() uint64) int {
	if len(r.backends) == 1 {
		return 0
	}
	x, _ := bits.Mul64(rnd(), r.total) // uniform in [0, total)
	for i, c := range r.cum {
		if x < c {
			return i
		}
	}
	return len(r.cum) - 1
}

// chooseMirrors draws each fractional mirror; without fractions (the usual
// case) it returns the shared list and allocates nothing.
func chooseMirrors(eff *effects, rnd func() uint64) []Mirror {
	if !eff.fractional {
		return eff.allMirrors
	}
	var out []Mirror
	for _, m := range eff.mirrors {
		if m.denominator != 0 {
			x, _ := bits.Mul64(rnd(), m.denominator)
			if x >= m.numerator {
				continue
			}
		}
		out = append(out, m.target)
	}
	return out
}

// modifyPath applies a ReplaceFullPath or ReplacePrefixMatch modifier to
// path, the prefix being the PathPrefix of match m (HTTPPathModifier doc):
// the matched path elements are replaced, a trailing "/" of the
// replacement is dropped when more path follows, and an empty result is
// "/". A prefix replacement on a match that is not PathPrefix (the control
// plane rejects such rules) leaves the path as it is.
func modifyPath(pm *waypointapi.PathModifier, m *match, path string) string {
	switch p := pm.GetType().(type) {
	case *waypointapi.PathModifier_ReplaceFullPath:
		return p.ReplaceFullPath
	case *waypointapi.PathModifier_ReplacePrefixMatch:
		if m.pathType != waypointapi.PathMatchType_PATH_MATCH_PATH_PREFIX || m.pathRe != nil {
			return path
		}
		rest := path[len(m.path):] // "" or starts with "/"
		repl := strings.TrimRight(p.ReplacePrefixMatch, "/")
		if repl == "" && rest == "" {
			return "/"
		}
		return repl + rest
	}
	return path
}

// redirect computes the status and Location of a RequestRedirect
// (HTTPRequestRedirectFilter doc).
func redirect(rd *waypointapi.Redirect, m *match, req *RequestView) (int, string) {
	status := int(rd.GetStatusCode())
	if status == 0 {
		status = http.StatusFound
	}
	scheme := rd.GetScheme()
	port := rd.GetPort()
	if port == 0 && scheme != "" {
		// A scheme without a port redirects to the scheme's well-known
		// port; other schemes use the listener port.
		switch strings.ToLower(scheme) {
		case "http":
			port = 80
		case "https":
			port = 443
		default:
			port = req.Port
		}
	}
	if scheme == "" {
		scheme = req.Scheme
		if scheme == "" {
			scheme = "http"
		}
	}
	if port == 0 {
		port = req.Port
	}
	host := rd.GetHostname()
	if host == "" {
		host = hostOnly(req.Host)
	}
	path := req.Path
	if pm := rd.GetPath(); pm != nil && pm.GetType() != nil {
		path = modifyPath(pm, m, req.Path)
	}
	var b strings.Builder
	b.Grow(len(scheme) + len(host) + len(path) + len(req.RawQuery) + 16)
	b.WriteString(scheme)
	b.WriteString("://")
	if strings.IndexByte(host, ':') >= 0 {
		b.WriteByte('[')
		b.WriteString(host)
		b.WriteByte(']')
	} else {
		b.WriteString(host)
	}
	ls := strings.ToLower(scheme)
	if port != 0 && !(ls == "http" && port == 80) && !(ls == "https" && port == 443) {
		b.WriteByte(':')
		b.WriteString(strconv.FormatUint(uint64(port), 10))
	}
	b.WriteString(path)
	if req.RawQuery != "" {
		b.WriteByte('?')
		b.WriteString(req.RawQuery)
	}
	return status, b.String()
}
