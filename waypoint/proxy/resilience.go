package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/waypoint/resilience"
)

// svcPolicy is the compiled resilience policy of one service: immutable,
// built by Compile. Its src parts decide, by proto.Equal, whether a new
// configuration keeps a mechanism's state.
type svcPolicy struct {
	src   *waypointapi.ServiceResilience
	lb    resilience.Policy
	fault *resilience.Fault // nil: none
}

// defaultPolicy is Istio's for a service without a DestinationRule:
// LEAST_REQUEST, no limits, no outlier detection, no rate limit, no faults.
var defaultPolicy = &svcPolicy{src: &waypointapi.ServiceResilience{}, lb: resilience.LeastRequest}

func (p *svcPolicy) pool() *waypointapi.ConnectionPool {
	return p.src.GetTrafficPolicy().GetConnectionPool()
}

func (p *svcPolicy) outlier() *waypointapi.OutlierDetection {
	return p.src.GetTrafficPolicy().GetOutlierDetection()
}

func (p *svcPolicy) rateLimit() *waypointapi.RateLimit { return p.src.GetLocalPolicy().GetRateLimit() }

// compilePolicy checks r and compiles it. istiod-lite validates policies;
// this refuses what would make the waypoint misbehave.
func compilePolicy(r *waypointapi.ServiceResilience) (*svcPolicy, error) {
	if r.GetServiceKey() == "" || !strings.Contains(r.GetServiceKey(), "/") {
		return nil, fmt.Errorf("service_key %q is not namespace/hostname", r.GetServiceKey())
	}
	if rl := r.GetLocalPolicy().GetRateLimit(); rl != nil && (rl.GetRequestsPerUnit() == 0 || rl.GetUnit().AsDuration() <= 0) {
		return nil, fmt.Errorf("rate limit of %d per %v admits nothing", rl.GetRequestsPerUnit(), rl.GetUnit().AsDuration())
	}
	f := r.GetLocalPolicy().GetFault()
	if d := f.GetDelay(); d != nil && (d.GetFixedDelay().AsDuration() < 0 || !validPercent(d.GetPercentage())) {
		return nil, fmt.Errorf("fault delay %v for %v %% is out of range", d.GetFixedDelay().AsDuration(), d.GetPercentage())
	}
	if a := f.GetAbort(); a != nil && (a.GetHttpStatus() < 200 || a.GetHttpStatus() > 599 || !validPercent(a.GetPercentage())) {
		return nil, fmt.Errorf("fault abort %d for %v %% is out of range (status 200-599, 0-100 %%)", a.GetHttpStatus(), a.GetPercentage())
	}
	if od := r.GetTrafficPolicy().GetOutlierDetection(); od.GetMaxEjectionPercent() > 100 || od.GetMinHealthPercent() > 100 {
		return nil, errors.New("outlier detection percentages over 100")
	}
	if err := checkConnSettings(r.GetTrafficPolicy().GetConnectionPool()); err != nil {
		return nil, err
	}
	return &svcPolicy{src: r, lb: resilience.PolicyFrom(r.GetTrafficPolicy().GetLoadBalancer()), fault: resilience.FaultFrom(f)}, nil
}

func validPercent(p float64) bool { return p >= 0 && p <= 100 }

// resTable is the state of the resilience mechanisms in force: immutable,
// replaced as a whole (copy on write) under Proxy.resMu.
type resTable struct {
	// buckets are the local rate limits, by service key.
	buckets map[string]*bucket
	// clusters are created on a service port's first request.
	clusters map[destKey]*cluster
	// ups are the upstream clients by connection settings (upstream.go):
	// the default ones and those of the configuration's policies.
	ups map[connSettings]*upstreams
}

type bucket struct {
	src *waypointapi.RateLimit
	tb  *resilience.TokenBucket
}

// destKey names a cluster, as Envoy has one per service port.
type destKey struct {
	svc  string // service key
	port uint16
}

// cluster is the state of one service port: circuit breaker, outlier
// detection, load balancer and endpoint set. Its pointers are shared with
// the cluster it was carried over from wherever the policy part is equal.
type cluster struct {
	pol     *svcPolicy
	pool    *connPool
	outlier *resilience.Outlier // nil: off
	picker  *resilience.Picker
	eps     *endpoints // always carried over
	up      *upstreams // the clients of pol's connection settings; nil: the default ones
}

// connPool is the circuit breaker of a connection pool policy.
type connPool struct {
	src     *waypointapi.ConnectionPool
	limiter *resilience.Limiter
	// conns are the connections in use, at most maxConnections (nil:
	// unlimited): an HTTP/1.1 connection per request in flight, and each
	// open HTTP/2 connection this cluster's requests opened (h2Limit).
	conns       chan struct{}
	releaseConn func()
	perConn     uint32 // maxRequestsPerConnection, 0: unlimited
	// own are the cluster's own upstream clients, made with the pool when
	// it limits connections (ownClients) and retired with it.
	own *upstreams
}

func newConnPool(src *waypointapi.ConnectionPool) *connPool {
	p := &connPool{src: src, limiter: resilience.NewLimiter(resilience.LimitsFrom(src)), perConn: src.GetMaxRequestsPerConnection()}
	if n := src.GetMaxConnections(); n != 0 && n != math.MaxUint32 {
		p.conns = make(chan struct{}, n) // zero-size elements: no memory per slot
		p.releaseConn = func() { <-p.conns }
	}
	return p
}

// endpoints is a cluster's endpoint set for the mesh view it was built
// from, rebuilt when the view changes.
type endpoints struct {
	mu  sync.Mutex // serializes rebuilds
	cur atomic.Pointer[epSet]
}

type epSet struct {
	view  *state.View
	eps   []state.Endpoint
	lb    []*resilience.Endpoint // lb[i] is eps[i], with its requests in flight
	peers []telemetry.Peer       // peers[i] describes eps[i] (no Service)
	err   error
}

func newCluster(pol *svcPolicy, now func() time.Time, up *upstreams) *cluster {
	c := &cluster{pol: pol, pool: newConnPool(pol.pool()), picker: resilience.NewPicker(pol.lb), eps: &endpoints{}, up: up}
	c.outlier = newOutlier(pol, now)
	return c
}

func newOutlier(pol *svcPolicy, now func() time.Time) *resilience.Outlier {
	cfg, ok := resilience.OutlierConfigFrom(pol.outlier())
	if !ok {
		return nil
	}
	return resilience.NewOutlier(cfg, now)
}

// carry returns the cluster under pol, using the upstream clients up:
// each mechanism whose part of the policy is unchanged keeps its state
// (counters, ejections, round-robin position); the endpoint set and its
// requests in flight always stay.
func (c *cluster) carry(pol *svcPolicy, now func() time.Time, up *upstreams) *cluster {
	n := &cluster{pol: pol, pool: c.pool, outlier: c.outlier, picker: c.picker, eps: c.eps, up: up}
	if !proto.Equal(c.pol.pool(), pol.pool()) {
		n.pool = newConnPool(pol.pool())
	}
	if !proto.Equal(c.pol.outlier(), pol.outlier()) {
		n.outlier = newOutlier(pol, now)
		if s := c.eps.cur.Load(); n.outlier != nil && s != nil {
			n.outlier.SetHosts(addrsOf(s.lb))
		}
	}
	if c.pol.lb != pol.lb {
		n.picker = resilience.NewPicker(pol.lb)
	}
	return n
}

// reconcile is the state table for configuration c after old: rate limits
// and clusters whose policy part is unchanged keep their state; clusters
// of services that exist no more (live reports false) are dropped. upFor
// gives a cluster's upstream clients (nil: none, the default ones); the
// caller sets the table's ups.
func reconcile(old *resTable, c *Compiled, live func(svcKey string) bool, now func() time.Time, upFor func(*svcPolicy) *upstreams) *resTable {
	next := &resTable{buckets: make(map[string]*bucket), clusters: make(map[destKey]*cluster, len(old.clusters))}
	for key, pol := range c.resilience {
		rl := pol.rateLimit()
		switch b := old.buckets[key]; {
		case rl == nil:
		case b != nil && proto.Equal(b.src, rl):
			next.buckets[key] = b
		default:
			next.buckets[key] = &bucket{src: rl, tb: resilience.TokenBucketFrom(rl, now())}
		}
	}
	for k, cl := range old.clusters {
		if live(k.svc) {
			pol := c.policy(k.svc)
			var up *upstreams
			if upFor != nil {
				up = upFor(pol)
			}
			next.clusters[k] = cl.carry(pol, now, up)
		}
	}
	return next
}

// ownClients gives a cluster that limits its connections (maxConnections)
// upstream clients of its own, made with its connection pool and retired
// with it: an HTTP/2 connection holds one of the cluster's slots while
// open, so it must carry only that cluster's requests, as Envoy's
// connection pools are per cluster. Other clusters share clients by
// connection settings.
func (p *Proxy) ownClients(cl *cluster) {
	if cl.pool.conns == nil {
		return
	}
	if cl.pool.own == nil {
		own := p.newUpstreams(settingsOf(cl.pool.src, p.defConn))
		// At most maxConnections HTTP/2 connections per endpoint, those
		// being dialled included: a request that comes while its
		// endpoint's connection is being dialled waits for that one and
		// shares it (Envoy's pending requests), instead of dialling its
		// own and finding no slot free.
		own.h2.MaxConnsPerHost = cap(cl.pool.conns)
		cl.pool.own = own
	}
	cl.up = cl.pool.own
}

// ownRetired lists the own clients of old's clusters whose connection
// pool next no longer has (the cluster is gone or its pool changed).
func ownRetired(old, next *resTable) []*upstreams {
	var out []*upstreams
	for k, cl := range old.clusters {
		if cl.pool.own == nil {
			continue
		}
		if n := next.clusters[k]; n == nil || n.pool != cl.pool {
			out = append(out, cl.pool.own)
		}
	}
	return out
}

// serviceLive reports whether the service with key svcKey is in the mesh.
func (p *Proxy) serviceLive(svcKey string) bool {
	ns, host, _ := strings.Cut(svcKey, "/")
	return p.cfg.Store.Current().Service(ns, host) != nil
}

// cluster returns the state of u's service port, creating it on first use;
// nil for a workload-addressed request or a port the service lacks.
func (p *Proxy) cluster(u upstream) *cluster {
	if u.svc == nil {
		return nil
	}
	k := destKey{svc: u.svcKey, port: u.port}
	if cl := p.res.Load().clusters[k]; cl != nil {
		return cl
	}
	if !hasPort(u.svc, u.port) {
		return nil
	}
	p.resMu.Lock()
	defer p.resMu.Unlock()
	t := p.res.Load()
	if cl := t.clusters[k]; cl != nil {
		return cl
	}
	pol := p.l7.Load().policy(k.svc)
	cl := newCluster(pol, p.now, p.upstreamsIn(t.ups, pol))
	p.ownClients(cl)
	next := &resTable{buckets: t.buckets, clusters: maps.Clone(t.clusters), ups: t.ups}
	if next.clusters == nil {
		next.clusters = make(map[destKey]*cluster)
	}
	next.clusters[k] = cl
	p.res.Store(next)
	return cl
}

func hasPort(svc *workloadapi.Service, port uint16) bool {
	for _, sp := range svc.GetPorts() {
		if sp.GetServicePort() == uint32(port) {
			return true
		}
	}
	return false
}

// endpointSet is the cluster's endpoints in view, built once per view.
func (c *cluster) endpointSet(view *state.View, svc *workloadapi.Service, port uint16) *epSet {
	if s := c.eps.cur.Load(); s != nil && s.view == view {
		return s
	}
	c.eps.mu.Lock()
	defer c.eps.mu.Unlock()
	prev := c.eps.cur.Load()
	if prev != nil && prev.view == view {
		return prev
	}
	s := buildEpSet(view, svc, port, prev)
	c.eps.cur.Store(s)
	if c.outlier != nil && (prev == nil || !sameAddrs(prev.lb, s.lb)) {
		c.outlier.SetHosts(addrsOf(s.lb))
	}
	return s
}

// buildEpSet lists the eligible endpoints with an address, keeping the
// load balancer's endpoints (and their requests in flight) from prev.
func buildEpSet(view *state.View, svc *workloadapi.Service, port uint16, prev *epSet) *epSet {
	s := &epSet{view: view}
	eligible, err := view.EligibleEndpoints(svc, port)
	if err != nil {
		s.err = err
		return s
	}
	for _, ep := range eligible {
		if !ep.Addr.IsValid() {
			continue
		}
		addr := ep.Addr.String()
		var lb *resilience.Endpoint
		if prev != nil {
			for _, old := range prev.lb {
				if old.Addr == addr {
					lb = old
					break
				}
			}
		}
		if lb == nil {
			lb = &resilience.Endpoint{Addr: addr}
		}
		s.eps, s.lb = append(s.eps, ep), append(s.lb, lb)
		s.peers = append(s.peers, endpointPeer(ep.Workload, addr, workloadIDString(ep.Workload)))
	}
	if len(s.eps) == 0 {
		s.err = fmt.Errorf("service %s port %d: no endpoint with an address: %w", state.ServiceKey(svc), port, state.ErrNoEndpoint)
	}
	return s
}

func addrsOf(lb []*resilience.Endpoint) []string {
	out := make([]string, len(lb))
	for i, e := range lb {
		out[i] = e.Addr
	}
	return out
}

func sameAddrs(a, b []*resilience.Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Addr != b[i].Addr {
			return false
		}
	}
	return true
}

// errNoHealthy: every endpoint is ejected (and the panic threshold does
// not put them back).
var errNoHealthy = errors.New("every endpoint is ejected by outlier detection")

// pickFrom chooses the endpoint of one attempt with the cluster's load
// balancer, skipping ejected endpoints. peer describes it; lb is its
// load-balancer entry.
func (c *cluster) pickFrom(view *state.View, u upstream, rnd func() uint64) (ep state.Endpoint, peer telemetry.Peer, lb *resilience.Endpoint, err error) {
	s := c.endpointSet(view, u.svc, u.port)
	if s.err != nil {
		return state.Endpoint{}, peer, nil, s.err
	}
	var health resilience.HealthChecker
	if c.outlier != nil {
		health = c.outlier
	}
	i := c.picker.Pick(s.lb, health, rnd)
	if i < 0 {
		return state.Endpoint{}, peer, nil, fmt.Errorf("service %s port %d: %w", u.svcKey, u.port, errNoHealthy)
	}
	return s.eps[i], s.peers[i], s.lb[i], nil
}

// upstreams is the cluster's upstream clients: its own, else def (no
// cluster, or one built without).
func (c *cluster) upstreams(def *upstreams) *upstreams {
	if c == nil || c.up == nil {
		return def
	}
	return c.up
}

// observe gives outlier detection one attempt's outcome at endpoint lb.
func (c *cluster) observe(lb *resilience.Endpoint, status int, err error) {
	if c == nil || c.outlier == nil || lb == nil {
		return
	}
	c.outlier.Observe(lb.Addr, status, err)
}

// acquireConn takes one of the cluster's HTTP/1.1 connections for a
// request. When all maxConnections are in use the request waits for one
// as a pending request, at most http1MaxPendingRequests at once: beyond,
// it fails with resilience.ErrOverflow at once. It returns the release
// function (nil when nothing is held), or ctx's error.
func (c *cluster) acquireConn(ctx context.Context) (release func(), err error) {
	p := c.pool
	if p.conns == nil {
		return nil, nil
	}
	if release, ok := p.tryConn(); ok {
		return release, nil
	}
	done, err := p.limiter.Acquire(resilience.PendingRequests)
	if err != nil {
		return nil, err
	}
	defer done()
	select {
	case p.conns <- struct{}{}:
		return p.releaseConn, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// tryConn takes one of the pool's connections if one is free
// (or the pool has no limit: nil release), without waiting.
func (p *connPool) tryConn() (release func(), ok bool) {
	if p.conns == nil {
		return nil, true
	}
	select {
	case p.conns <- struct{}{}:
		return p.releaseConn, true
	default:
		return nil, false
	}
}

// limitPerConn applies maxRequestsPerConnection to a request: with 1
// every request closes its connection; with n the request that is the
// n-th on its connection asks for it to be closed after the response.
// Over HTTP/2 the same asking ("Connection: close", never sent as a
// field) marks the connection for no new streams: it closes once its
// streams in flight end, as Envoy drains it.
func limitPerConn(req *http.Request, n uint32) *http.Request {
	if n == 0 {
		return req
	}
	if n == 1 {
		req.Close = true
		return req
	}
	req.Header = req.Header.Clone() // the header is shared with other attempts and mirrors
	h := req.Header
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		conn := info.Conn
		if tc, ok := conn.(*tls.Conn); ok { // how http.Transport wraps an h2c connection
			conn = tc.NetConn()
		}
		if c, ok := conn.(*upConn); ok && c.requests.Add(1) >= n {
			h.Set("Connection", "close")
		}
	}}
	return req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
}

// awaitH2Conn counts an HTTP/2 request as pending while it waits for a
// connection: when its cluster's clients ups have none open to its
// endpoint addr, it waits for one to be dialled, as Envoy's HTTP/2 pool
// holds a request as pending while it connects. Beyond
// http1MaxPendingRequests that is resilience.ErrOverflow at once. The
// request is no longer pending once it has its connection (its GotConn
// trace) or its attempt ends (a.releaseAttempt), whichever comes first.
func (c *cluster) awaitH2Conn(req *http.Request, ups *upstreams, addr string, a *attempt) (*http.Request, error) {
	if c == nil || ups.h2open.any(addr) {
		return req, nil
	}
	done, err := c.pool.limiter.Acquire(resilience.PendingRequests)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	release := func() { once.Do(done) }
	a.pending = release
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { release() }}
	return req.WithContext(httptrace.WithClientTrace(req.Context(), trace)), nil
}

// h2PoolKey is the context key under which an HTTP/2 request carries its
// cluster's connection pool to the dial (http.Transport dials with the
// request's context values): a new connection takes one of its
// maxConnections for as long as it is open.
type h2PoolKey struct{}

// h2Limit gives an HTTP/2 request's context its cluster's connection
// limit, when the cluster has one.
func h2Limit(ctx context.Context, cl *cluster) context.Context {
	if cl == nil || cl.pool.conns == nil {
		return ctx
	}
	return context.WithValue(ctx, h2PoolKey{}, cl.pool)
}

// h2ConnSlot takes, for a connection about to be dialled for ctx's HTTP/2
// request, one of its cluster's maxConnections, without waiting: none
// free is resilience.ErrOverflow, as Envoy's HTTP/2 pool fails a request
// that would need a connection beyond the limit. release (nil: nothing
// held) gives it back.
func h2ConnSlot(ctx context.Context) (release func(), err error) {
	pool, ok := ctx.Value(h2PoolKey{}).(*connPool)
	if !ok {
		return nil, nil
	}
	release, ok = pool.tryConn()
	if !ok {
		return nil, fmt.Errorf("waypoint: maxConnections reached: %w", resilience.ErrOverflow)
	}
	return release, nil
}

// upConn is an upstream connection, counting the requests it carried;
// closing it runs, once, what onClose added (giving back the connection
// slot it holds, counting it closed).
type upConn struct {
	net.Conn
	requests atomic.Uint32
	closed   []func()
	once     sync.Once
}

// onClose adds f to what closing the connection runs; only before the
// connection is handed to its client.
func (c *upConn) onClose(f func()) { c.closed = append(c.closed, f) }

// Close implements net.Conn.
func (c *upConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		for _, f := range c.closed {
			f()
		}
	})
	return err
}

// CloseWrite half-closes the connection (an upgraded one's client ended
// its side).
func (c *upConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// acquireRetry takes one of the cluster's retries in flight
// (http.maxRetries); nil release when there is no cluster.
func (c *cluster) acquireRetry() (release func(), err error) {
	if c == nil {
		return nil, nil
	}
	return c.pool.limiter.Acquire(resilience.Retries)
}

// attempt is what the request's current attempt holds; the release
// methods free it, each part once.
type attempt struct {
	conn    func()               // a connection of the cluster
	pending func()               // a pending request, until it has a connection (nil: none, or given back)
	ep      *resilience.Endpoint // a request in flight to the endpoint
	retry   func()               // a retry in flight, until its outcome
}

func (a *attempt) release() {
	a.releaseAttempt()
	a.releaseRetry()
}

func (a *attempt) releaseAttempt() {
	if a.pending != nil {
		a.pending()
		a.pending = nil
	}
	if a.conn != nil {
		a.conn()
		a.conn = nil
	}
	if a.ep != nil {
		a.ep.Done()
		a.ep = nil
	}
}

func (a *attempt) releaseRetry() {
	if a.retry != nil {
		a.retry()
		a.retry = nil
	}
}

// sleep waits d, or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Envoy's response flags in the order Envoy prints them.
var flagOrder = [...]string{flagNoHealthy, flagTimeout, flagConnFailure, flagOverflow, flagNoRoute,
	flagDelayInjected, flagFaultInjected, flagRateLimited, flagDownstreamReset, flagRetriesExceeded}

// addFlag adds f to flags ("-" for none), in Envoy's order.
func addFlag(flags, f string) string {
	if flags == "" || flags == flagNone {
		return f
	}
	set := strings.Split(flags, ",")
	if slices.Contains(set, f) {
		return flags
	}
	set = append(set, f)
	slices.SortStableFunc(set, func(a, b string) int { return cmp.Compare(flagRank(a), flagRank(b)) })
	return strings.Join(set, ",")
}

func flagRank(f string) int {
	if i := slices.Index(flagOrder[:], f); i >= 0 {
		return i
	}
	return len(flagOrder)
}
