package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/waypoint/resilience"
	"github.com/ambientmesh/ambient/waypoint/route"
	"github.com/ambientmesh/ambient/ztunnel/outbound"
)

// upstream is where a request goes: a service port (an endpoint is picked
// per attempt) or, for a workload-addressed request, that workload.
type upstream struct {
	svc      *workloadapi.Service
	svcKey   string // svc's key, "namespace/hostname"
	port     uint16 // service port
	workload *workloadapi.Workload
	addr     netip.AddrPort
	addrStr  string // addr as a string
	h2       bool   // speak HTTP/2 (h2c) to it
	// family is the tunnel's destination address: a dual-stack endpoint
	// is reached in its family, as ztunnel does (state.Endpoint.AddrFor).
	family netip.Addr
}

// speaksH2 reports whether the service port declares HTTP/2 or gRPC.
func (u upstream) speaksH2() bool {
	for _, sp := range u.svc.GetPorts() {
		if sp.GetServicePort() == uint32(u.port) {
			ap := sp.GetAppProtocol()
			return ap == workloadapi.AppProtocol_HTTP2 || ap == workloadapi.AppProtocol_GRPC
		}
	}
	return false
}

// pick chooses the endpoint of one attempt: the addressed workload; else
// the cluster's load balancer over the endpoints outlier detection has not
// ejected; with PASSTHROUGH (or no cluster: mirrors) the mesh's own choice,
// uniform over the healthy endpoints, as a connection to the service
// would get. peer describes the endpoint (its address as a string too);
// lb is its load balancer entry, when there is one.
func (p *Proxy) pick(view *state.View, memo *viewMemo, u upstream, cl *cluster) (ep state.Endpoint, peer telemetry.Peer, lb *resilience.Endpoint, err error) {
	if u.workload != nil {
		addr := u.addrStr
		if addr == "" {
			addr = u.addr.String()
		}
		return state.Endpoint{Workload: u.workload, Port: u.addr.Port(), Addr: u.addr},
			endpointPeer(u.workload, addr, memo.identity(u.workload)), nil, nil
	}
	if cl != nil && cl.pol.lb != resilience.Passthrough {
		ep, peer, lb, err = cl.pickFrom(view, u, p.rnd64)
		ep, peer = inFamily(ep, peer, u.family)
		return ep, peer, lb, err
	}
	ep, err = view.PickEndpoint(u.svc, u.port, p.rnd)
	if err == nil && !ep.Addr.IsValid() {
		err = fmt.Errorf("endpoint %s has no address", ep.Workload.GetUid())
	}
	if err != nil {
		return ep, peer, nil, err
	}
	ep, peer = inFamily(ep, endpointPeer(ep.Workload, ep.Addr.String(), memo.identity(ep.Workload)), u.family)
	return ep, peer, nil, nil
}

// inFamily readdresses a picked endpoint (and its peer) to its address in
// dst's family when it has one, so that a dual-stack endpoint behind an
// IPv6 VIP is reached over IPv6. An invalid dst changes nothing.
func inFamily(ep state.Endpoint, peer telemetry.Peer, dst netip.Addr) (state.Endpoint, telemetry.Peer) {
	if !dst.IsValid() {
		return ep, peer
	}
	if a := ep.AddrFor(dst); a != ep.Addr {
		ep.Addr, peer.Addr = a, a.String()
	}
	return ep, peer
}

// hopByHop are the headers that belong to one connection (RFC 9110 §7.6.1)
// and are never forwarded.
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// upstreamHeader is the request's header as forwarded: hop-by-hop fields
// dropped ("TE: trailers" kept, gRPC needs it), x-forwarded-proto and
// x-request-id added when missing, the route's mutations applied, an
// absent User-Agent kept absent (no Go client's own added);
// everything else passes untouched (with tracing on, forward then sets
// traceparent to the waypoint's span: reqTrace.inject).
//
// The copy is made as http.Header.Clone makes it (each value slice its own
// part of one array, capped; nil values kept), with room in that array
// for the fields added, and without the hop-by-hop fields.
func upstreamHeader(r *http.Request, muts []*route.HeaderMutation) http.Header {
	const added = 4 // Te, X-Forwarded-Proto, X-Request-Id, User-Agent
	nv := added
	for _, vv := range r.Header {
		nv += len(vv)
	}
	sv := make([]string, nv)
	h := make(http.Header, len(r.Header)+added-1)
	for k, vv := range r.Header {
		switch {
		case isHopByHop(k):
		case vv == nil:
			h[k] = nil
		default:
			n := copy(sv, vv)
			h[k] = sv[:n:n]
			sv = sv[n:]
		}
	}
	// one returns v as a header value, from the array.
	one := func(v string) []string {
		sv[0] = v
		vv := sv[:1:1]
		sv = sv[1:]
		return vv
	}
	for _, c := range r.Header.Values("Connection") {
		for _, name := range strings.Split(c, ",") {
			h.Del(strings.TrimSpace(name))
		}
	}
	if slices.ContainsFunc(r.Header.Values("Te"), func(v string) bool { return strings.Contains(strings.ToLower(v), "trailers") }) {
		h["Te"] = one("trailers")
	}
	if _, ok := h["X-Forwarded-Proto"]; !ok {
		h["X-Forwarded-Proto"] = one("http")
	}
	if _, ok := h["X-Request-Id"]; !ok {
		h["X-Request-Id"] = one(newRequestID())
	}
	for _, m := range muts {
		m.Apply(h)
	}
	if _, ok := h["User-Agent"]; !ok {
		// Present and empty: Go's HTTP clients then send none, where they
		// would add their own; a proxy passes the client's, or nothing.
		h["User-Agent"] = one("")
	}
	return h
}

// isHopByHop reports whether k is one of hopByHop.
func isHopByHop(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// newRequestID is a random UUID (version 4), as Envoy generates them.
func newRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// retryPolicy is the effective retry policy of a request.
type retryPolicy struct {
	attempts int // retries after the first try
	codes    []uint32
	backoff  time.Duration
}

func (p *Proxy) retryPolicy(r *route.Retry) retryPolicy {
	rp := retryPolicy{attempts: p.cfg.DefaultRetries, backoff: p.cfg.DefaultBackoff}
	if r == nil {
		return rp
	}
	if r.AttemptsSet {
		rp.attempts = r.Attempts
	}
	rp.codes = r.Codes
	if r.BackoffSet {
		rp.backoff = r.Backoff
	}
	return rp
}

// idempotent methods may be retried after the request was (perhaps) sent.
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// dialError marks a failure to open the upstream connection: nothing was
// sent, so any request may be retried.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// upReq is what the upstream requests of one request are made of: every
// attempt's and every mirror's. It lives in the request's pooled
// reqRecord, with the parts the attempts through the synchronous HTTP/1.1
// client reuse (that client is done with a request when RoundTrip
// returns); the other transports and the mirrors, which may read a
// request after that, get parts of their own.
type upReq struct {
	method, host string
	url          url.URL // the target, without Host
	hdr          http.Header
	// The body: buf, buffered (nil: none, or streamed); else body and
	// length, streamed once, when replayable is false.
	buf        []byte
	bufEntry   *[]byte // buf's bodyBufs entry; nil: not pooled
	replayable bool
	body       io.ReadCloser
	length     int64

	// Reused by the synchronous client's attempts, made once per pooled
	// record: url with the endpoint's Host, a reader over buf wrapped in
	// an io.NopCloser (which net/http knows to be in memory, so that
	// headers and body leave in one write), and GetBody.
	attemptURL url.URL
	reader     bytes.Reader
	readCloser io.ReadCloser
	getBody    func() (io.ReadCloser, error)
}

// init makes o's reused parts; once per pooled record.
func (o *upReq) init() {
	o.readCloser = io.NopCloser(&o.reader)
	o.getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(o.buf)), nil }
}

// request is the upstream request to the endpoint at addr, with context
// ctx. reuse says the caller is done with the previous one (the
// synchronous client): the request is made of o's reused parts; else of
// its own. A streamed body is handed over in either case.
func (o *upReq) request(ctx context.Context, addr string, reuse bool) *http.Request {
	r := http.Request{Method: o.method, Header: o.hdr, Host: o.host, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	if reuse {
		o.attemptURL = o.url
		r.URL = &o.attemptURL
	} else {
		u := o.url
		r.URL = &u
	}
	r.URL.Host = addr
	switch {
	case o.buf != nil && reuse:
		o.reader.Reset(o.buf)
		r.Body, r.GetBody, r.ContentLength = o.readCloser, o.getBody, int64(len(o.buf))
	case o.buf != nil:
		buf := o.buf
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(buf)), int64(len(buf))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	case o.replayable:
		r.Body, r.ContentLength = http.NoBody, 0
	default:
		r.Body, r.ContentLength = o.body, o.length
	}
	return r.WithContext(ctx)
}

// setURL sets o.url to the upstream target: path (the normalized or
// rewritten path) with the request's query. It reports false for a path
// that is not a plain path: it has a host or a scheme, or does not parse.
func (o *upReq) setURL(path, rawQuery string) bool {
	if plainPath(path) {
		o.url = url.URL{Path: path} // what url.Parse would give
	} else {
		u, err := url.Parse(path)
		if err != nil || u.Host != "" || u.Scheme != "" {
			return false
		}
		o.url = *u
	}
	o.url.Scheme, o.url.RawQuery = "http", rawQuery
	return true
}

// reuseAfter says what of a request's parts may be reused once its
// handler has returned: its record (reqRecord.recycle), unless a
// transport streams the body, which it reads through the record maybe
// after the handler, or mirrors read the record's upReq; its buffered
// body, only when nothing but the synchronous client (done with a request
// when RoundTrip returns) reads it: no other transport, no mirror.
func reuseAfter(streamed, mirrored, sync bool) (record, bodyBuffer bool) {
	return !streamed && !mirrored, sync && !mirrored && !streamed
}

// forward sends the request to up, with the route's timeouts, retries and
// mirrors, and streams the response back.
func (p *Proxy) forward(rec *reqRecord, r *http.Request, view *state.View, memo *viewMemo, dec *route.Decision, up upstream, path, host string) {
	ctx := r.Context()
	if dec.Timeouts.RequestSet && dec.Timeouts.Request > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, dec.Timeouts.Request)
		defer cancel()
	}
	var perTry time.Duration
	if dec.Timeouts.BackendRequestSet && dec.Timeouts.BackendRequest > 0 {
		perTry = dec.Timeouts.BackendRequest
	}
	rp := p.retryPolicy(dec.Retry)

	// A body up to MaxRetryBody of known length is buffered, so that it
	// can be sent again (retries, mirrors); any other is streamed once.
	// The buffer goes back to bodyBufs unless something may read it
	// after the handler (reuseAfter).
	o := &rec.out
	recycleBuf := false
	defer func() {
		if recycleBuf {
			putBodyBuf(o.bufEntry)
		}
	}()
	replayable := r.ContentLength == 0 || r.Body == http.NoBody
	if !replayable && r.ContentLength > 0 && r.ContentLength <= p.cfg.MaxRetryBody {
		o.buf, o.bufEntry = getBodyBuf(r.ContentLength)
		recycleBuf = true
		if _, err := io.ReadFull(r.Body, o.buf); err != nil {
			rec.flow.Error = "reading the request body: " + err.Error()
			p.respond(rec, http.StatusBadRequest, bodyBadRequest, flagDownstreamReset)
			return
		}
		replayable = true
	}
	if !replayable {
		rp.attempts = 0
	}

	if !o.setURL(path, r.URL.RawQuery) {
		p.respond(rec, http.StatusBadRequest, bodyBadRequest, flagNone)
		return
	}
	hdr := upstreamHeader(r, dec.RequestHeaders)
	rec.trace.inject(hdr)
	upgrade := upgradeType(r)
	if upgrade != "" { // hop-by-hop, but the upgrade is asked of the upstream too
		hdr["Connection"], hdr["Upgrade"] = []string{"Upgrade"}, []string{upgrade}
		rp.attempts = 0
	}
	o.method, o.host, o.hdr, o.replayable = r.Method, host, hdr, replayable
	if !replayable {
		o.body, o.length = r.Body, r.ContentLength
	}
	mirrored := replayable && upgrade == "" && len(dec.Mirrors) > 0
	if mirrored {
		for _, m := range dec.Mirrors {
			p.mirror(view, memo, m, o, host, up.family)
		}
	}
	cl := p.cluster(up)
	ups := cl.upstreams(p.defUp) // the clients of the service's connection settings
	ups.acquire()
	defer ups.release()
	var transport http.RoundTripper = ups.h1sync
	switch {
	case up.h2:
		transport = ups.h2
	case !replayable, upgrade != "":
		transport = ups.h1 // a streamed body, written while the response is read; or a 101's connection
	}
	reuse := transport == http.RoundTripper(ups.h1sync) // done with a request when RoundTrip returns
	rec.recycle, recycleBuf = reuseAfter(!replayable, mirrored, reuse)
	if cl != nil {
		done, err := cl.pool.limiter.Acquire(resilience.Requests)
		if err != nil {
			p.overflow(rec)
			return
		}
		defer done()
	}

	var at attempt
	defer at.release()
	for try := 0; ; try++ {
		_, peer, lb, err := p.pick(view, memo, up, cl)
		if err != nil {
			rec.flow.Error = err.Error()
			p.respond(rec, http.StatusServiceUnavailable, bodyNoUpstream, flagNoHealthy)
			return
		}
		rec.flow.Dst = peer
		rec.flow.Dst.Service = up.svc.GetHostname()
		if cl != nil && !up.h2 {
			if at.conn, err = cl.acquireConn(ctx); err != nil {
				if errors.Is(err, resilience.ErrOverflow) {
					p.overflow(rec)
				} else {
					p.timedOut(rec, r)
				}
				return
			}
		}
		if at.ep = lb; lb != nil {
			lb.Start()
		}
		actx, acancel := ctx, context.CancelFunc(func() {})
		if perTry > 0 {
			actx, acancel = context.WithTimeout(ctx, perTry)
		}
		if up.h2 {
			actx = h2Limit(actx, cl)
		}
		req := o.request(actx, peer.Addr, reuse)
		if cl != nil {
			req = limitPerConn(req, cl.pool.perConn)
		}
		if up.h2 {
			if req, err = cl.awaitH2Conn(req, ups, peer.Addr, &at); err != nil {
				acancel()
				p.overflow(rec)
				return
			}
		}
		resp, err := transport.RoundTrip(req)
		at.releaseRetry() // the retry's outcome is known
		if err == nil && resp.StatusCode == http.StatusSwitchingProtocols && upgrade != "" {
			cl.observe(lb, resp.StatusCode, nil)
			p.switchProtocols(rec, resp, upgrade)
			acancel()
			return
		}
		if err == nil {
			cl.observe(lb, resp.StatusCode, nil)
			if try < rp.attempts && slices.Contains(rp.codes, uint32(resp.StatusCode)) {
				if at.retry, err = cl.acquireRetry(); err == nil {
					io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
					resp.Body.Close()
					acancel()
					at.releaseAttempt()
					if !p.backoff(ctx, rp.backoff, try) {
						p.timedOut(rec, r)
						return
					}
					continue
				}
				rec.flags = flagOverflow // the retry limit: the response goes back as it is
			} else if rp.attempts > 0 && slices.Contains(rp.codes, uint32(resp.StatusCode)) {
				rec.flags = flagRetriesExceeded
			}
			p.writeResponse(rec, r, resp, dec, ctx)
			acancel()
			return
		}
		acancel()
		at.releaseAttempt()
		if errors.Is(err, resilience.ErrOverflow) { // no HTTP/2 connection may be opened: not the endpoint's doing
			p.overflow(rec)
			return
		}
		rec.flow.Error = err.Error()
		if r.Context().Err() == nil {
			cl.observe(lb, 0, err) // a local-origin error, unless the client left
		}
		if ctx.Err() != nil {
			p.timedOut(rec, r)
			return
		}
		perTryTimeout := errors.Is(err, context.DeadlineExceeded)
		connectTimeout := errors.Is(err, errConnectTimeout)
		var de *dialError
		retriable := perTryTimeout || errors.As(err, &de) || idempotent(r.Method)
		overflowed := false
		if try < rp.attempts && retriable {
			if at.retry, err = cl.acquireRetry(); err == nil {
				if !p.backoff(ctx, rp.backoff, try) {
					p.timedOut(rec, r)
					return
				}
				continue
			}
			overflowed = true
		}
		code, body, flag := attemptsFailed(perTryTimeout, connectTimeout, try > 0, overflowed)
		p.respond(rec, code, body, flag)
		return
	}
}

// attemptsFailed is the answer to a request whose last attempt got no
// response: 504 (UT) after a per-try timeout, else 503 (UF, or URX when
// retries ran out), with Envoy's reset reason when the last attempt's
// connect timed out; a retry the retry limit refused adds UO, as Envoy
// does.
func attemptsFailed(perTryTimeout, connectTimeout, retried, overflowed bool) (code int, body, flag string) {
	code, body, flag = http.StatusServiceUnavailable, bodyConnFailed, flagConnFailure
	switch {
	case perTryTimeout:
		code, body, flag = http.StatusGatewayTimeout, bodyTimeout, flagTimeout
	case connectTimeout && retried:
		body = bodyConnTimeoutRetried
	case connectTimeout:
		body = bodyConnTimeout
	}
	if retried && !overflowed && !perTryTimeout {
		flag = flagRetriesExceeded
	}
	if overflowed {
		flag = addFlag(flag, flagOverflow)
	}
	return code, body, flag
}

// overflow answers a request a circuit breaker refused: 503 at once, flag
// UO, with Envoy's body and x-envoy-overloaded header.
func (p *Proxy) overflow(rec *reqRecord) {
	rec.w.Header().Set("X-Envoy-Overloaded", "true")
	rec.flow.Error = resilience.ErrOverflow.Error()
	p.respond(rec, http.StatusServiceUnavailable, bodyOverflow, flagOverflow)
}

// timedOut answers a request whose time ran out (504, as Envoy), unless
// the client has gone.
func (p *Proxy) timedOut(rec *reqRecord, r *http.Request) {
	if r.Context().Err() != nil {
		rec.flags = flagDownstreamReset
		return
	}
	rec.flow.Error = bodyTimeout
	p.respond(rec, http.StatusGatewayTimeout, bodyTimeout, flagTimeout)
}

// backoff waits before retry try+1: the base doubled per retry, at most
// ten times the base. It reports false when ctx ended first.
func (p *Proxy) backoff(ctx context.Context, base time.Duration, try int) bool {
	d := base << min(try, 3)
	if d > 10*base {
		d = 10 * base
	}
	if d <= 0 {
		return ctx.Err() == nil
	}
	return sleep(ctx, d)
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// writeResponse streams resp to the client: headers (hop-by-hop dropped,
// the route's mutations applied), the body flushed as it comes when it is
// streamed, then trailers (gRPC's status).
func (p *Proxy) writeResponse(rec *reqRecord, r *http.Request, resp *http.Response, dec *route.Decision, ctx context.Context) {
	defer resp.Body.Close()
	h := rec.w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	for _, c := range resp.Header.Values("Connection") {
		for _, name := range strings.Split(c, ",") {
			h.Del(strings.TrimSpace(name))
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
	for _, m := range dec.ResponseHeaders {
		m.Apply(h)
	}
	for k := range resp.Trailer {
		h.Add("Trailer", k)
	}
	if _, ok := h["Content-Type"]; !ok {
		h["Content-Type"] = nil // none: net/http would sniff one from the body
	}
	rec.w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(&rec.w)
	flush := resp.ContentLength < 0 || r.ProtoMajor == 2
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	for {
		n, err := resp.Body.Read(*bp)
		if n > 0 {
			if _, werr := rec.w.Write((*bp)[:n]); werr != nil {
				rec.flags = flagDownstreamReset
				return
			}
			if flush {
				rc.Flush()
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			rec.flow.Error = "reading the response: " + err.Error()
			if ctx.Err() != nil && r.Context().Err() == nil {
				rec.flags = flagTimeout
			} else {
				rec.flags = flagConnFailure
			}
			// Headers are out: reset the stream (HTTP/2) or close the
			// connection (HTTP/1.1) so the client sees the truncation.
			panic(http.ErrAbortHandler)
		}
	}
	for k, vv := range resp.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
	rec.grpc = resp.Trailer.Get("Grpc-Status")
	if rec.grpc == "" {
		rec.grpc = resp.Header.Get("Grpc-Status")
	}
}

// mirror sends a copy of the request to m's service, fire and forget,
// with Host suffixed "-shadow" as Envoy does; dropped when MaxMirrors are
// already in flight. As Envoy's shadow is a request on the mirror's
// cluster, the mirror service's policy applies to it: its load balancer,
// its circuit breaker (a mirror over a limit is dropped; it never waits
// as a pending request) and its outlier detection, which its answers feed.
func (p *Proxy) mirror(view *state.View, memo *viewMemo, m route.Mirror, o *upReq, host string, family netip.Addr) {
	ns, hostname, _ := strings.Cut(m.Service, "/")
	svc := view.Service(ns, hostname)
	if svc == nil {
		return
	}
	select {
	case p.mirrors <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-p.mirrors }()
		up := upstream{svc: svc, svcKey: m.Service, port: uint16(m.Port), family: family}
		cl := p.cluster(up)
		h2 := up.speaksH2()
		if cl != nil {
			done, err := cl.pool.limiter.Acquire(resilience.Requests)
			if err != nil {
				return
			}
			defer done()
			if !h2 {
				release, ok := cl.pool.tryConn()
				if !ok {
					return
				}
				if release != nil {
					defer release()
				}
			}
		}
		_, peer, lb, err := p.pick(view, memo, up, cl)
		if err != nil {
			return
		}
		if lb != nil {
			lb.Start()
			defer lb.Done()
		}
		ups := cl.upstreams(p.defUp)
		ups.acquire()
		defer ups.release()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req := o.request(ctx, peer.Addr, false)
		req.Host = shadowHost(host)
		var t http.RoundTripper = ups.h1sync
		if h2 {
			t = ups.h2
		}
		resp, err := t.RoundTrip(req)
		if err != nil {
			cl.observe(lb, 0, err)
			return
		}
		cl.observe(lb, resp.StatusCode, nil)
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
	}()
}

// shadowHost is Envoy's mirror Host: "-shadow" after the host name.
func shadowHost(host string) string {
	if h, port, err := net.SplitHostPort(host); err == nil {
		return net.JoinHostPort(h+"-shadow", port)
	}
	return host + "-shadow"
}

// workloadID is the SPIFFE identity of w.
func workloadID(w *workloadapi.Workload) (spiffeid.ID, error) { return outbound.WorkloadID(w) }

// countingBody counts the request body bytes read.
type countingBody struct {
	rc io.ReadCloser
	n  int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n += int64(n)
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }

// countingWriter counts response body bytes and keeps the status sent.
type countingWriter struct {
	http.ResponseWriter
	code int
	n    int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
