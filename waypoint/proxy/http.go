package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/waypoint/l7authz"
	"github.com/ambientmesh/ambient/waypoint/resilience"
	"github.com/ambientmesh/ambient/waypoint/route"
)

// Local replies, worded as Envoy words them so clients and dashboards that
// know Istio recognise them.
const (
	bodyDenied     = "RBAC: access denied"
	bodyTimeout    = "upstream request timeout"
	bodyNoUpstream = "no healthy upstream"
	bodyBadRequest = "Bad Request"
	bodyConnFailed = "upstream connect error or disconnect/reset before headers"
	// A connect that took longer than connectTimeout, with the reason
	// Envoy gives (a retried request: its latest).
	bodyConnTimeout        = bodyConnFailed + ". reset reason: connection timeout"
	bodyConnTimeoutRetried = bodyConnFailed + ". retried and the latest reset reason: connection timeout"
	bodyOverflow           = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
	bodyRateLimit          = "local_rate_limited"
	bodyFaultAbort         = "fault filter abort"
)

// Envoy response flags used in metrics.
const (
	flagNone            = "-"
	flagNoRoute         = "NR"
	flagNoHealthy       = "UH"
	flagTimeout         = "UT"
	flagConnFailure     = "UF"
	flagRetriesExceeded = "URX"
	flagDownstreamReset = "DC"
	flagOverflow        = resilience.FlagUpstreamOverflow
	flagRateLimited     = resilience.FlagRateLimited
	flagFaultInjected   = resilience.FlagFaultInjected
	flagDelayInjected   = resilience.FlagDelayInjected
)

// reqRecord accumulates what a request's flow record and metrics say,
// and holds what the request's forwarding reuses (forward.go). Records
// are pooled (recPool): one is put back when the request is done unless
// something that may outlive the handler still points into it (recycle
// false: the request body, counted through body, streamed by a
// transport's own goroutine).
type reqRecord struct {
	flow     telemetry.Flow
	protocol string
	flags    string
	delayed  bool // a fault delay held the request (flag DI)
	grpc     string
	body     countingBody
	w        countingWriter
	trace    reqTrace // the request's span (trace.go)

	out     upReq // the upstream requests' parts (forward.go)
	recycle bool  // the record may go back to recPool when the request is done
}

var recPool = sync.Pool{New: func() any {
	rec := &reqRecord{}
	rec.out.init()
	return rec
}}

// newRecord takes a record from the pool, reset.
func newRecord() *reqRecord {
	rec := recPool.Get().(*reqRecord)
	rec.recycle = true
	return rec
}

// release puts rec back into the pool when nothing points into it any
// more, first giving r its own body back.
func (rec *reqRecord) release(r *http.Request) {
	if !rec.recycle {
		return
	}
	if r.Body == &rec.body {
		r.Body = rec.body.rc
	}
	rc, getBody := rec.out.readCloser, rec.out.getBody // bound to rec.out: still good
	*rec = reqRecord{}
	rec.out.readCloser, rec.out.getBody = rc, getBody
	recPool.Put(rec)
}

// ServeHTTP handles one request that arrived through a tunnel: authorize,
// route, forward; one flow record and one metric sample per request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info := tunnelOf(r.Context())
	if info == nil {
		http.Error(w, "waypoint: request outside a tunnel", http.StatusInternalServerError)
		return
	}
	view := p.cfg.Store.Current()
	memo := p.memoFor(view)
	l7 := p.l7.Load()
	rec := newRecord()
	rec.flow = telemetry.Flow{Start: time.Now(), Reporter: "waypoint", Decision: telemetry.Allow,
		Security: "mutual_tls", Transport: info.transport, Method: r.Method, Src: p.srcPeer(view, info)}
	rec.protocol, rec.flags = "http", flagNone
	rec.body.rc = r.Body
	rec.w.ResponseWriter = w
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		rec.protocol = "grpc"
	}
	r.Body = &rec.body
	w = &rec.w
	p.startTrace(rec, r, info)
	defer p.finish(rec, r)

	// The destination: what the tunnel's :authority names now.
	dst := view.Resolve(p.cfg.Network, info.authority)
	var svcNS, svcName, svcKey string
	switch dst.Kind {
	case state.ToService:
		svcNS, svcName, svcKey = dst.Service.GetNamespace(), dst.Service.GetName(), memo.serviceKey(dst.Service)
		rec.flow.Dst.Service = dst.Service.GetHostname()
	case state.ToWorkload:
		rec.flow.Dst = endpointPeer(dst.Workload, info.authorityString(), memo.identity(dst.Workload))
	default:
		p.respond(rec, http.StatusServiceUnavailable, bodyNoUpstream, flagNoRoute)
		return
	}

	// Authorization, on the normalized path.
	target := r.RequestURI
	if !strings.HasPrefix(target, "/") && r.URL.IsAbs() {
		target = r.URL.RequestURI()
	}
	az := l7authz.Evaluate(l7.policiesFor(p.targets, svcNS, svcName), &l7authz.Request{
		Source: info.authz, SourceIP: info.peerAddr.Addr().Unmap(), RemoteIP: info.remote,
		DestinationIP: info.authority.Addr().Unmap(), DestinationPort: info.authority.Port(),
		Method: r.Method, Host: r.Host, Path: target, Header: r.Header,
	})
	rec.flow.Path = az.Path
	if !az.Allow {
		if az.Status == http.StatusForbidden {
			rec.flow.Decision, rec.flow.Policy = telemetry.Deny, az.Policy
			p.respond(rec, http.StatusForbidden, bodyDenied, flagNone)
			return
		}
		rec.flow.Error = az.Reason
		p.respond(rec, http.StatusBadRequest, bodyBadRequest, flagNone)
		return
	}
	rec.flow.Policy = az.Policy
	if !p.admit(rec, r, l7, svcKey) {
		return
	}

	// Routing.
	port := uint32(info.authority.Port())
	var dec route.Decision
	routed := false
	if t, gateway := l7.table(svcKey, port, info.authz.Namespace, p.gwKey); t != nil {
		dec = t.Select(&route.RequestView{Method: r.Method, Scheme: "http", Host: r.Host, Port: port,
			Path: az.Path, RawQuery: r.URL.RawQuery, Header: r.Header}, p.rnd.Uint64)
		// A Gateway table that matches nothing leaves the request to its
		// destination; a Service table's 404 is the route's answer.
		routed = !(gateway && dec.Action == route.NotFound)
	}
	// The backend: the route's, else (the default route) the destination
	// service itself, or none for a workload.
	var backend string // service key
	backendPort, hasBackend := port, false
	switch {
	case !routed:
		dec = route.Decision{Action: route.Forward}
		backend, hasBackend = svcKey, svcKey != ""
	case dec.Backend != nil:
		backend, backendPort, hasBackend = dec.Backend.GetService(), dec.Backend.GetPort(), true
	}
	switch dec.Action {
	case route.NotFound:
		p.respond(rec, dec.Status, "", flagNoRoute)
		return
	case route.Fail:
		p.respond(rec, dec.Status, "", flagNone)
		return
	case route.Redirect:
		for _, m := range dec.ResponseHeaders {
			m.Apply(w.Header())
		}
		w.Header().Set("Location", dec.Location)
		p.respond(rec, dec.Status, "", flagNone)
		return
	}

	up := upstream{port: uint16(port), family: info.authority.Addr()}
	if !hasBackend { // workload-addressed, default route
		up.workload, up.addr, up.addrStr = dst.Workload, info.authority, info.authorityString()
	} else {
		up.svcKey = backend
		up.svc = memo.service(up.svcKey)
		up.port = uint16(backendPort)
		if up.svc == nil {
			p.respond(rec, http.StatusServiceUnavailable, bodyNoUpstream, flagNoHealthy)
			return
		}
		rec.flow.Dst.Service = up.svc.GetHostname()
	}
	up.h2 = r.ProtoMajor == 2 || up.speaksH2() && upgradeType(r) == "" // an upgrade needs HTTP/1.1
	path := az.Path
	if dec.Path != "" {
		path = dec.Path
	}
	host := r.Host
	if dec.Host != "" {
		host = dec.Host
	}
	p.forward(rec, r, view, memo, &dec, up, path, host)
}

// admit applies the local rate limit and the fault injection of the
// destination service, as Envoy's filters before the router: a request
// beyond the rate is answered 429 (RL); a fault delay holds it (DI), a
// fault abort answers it (FI). It reports whether the request goes on.
func (p *Proxy) admit(rec *reqRecord, r *http.Request, l7 *Compiled, svcKey string) bool {
	if svcKey == "" {
		return true
	}
	if b := p.res.Load().buckets[svcKey]; b != nil && !b.tb.Allow(p.now()) {
		p.respond(rec, http.StatusTooManyRequests, bodyRateLimit, flagRateLimited)
		return false
	}
	delay, abort := l7.policy(svcKey).fault.Decide(p.rnd64)
	if delay > 0 {
		rec.delayed = true
		if !sleep(r.Context(), delay) {
			rec.flags = flagDownstreamReset
			return false
		}
	}
	if abort != 0 {
		p.respond(rec, abort, bodyFaultAbort, flagFaultInjected)
		return false
	}
	return true
}

// respond sends a local reply.
func (p *Proxy) respond(rec *reqRecord, code int, body, flags string) {
	h := rec.w.Header()
	if body != "" {
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	rec.w.WriteHeader(code)
	if body != "" {
		rec.w.Write([]byte(body))
	}
	rec.flags = flags
}

// finish records the request, then releases rec.
func (p *Proxy) finish(rec *reqRecord, r *http.Request) {
	defer rec.release(r)
	f := &rec.flow
	if rec.delayed {
		rec.flags = addFlag(rec.flags, flagDelayInjected)
	}
	if rec.flags != flagNone {
		f.ResponseFlags = rec.flags
	}
	f.Duration = time.Since(f.Start)
	f.BytesSent, f.BytesRecv = rec.body.n, rec.w.n
	f.ResponseCode = rec.w.code
	p.endTrace(rec)
	if p.cfg.FlowLog != nil {
		p.cfg.FlowLog.Record(*f)
	}
	if p.cfg.Metrics != nil {
		p.cfg.Metrics.Observe(telemetry.Request{Flow: *f, Protocol: rec.protocol, GRPCStatus: rec.grpc, Flags: rec.flags})
	}
}

// srcPeer describes the tunnel's client: its verified identity, and the
// workload at its address (with ztunnel's in-pod tunnels, the source pod).
// It is derived once per tunnel and view.
func (p *Proxy) srcPeer(view *state.View, info *tunnelInfo) telemetry.Peer {
	if m := info.src.Load(); m != nil && m.view == view {
		return m.peer
	}
	peer := p.deriveSrcPeer(view, info)
	info.src.Store(&srcMemo{view: view, peer: peer})
	return peer
}

func (p *Proxy) deriveSrcPeer(view *state.View, info *tunnelInfo) telemetry.Peer {
	var peer telemetry.Peer
	if !info.peer.IsZero() {
		peer.Identity = info.peer.String()
	}
	if info.peerAddr.IsValid() {
		peer.Addr = info.peerAddrString()
		if w := view.WorkloadByAddr(p.cfg.Network, info.peerAddr.Addr().Unmap()); w != nil {
			peer.Workload, peer.Namespace = w.GetName(), w.GetNamespace()
			peer.App, peer.Version = w.GetCanonicalName(), w.GetCanonicalRevision()
		}
	}
	if peer.Namespace == "" {
		peer.Namespace = info.authz.Namespace
	}
	return peer
}
