package resilience

import (
	"math"
	"math/bits"
	"time"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

const perMillion = 1_000_000

// Fault is fault injection for one destination: a fixed delay for a share
// of requests and an abort with a status for a share of requests, decided
// independently (Envoy's fault filter applies the delay, then the abort).
// It is immutable, so safe for concurrent use; Decide does not allocate.
type Fault struct {
	delay       time.Duration
	delayPPM    uint64 // requests delayed per million
	abortStatus int
	abortPPM    uint64
}

// NewFault returns a Fault. Percentages are 0–100 with a resolution of one
// in a million; a zero delay or status disables that part.
func NewFault(delay time.Duration, delayPercent float64, abortStatus int, abortPercent float64) *Fault {
	f := &Fault{delay: delay, abortStatus: abortStatus}
	if delay > 0 {
		f.delayPPM = ppm(delayPercent)
	}
	if abortStatus > 0 {
		f.abortPPM = ppm(abortPercent)
	}
	return f
}

// FaultFrom builds the Fault of a policy, or nil when p is nil.
func FaultFrom(p *waypointapi.FaultInjection) *Fault {
	if p == nil {
		return nil
	}
	return NewFault(p.GetDelay().GetFixedDelay().AsDuration(), p.GetDelay().GetPercentage(),
		int(p.GetAbort().GetHttpStatus()), p.GetAbort().GetPercentage())
}

func ppm(percent float64) uint64 {
	if !(percent > 0) { // also NaN
		return 0
	}
	if percent >= 100 {
		return perMillion
	}
	return uint64(math.Round(percent * perMillion / 100))
}

// Decide draws the fault for one request: the delay to hold it for (0:
// none; flag [FlagDelayInjected]) and the status to answer with instead
// of forwarding it (0: forward; flag [FlagFaultInjected]). rnd supplies
// uniformly distributed random numbers. A nil Fault injects nothing.
func (f *Fault) Decide(rnd func() uint64) (delay time.Duration, abortStatus int) {
	if f == nil {
		return 0, 0
	}
	if f.delayPPM > 0 && draw(rnd) < f.delayPPM {
		delay = f.delay
	}
	if f.abortPPM > 0 && draw(rnd) < f.abortPPM {
		abortStatus = f.abortStatus
	}
	return delay, abortStatus
}

func draw(rnd func() uint64) uint64 {
	hi, _ := bits.Mul64(rnd(), perMillion)
	return hi
}
