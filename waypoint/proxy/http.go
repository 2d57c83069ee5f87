package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/proto/workloadapi"
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

// reqRecord accumulates what a request's flow record and metrics say.
type reqRecord struct {
	flow     telemetry.Flow
	protocol string
	flags    string
	delayed  bool // a fault delay held the request (flag DI)
	grpc     string
	body     *countingBody
	w        *countingWriter
	trace    reqTrace // the request's span (trace.go)
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
	l7 := p.l7.Load()
	rec := &reqRecord{
		flow: telemetry.Flow{Start: time.Now(), Reporter: "waypoint", Decision: telemetry.Allow,
			Security: "mutual_tls", Transport: "hbone", Method: r.Method, Src: p.srcPeer(view, info)},
		protocol: "http", flags: flagNone,
		body: &countingBody{rc: r.Body},
		w:    &countingWriter{ResponseWriter: w},
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		rec.protocol = "grpc"
	}
	r.Body = rec.body
	w = rec.w
	p.startTrace(rec, r, info)
	defer p.finish(rec)

	// The destination: what the tunnel's :authority names now.
	dst := view.Resolve(p.cfg.Network, info.authority)
	var svcNS, svcName, svcKey string
	switch dst.Kind {
	case state.ToService:
		svcNS, svcName, svcKey = dst.Service.GetNamespace(), dst.Service.GetName(), state.ServiceKey(dst.Service)
		rec.flow.Dst.Service = dst.Service.GetHostname()
	case state.ToWorkload:
		rec.flow.Dst = p.workloadPeer(dst.Workload, info.authority)
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
	if t, gateway := l7.table(svcKey, port, info.authz.Namespace, p.gwKey()); t != nil {
		dec = t.Select(&route.RequestView{Method: r.Method, Scheme: "http", Host: r.Host, Port: port,
			Path: az.Path, RawQuery: r.URL.RawQuery, Header: r.Header}, p.rnd.Uint64)
		// A Gateway table that matches nothing leaves the request to its
		// destination; a Service table's 404 is the route's answer.
		routed = !(gateway && dec.Action == route.NotFound)
	}
	if !routed {
		dec = route.Decision{Action: route.Forward}
		if svcKey != "" {
			dec.Backend = &waypointapi.Destination{Service: svcKey, Port: port}
		}
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

	up := upstream{port: uint16(port)}
	if dec.Backend == nil { // workload-addressed, default route
		up.workload, up.addr = dst.Workload, info.authority
	} else {
		up.svcKey = dec.Backend.GetService()
		ns, host, _ := strings.Cut(up.svcKey, "/")
		up.svc = view.Service(ns, host)
		up.port = uint16(dec.Backend.GetPort())
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
	p.forward(rec, r, view, &dec, up, path, host)
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

// gwKey is the waypoint Gateway's routing key, "namespace/name".
func (p *Proxy) gwKey() string { return p.cfg.GatewayNamespace + "/" + p.cfg.GatewayName }

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

// finish records the request.
func (p *Proxy) finish(rec *reqRecord) {
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
func (p *Proxy) srcPeer(view *state.View, info *tunnelInfo) telemetry.Peer {
	var peer telemetry.Peer
	if !info.peer.IsZero() {
		peer.Identity = info.peer.String()
	}
	if info.peerAddr.IsValid() {
		peer.Addr = info.peerAddr.String()
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

// workloadPeer describes an endpoint.
func (p *Proxy) workloadPeer(w *workloadapi.Workload, addr interface{ String() string }) telemetry.Peer {
	peer := telemetry.Peer{Workload: w.GetName(), Namespace: w.GetNamespace(),
		App: w.GetCanonicalName(), Version: w.GetCanonicalRevision(), Addr: addr.String()}
	if id, err := workloadID(w); err == nil {
		peer.Identity = id.String()
	}
	return peer
}
