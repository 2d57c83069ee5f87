package resilience

import (
	"math/bits"
	"sync/atomic"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// Policy is a load balancing algorithm (Istio's LoadBalancerSettings.simple).
type Policy uint8

// The algorithms.
const (
	LeastRequest Policy = iota // Istio's default
	RoundRobin
	Random
	// Passthrough keeps the caller's original destination; the proxy does
	// not ask a Picker (Pick falls back to Random).
	Passthrough
)

// PolicyFrom maps the proto's enum.
func PolicyFrom(lb waypointapi.LoadBalancer) Policy {
	switch lb {
	case waypointapi.LoadBalancer_LB_ROUND_ROBIN:
		return RoundRobin
	case waypointapi.LoadBalancer_LB_RANDOM:
		return Random
	case waypointapi.LoadBalancer_LB_PASSTHROUGH:
		return Passthrough
	}
	return LeastRequest
}

// Endpoint is a candidate host. Active counts its requests in flight, which
// LeastRequest compares; the proxy calls Start and Done around each request.
type Endpoint struct {
	Addr   string
	active atomic.Int64
}

// Start records a request to e beginning.
func (e *Endpoint) Start() { e.active.Add(1) }

// Done records a request to e ending.
func (e *Endpoint) Done() { e.active.Add(-1) }

// Active is the number of requests in flight to e.
func (e *Endpoint) Active() int64 { return e.active.Load() }

// HealthChecker says whether a host may be picked; *[Outlier] is one.
type HealthChecker interface {
	Healthy(addr string) bool
}

// Picker chooses an endpoint for each request. It is safe for concurrent
// use; Pick does not allocate.
type Picker struct {
	policy Policy
	rr     atomic.Uint64
}

// NewPicker returns a Picker for p.
func NewPicker(p Policy) *Picker { return &Picker{policy: p} }

// Policy is the Picker's algorithm.
func (p *Picker) Policy() Policy { return p.policy }

// Pick returns the index in eps of the endpoint to use, skipping those
// health (nil: all healthy) rejects, or -1 when none is healthy (the proxy
// answers 503 with flag [FlagNoHealthyUpstream]). rnd supplies uniformly
// distributed random numbers (Random, LeastRequest).
func (p *Picker) Pick(eps []*Endpoint, health HealthChecker, rnd func() uint64) int {
	n := 0
	for _, e := range eps {
		if health == nil || health.Healthy(e.Addr) {
			n++
		}
	}
	if n == 0 {
		return -1
	}
	switch p.policy {
	case RoundRobin:
		return nthHealthy(eps, health, int((p.rr.Add(1)-1)%uint64(n)))
	case LeastRequest:
		if n == 1 {
			return nthHealthy(eps, health, 0)
		}
		// Power of two choices: two distinct random healthy hosts, the
		// one with fewer active requests (the first on a tie).
		a := uniform(rnd, n)
		b := uniform(rnd, n-1)
		if b >= a {
			b++
		}
		ia, ib := nthHealthy(eps, health, a), nthHealthy(eps, health, b)
		if ia < 0 || ib < 0 {
			return max(ia, ib) // hosts were ejected meanwhile
		}
		if eps[ib].Active() < eps[ia].Active() {
			return ib
		}
		return ia
	default:
		return nthHealthy(eps, health, uniform(rnd, n))
	}
}

func uniform(rnd func() uint64, n int) int {
	hi, _ := bits.Mul64(rnd(), uint64(n))
	return int(hi)
}

// nthHealthy is the index of the k-th (from 0) healthy endpoint. Health
// may change between Pick's count and this walk (another request ejected
// a host): then it is the last healthy one, or -1 if none is left.
func nthHealthy(eps []*Endpoint, health HealthChecker, k int) int {
	last := -1
	for i, e := range eps {
		if health == nil || health.Healthy(e.Addr) {
			if k == 0 {
				return i
			}
			k--
			last = i
		}
	}
	return last
}
