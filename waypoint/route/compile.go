package route

import (
	"fmt"
	"net/http"
	"net/textproto"
	"regexp"
	"strings"
	"time"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// Table is a compiled [waypointapi.ServiceRoutes], safe for concurrent use.
type Table struct {
	src       *waypointapi.ServiceRoutes
	matches   []match
	rules     []rule
	hostnames bool // some rule lists hostnames: rank them per request
}

// Source is the table Table was compiled from.
func (t *Table) Source() *waypointapi.ServiceRoutes { return t.src }

type match struct {
	rule     *rule
	pathType waypointapi.PathMatchType
	path     string // Exact value, or PathPrefix without trailing "/"
	pathRe   *regexp.Regexp
	method   string
	headers  []stringMatch // name canonical (net/http)
	query    []stringMatch
}

type stringMatch struct {
	name  string
	value string
	re    *regexp.Regexp // nil for Exact
}

func (m *stringMatch) matches(v string) bool {
	if m.re != nil {
		return m.re.MatchString(v)
	}
	return v == m.value
}

type rule struct {
	src       *waypointapi.RouteRule
	hostnames []string // lower case
	backends  []backend
	cum       []uint64 // cum[i] = weights of backends[0..i]
	total     uint64
	// noBackend: the rule's own effects, used when it redirects or has no
	// backend to pick.
	noBackend effects
	timeouts  Timeouts
	retry     *Retry
}

type backend struct {
	src *waypointapi.Backend
	eff effects // the rule's filters followed by the backend's
}

// effects is the merged outcome of a list of filters.
type effects struct {
	redirect        *waypointapi.Redirect
	rewriteHost     string
	rewritePath     *waypointapi.PathModifier
	requestHeaders  []*HeaderMutation
	responseHeaders []*HeaderMutation
	mirrors         []mirror
	allMirrors      []Mirror // every mirror, for when all are chosen
	fractional      bool     // some mirror samples
}

type mirror struct {
	target      Mirror
	numerator   uint64
	denominator uint64 // 0: always
}

// Compile prepares a table for [Table.Select]. It fails on what the control
// plane should never send: a regular expression RE2 rejects, a match
// pointing at no rule.
func Compile(src *waypointapi.ServiceRoutes) (*Table, error) {
	t := &Table{src: src, rules: make([]rule, len(src.GetRules())), matches: make([]match, 0, len(src.GetMatches()))}
	for i, r := range src.GetRules() {
		if err := t.compileRule(&t.rules[i], r); err != nil {
			return nil, fmt.Errorf("route: %s: rule %d (%s rule %d): %w", src.Name(), i, r.GetRoute(), r.GetIndex(), err)
		}
	}
	for i, m := range src.GetMatches() {
		cm, err := t.compileMatch(m)
		if err != nil {
			return nil, fmt.Errorf("route: %s: match %d: %w", src.Name(), i, err)
		}
		t.matches = append(t.matches, cm)
	}
	return t, nil
}

func (t *Table) compileMatch(m *waypointapi.RouteMatch) (match, error) {
	if int(m.GetRule()) >= len(t.rules) {
		return match{}, fmt.Errorf("rule %d does not exist (%d rules)", m.GetRule(), len(t.rules))
	}
	cm := match{rule: &t.rules[m.GetRule()], method: m.GetMethod()}
	if p := m.GetPath(); p != nil {
		cm.pathType = p.GetType()
		switch p.GetType() {
		case waypointapi.PathMatchType_PATH_MATCH_PATH_PREFIX:
			cm.path = strings.TrimRight(p.GetValue(), "/")
		case waypointapi.PathMatchType_PATH_MATCH_EXACT:
			cm.path = p.GetValue()
		case waypointapi.PathMatchType_PATH_MATCH_REGULAR_EXPRESSION:
			re, err := anchored(p.GetValue())
			if err != nil {
				return match{}, fmt.Errorf("path: %w", err)
			}
			cm.pathRe = re
		default:
			return match{}, fmt.Errorf("path: unknown match type %v", p.GetType())
		}
	}
	for _, h := range m.GetHeaders() {
		sm, err := compileString(textproto.CanonicalMIMEHeaderKey(h.GetName()), h.GetValue(), h.GetType())
		if err != nil {
			return match{}, fmt.Errorf("header %q: %w", h.GetName(), err)
		}
		cm.headers = append(cm.headers, sm)
	}
	for _, q := range m.GetQueryParams() {
		sm, err := compileString(q.GetName(), q.GetValue(), q.GetType())
		if err != nil {
			return match{}, fmt.Errorf("query parameter %q: %w", q.GetName(), err)
		}
		cm.query = append(cm.query, sm)
	}
	return cm, nil
}

func compileString(name, value string, typ waypointapi.StringMatchType) (stringMatch, error) {
	sm := stringMatch{name: name, value: value}
	switch typ {
	case waypointapi.StringMatchType_STRING_MATCH_EXACT:
	case waypointapi.StringMatchType_STRING_MATCH_REGULAR_EXPRESSION:
		re, err := anchored(value)
		if err != nil {
			return sm, err
		}
		sm.re = re
	default:
		return sm, fmt.Errorf("unknown match type %v", typ)
	}
	return sm, nil
}

// anchored compiles expr to match whole strings only.
func anchored(expr string) (*regexp.Regexp, error) {
	return regexp.Compile(`^(?:` + expr + `)$`)
}

func (t *Table) compileRule(r *rule, src *waypointapi.RouteRule) error {
	r.src = src
	for _, h := range src.GetHostnames() {
		r.hostnames = append(r.hostnames, strings.ToLower(h))
		t.hostnames = true
	}
	var err error
	if r.noBackend, err = mergeFilters(effects{}, src.GetFilters()); err != nil {
		return err
	}
	for i, b := range src.GetBackends() {
		eff, err := mergeFilters(r.noBackend, b.GetFilters())
		if err != nil {
			return fmt.Errorf("backend %d: %w", i, err)
		}
		if b.GetInvalidStatus() == 0 && b.GetDestination() == nil {
			return fmt.Errorf("backend %d: no destination and no invalid_status", i)
		}
		r.backends = append(r.backends, backend{src: b, eff: eff})
		r.total += uint64(b.GetWeight())
		r.cum = append(r.cum, r.total)
	}
	if to := src.GetTimeouts(); to != nil {
		if d := to.GetRequest(); d != nil {
			r.timeouts.Request, r.timeouts.RequestSet = d.AsDuration(), true
		}
		if d := to.GetBackendRequest(); d != nil {
			r.timeouts.BackendRequest, r.timeouts.BackendRequestSet = d.AsDuration(), true
		}
	}
	if rt := src.GetRetry(); rt != nil {
		r.retry = &Retry{Codes: rt.GetCodes()}
		if rt.Attempts != nil {
			r.retry.Attempts, r.retry.AttemptsSet = int(rt.GetAttempts()), true
		}
		if d := rt.GetBackoff(); d != nil {
			r.retry.Backoff, r.retry.BackoffSet = d.AsDuration(), true
		}
	}
	return nil
}

// mergeFilters returns base with filters applied after it. Slices are
// copied, never appended to in place, so rule and backend effects do not
// share backing arrays.
func mergeFilters(base effects, filters []*waypointapi.Filter) (effects, error) {
	e := base
	e.requestHeaders = clip(base.requestHeaders)
	e.responseHeaders = clip(base.responseHeaders)
	e.mirrors = clip(base.mirrors)
	for i, f := range filters {
		switch k := f.GetKind().(type) {
		case *waypointapi.Filter_RequestHeaderModifier:
			e.requestHeaders = append(e.requestHeaders, newHeaderMutation(k.RequestHeaderModifier))
		case *waypointapi.Filter_ResponseHeaderModifier:
			e.responseHeaders = append(e.responseHeaders, newHeaderMutation(k.ResponseHeaderModifier))
		case *waypointapi.Filter_RequestRedirect:
			if e.redirect == nil {
				e.redirect = k.RequestRedirect
			}
		case *waypointapi.Filter_UrlRewrite:
			if h := k.UrlRewrite.GetHostname(); h != "" {
				e.rewriteHost = h
			}
			if p := k.UrlRewrite.GetPath(); p != nil && p.GetType() != nil {
				e.rewritePath = p
			}
		case *waypointapi.Filter_RequestMirror:
			d := k.RequestMirror.GetBackend()
			if d == nil {
				return e, fmt.Errorf("filter %d: mirror without backend", i)
			}
			m := mirror{target: Mirror{Service: d.GetService(), Port: d.GetPort()},
				numerator: uint64(k.RequestMirror.GetNumerator()), denominator: uint64(k.RequestMirror.GetDenominator())}
			if m.denominator != 0 && m.numerator >= m.denominator {
				m.numerator, m.denominator = 0, 0 // 100 %
			}
			e.mirrors = append(e.mirrors, m)
		default:
			return e, fmt.Errorf("filter %d: unknown kind %T", i, k)
		}
	}
	e.allMirrors = nil
	e.fractional = false
	for _, m := range e.mirrors {
		e.allMirrors = append(e.allMirrors, m.target)
		if m.denominator != 0 {
			e.fractional = true
		}
	}
	return e, nil
}

func clip[T any](s []T) []T { return s[:len(s):len(s)] }

// HeaderMutation is one RequestHeaderModifier or ResponseHeaderModifier:
// apply Set, then Add, then Remove. Names are canonical [http.Header] keys.
type HeaderMutation struct {
	Set    []HeaderValue
	Add    []HeaderValue
	Remove []string
}

// HeaderValue is a header name (canonical) and value.
type HeaderValue struct {
	Name, Value string
}

func newHeaderMutation(m *waypointapi.HeaderModifier) *HeaderMutation {
	hm := &HeaderMutation{}
	for _, h := range m.GetSet() {
		hm.Set = append(hm.Set, HeaderValue{textproto.CanonicalMIMEHeaderKey(h.GetName()), h.GetValue()})
	}
	for _, h := range m.GetAdd() {
		hm.Add = append(hm.Add, HeaderValue{textproto.CanonicalMIMEHeaderKey(h.GetName()), h.GetValue()})
	}
	for _, n := range m.GetRemove() {
		hm.Remove = append(hm.Remove, textproto.CanonicalMIMEHeaderKey(n))
	}
	return hm
}

// Apply applies the mutation to h, whose keys must be canonical.
//
// Add appends to the values already there, so the header reaches the
// backend as "old,new" when joined (HTTPHeaderFilter.add).
func (m *HeaderMutation) Apply(h http.Header) {
	for _, s := range m.Set {
		h[s.Name] = []string{s.Value}
	}
	for _, a := range m.Add {
		h[a.Name] = append(h[a.Name], a.Value)
	}
	for _, r := range m.Remove {
		delete(h, r)
	}
}

// Timeouts are HTTPRouteTimeouts. A field is meaningful only when its Set
// flag is; a set zero duration disables that timeout.
type Timeouts struct {
	Request           time.Duration
	RequestSet        bool
	BackendRequest    time.Duration
	BackendRequestSet bool
}

// Retry is HTTPRouteRetry. Unset fields leave the proxy's defaults.
type Retry struct {
	Attempts    int
	AttemptsSet bool
	Codes       []uint32
	Backoff     time.Duration
	BackoffSet  bool
}

// Mirror is a destination to send a copy of the request to, ignoring its
// response.
type Mirror struct {
	Service string // "namespace/hostname"
	Port    uint32
}
