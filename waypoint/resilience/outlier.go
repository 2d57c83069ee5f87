package resilience

import (
	"sync"
	"time"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// Istio's and Envoy's outlier detection defaults, used for the zero values
// of [OutlierConfig].
const (
	DefaultInterval         = 10 * time.Second
	DefaultBaseEjectionTime = 30 * time.Second
	DefaultMaxEjectionPct   = 10
	// MaxEjectionTime is Envoy's max_ejection_time default, which Istio
	// does not set: the ejection time stops growing there.
	MaxEjectionTime = 300 * time.Second
)

// OutlierConfig is an OutlierDetection policy. Zero durations and
// MaxEjectionPercent take the defaults above; zero error counts disable that
// kind of ejection.
type OutlierConfig struct {
	// Consecutive5xx is consecutive5xxErrors: 5xx responses (and
	// local-origin errors) in a row that eject a host.
	Consecutive5xx uint32
	// ConsecutiveGateway is consecutiveGatewayErrors: 502, 503 and 504
	// responses (and local-origin errors) in a row that eject a host.
	ConsecutiveGateway uint32
	Interval           time.Duration
	BaseEjectionTime   time.Duration
	MaxEjectionPercent uint32
	// MinHealthPercent is the panic threshold: below it every host counts
	// as healthy. 0 disables panic mode.
	MinHealthPercent uint32
}

// OutlierConfigFrom reads a policy istiod-lite sent; nil means outlier
// detection is off, and ok is false.
func OutlierConfigFrom(p *waypointapi.OutlierDetection) (cfg OutlierConfig, ok bool) {
	if p == nil {
		return OutlierConfig{}, false
	}
	return OutlierConfig{
		Consecutive5xx:     p.GetConsecutive_5XxErrors(),
		ConsecutiveGateway: p.GetConsecutiveGatewayErrors(),
		Interval:           p.GetInterval().AsDuration(),
		BaseEjectionTime:   p.GetBaseEjectionTime().AsDuration(),
		MaxEjectionPercent: p.GetMaxEjectionPercent(),
		MinHealthPercent:   p.GetMinHealthPercent(),
	}, true
}

// Outlier tracks the health of one destination's hosts from the responses
// they give. It is safe for concurrent use; Healthy and Observe do not
// allocate once a host is known.
type Outlier struct {
	cfg OutlierConfig
	now func() time.Time

	mu sync.Mutex
	// mu guards the fields below.
	hosts     map[string]*hostState
	ejected   int       // hosts ejected now
	total     uint64    // ejections so far, of every host ever in the set
	nextSweep time.Time // zero until the first call
	panicking bool      // fewer than MinHealthPercent healthy
}

type hostState struct {
	consec5xx, consecGateway uint32
	// multiplier is the number of ejections in a row, decremented by each
	// sweep that finds the host in service.
	multiplier uint32
	ejected    bool
	ejectedAt  time.Time
}

// NewOutlier returns outlier detection with cfg over the clock now (nil:
// time.Now).
func NewOutlier(cfg OutlierConfig, now func() time.Time) *Outlier {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.BaseEjectionTime <= 0 {
		cfg.BaseEjectionTime = DefaultBaseEjectionTime
	}
	if cfg.MaxEjectionPercent == 0 {
		cfg.MaxEjectionPercent = DefaultMaxEjectionPct
	}
	if cfg.MaxEjectionPercent > 100 {
		cfg.MaxEjectionPercent = 100
	}
	if now == nil {
		now = time.Now
	}
	return &Outlier{cfg: cfg, now: now, hosts: make(map[string]*hostState)}
}

// SetHosts makes hosts the destination's host set: new ones start healthy,
// ones no longer listed are forgotten, the others keep their state. The
// percentages (maxEjectionPercent, minHealthPercent) are of this set.
func (o *Outlier) SetHosts(hosts []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	keep := make(map[string]*hostState, len(hosts))
	for _, h := range hosts {
		s := o.hosts[h]
		if s == nil {
			s = &hostState{}
		}
		keep[h] = s
	}
	o.hosts = keep
	o.ejected = 0
	for _, s := range keep {
		if s.ejected {
			o.ejected++
		}
	}
	o.updatePanicLocked()
}

// Healthy reports whether the proxy may send to host: it is not ejected, or
// the destination is in panic mode. Unknown hosts are healthy.
func (o *Outlier) Healthy(host string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.maybeSweepLocked(o.now())
	if o.panicking {
		return true
	}
	s := o.hosts[host]
	return s == nil || !s.ejected
}

// Ejected reports whether host is ejected now, panic mode aside.
func (o *Outlier) Ejected(host string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.maybeSweepLocked(o.now())
	s := o.hosts[host]
	return s != nil && s.ejected
}

// Observe records the outcome of one request to host: its response status,
// or err when no response came (connect failure, reset, timeout: counted as
// a 503, a gateway error, as Envoy does without
// split_external_local_origin_errors). An unknown host is added to the set.
// It reports whether this outcome ejected the host.
func (o *Outlier) Observe(host string, status int, err error) (ejected bool) {
	if err != nil {
		status = 503
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	o.maybeSweepLocked(now)
	s := o.hosts[host]
	if s == nil {
		s = &hostState{}
		o.hosts[host] = s
		o.updatePanicLocked()
	}
	if status < 500 || status > 599 {
		s.consec5xx, s.consecGateway = 0, 0
		return false
	}
	s.consec5xx++
	if status == 502 || status == 503 || status == 504 {
		s.consecGateway++
	} else {
		s.consecGateway = 0
	}
	if s.ejected {
		// Late responses from an ejected host change nothing.
		return false
	}
	trip := (o.cfg.Consecutive5xx > 0 && s.consec5xx >= o.cfg.Consecutive5xx) ||
		(o.cfg.ConsecutiveGateway > 0 && s.consecGateway >= o.cfg.ConsecutiveGateway)
	if !trip {
		return false
	}
	s.consec5xx, s.consecGateway = 0, 0
	if !o.mayEjectLocked() {
		return false
	}
	s.ejected = true
	s.ejectedAt = now
	s.multiplier++
	o.total++
	o.ejected++
	o.updatePanicLocked()
	return true
}

// mayEjectLocked applies maxEjectionPercent: one more ejection must keep
// the ejected share at or under it, except that one host may always be
// ejected (Envoy).
func (o *Outlier) mayEjectLocked() bool {
	if o.ejected == 0 {
		return true
	}
	return uint64(o.ejected+1)*100 <= uint64(o.cfg.MaxEjectionPercent)*uint64(len(o.hosts))
}

func (o *Outlier) ejectionTimeLocked(s *hostState) time.Duration {
	limit := max(MaxEjectionTime, o.cfg.BaseEjectionTime)
	d := o.cfg.BaseEjectionTime * time.Duration(s.multiplier)
	if d > limit || d/time.Duration(s.multiplier) != o.cfg.BaseEjectionTime {
		return limit
	}
	return d
}

// maybeSweepLocked runs the interval sweeps due by now: hosts whose
// ejection time has passed return; hosts in service have their multiplier
// decremented. Sweeps missed while no call came collapse into one.
func (o *Outlier) maybeSweepLocked(now time.Time) {
	if o.nextSweep.IsZero() {
		o.nextSweep = now.Add(o.cfg.Interval)
		return
	}
	if now.Before(o.nextSweep) {
		return
	}
	// The latest sweep due: earlier ones missed while no call came are
	// folded into it.
	at := o.nextSweep.Add(now.Sub(o.nextSweep) / o.cfg.Interval * o.cfg.Interval)
	for _, s := range o.hosts {
		switch {
		case s.ejected && !at.Before(s.ejectedAt.Add(o.ejectionTimeLocked(s))):
			s.ejected = false
			s.consec5xx, s.consecGateway = 0, 0
			o.ejected--
		case !s.ejected && s.multiplier > 0:
			s.multiplier--
		}
	}
	o.updatePanicLocked()
	o.nextSweep = at.Add(o.cfg.Interval)
}

func (o *Outlier) updatePanicLocked() {
	total := len(o.hosts)
	if o.cfg.MinHealthPercent == 0 || total == 0 {
		o.panicking = false
		return
	}
	healthy := total - o.ejected
	o.panicking = uint64(healthy)*100 < uint64(o.cfg.MinHealthPercent)*uint64(total)
}

// Panicking reports whether fewer than minHealthPercent of the hosts are
// healthy, so that every host is used.
func (o *Outlier) Panicking() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.maybeSweepLocked(o.now())
	return o.panicking
}

// EjectedCount is the number of hosts ejected now.
func (o *Outlier) EjectedCount() int {
	active, _ := o.Ejections()
	return active
}

// Ejections reports the hosts ejected now and the ejections so far (a
// counter: it never decreases, hosts leaving the set included), for
// metrics.
func (o *Outlier) Ejections() (active int, total uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.maybeSweepLocked(o.now())
	return o.ejected, o.total
}
