package resilience

import (
	"errors"
	"math"
	"sync/atomic"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// Envoy's response flags for the outcomes of this package, for access logs
// and the response_flags metric label.
const (
	// FlagUpstreamOverflow: a circuit breaker limit was reached (503).
	FlagUpstreamOverflow = "UO"
	// FlagNoHealthyUpstream: no host to send the request to (503).
	FlagNoHealthyUpstream = "UH"
	// FlagRateLimited: the local rate limit refused the request (429).
	FlagRateLimited = "RL"
	// FlagFaultInjected: a fault abort answered the request.
	FlagFaultInjected = "FI"
	// FlagDelayInjected: a fault delay held the request.
	FlagDelayInjected = "DI"
)

// ErrOverflow is returned by [Limiter.Acquire] when the limit is reached.
var ErrOverflow = errors.New("resilience: circuit breaker overflow")

// Resource is one of the counters of a [Limiter].
type Resource uint8

// The resources a [Limiter] bounds (Envoy's circuit breaker thresholds).
const (
	// Connections open to the destination's hosts (tcp.maxConnections).
	Connections Resource = iota
	// PendingRequests waiting for a connection
	// (http.http1MaxPendingRequests).
	PendingRequests
	// Requests in flight to the destination (http.http2MaxRequests).
	Requests
	// Retries in flight (http.maxRetries).
	Retries
	numResources
)

func (r Resource) String() string {
	switch r {
	case Connections:
		return "connections"
	case PendingRequests:
		return "pending_requests"
	case Requests:
		return "requests"
	case Retries:
		return "retries"
	}
	return "unknown"
}

// Limits are the thresholds of a [Limiter]; 0 means unlimited (Istio's
// default, 2^32-1, is unlimited in effect).
type Limits struct {
	MaxConnections     uint32
	MaxPendingRequests uint32
	MaxRequests        uint32
	MaxRetries         uint32
}

// LimitsFrom reads the thresholds of a connection pool policy; nil means
// no limits.
func LimitsFrom(p *waypointapi.ConnectionPool) Limits {
	return Limits{
		MaxConnections:     p.GetMaxConnections(),
		MaxPendingRequests: p.GetHttp1MaxPendingRequests(),
		MaxRequests:        p.GetHttp2MaxRequests(),
		MaxRetries:         p.GetMaxRetries(),
	}
}

// Limiter is a circuit breaker for one destination (Envoy's per-cluster
// thresholds). It is safe for concurrent use and lock-free; Acquire and the
// release functions it returns do not allocate.
type Limiter struct {
	max      [numResources]int64
	active   [numResources]atomic.Int64
	overflow [numResources]atomic.Uint64
	release  [numResources]func()
}

// NewLimiter returns a Limiter with the given limits.
func NewLimiter(l Limits) *Limiter {
	lim := &Limiter{}
	for r, v := range [numResources]uint32{l.MaxConnections, l.MaxPendingRequests, l.MaxRequests, l.MaxRetries} {
		lim.max[r] = int64(v)
		if v == 0 || v == math.MaxUint32 {
			lim.max[r] = math.MaxInt64
		}
		c := &lim.active[r]
		lim.release[r] = func() { c.Add(-1) }
	}
	return lim
}

// Acquire takes one unit of r. It never blocks: at the limit it returns
// ErrOverflow (the proxy answers 503 with flag [FlagUpstreamOverflow]).
// Otherwise the caller must call release exactly once when the connection,
// pending request, request or retry ends.
func (l *Limiter) Acquire(r Resource) (release func(), err error) {
	c, limit := &l.active[r], l.max[r]
	for {
		n := c.Load()
		if n >= limit {
			l.overflow[r].Add(1)
			return nil, ErrOverflow
		}
		if c.CompareAndSwap(n, n+1) {
			return l.release[r], nil
		}
	}
}

// Active is the number of units of r held now.
func (l *Limiter) Active(r Resource) int64 { return l.active[r].Load() }

// Overflows is the number of refused Acquire calls for r so far (Envoy's
// upstream_cx_overflow, upstream_rq_pending_overflow, ...).
func (l *Limiter) Overflows(r Resource) uint64 { return l.overflow[r].Load() }
