package resilience

import (
	"sync/atomic"
	"time"

	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// TokenBucket is a local rate limit: requests draw tokens, which refill
// continuously at a fixed rate up to a capacity (burst). The bucket starts
// full. It is safe for concurrent use, lock-free, and Allow does not
// allocate.
//
// It is kept as the generic cell rate algorithm: one atomic "theoretical
// arrival time" instead of a token count, so a request is one
// compare-and-swap.
type TokenBucket struct {
	base     time.Time // times are measured from here (monotonic)
	interval int64     // nanoseconds per token
	window   int64     // interval × burst: how far tat may run ahead
	tat      atomic.Int64
}

// NewTokenBucket admits requests per unit (e.g. 100 per time.Second) with
// a capacity of burst tokens (0: requests); now is the current time, when
// the bucket is full. requests 0 admits nothing.
func NewTokenBucket(requests uint32, unit time.Duration, burst uint32, now time.Time) *TokenBucket {
	if burst == 0 {
		burst = requests
	}
	b := &TokenBucket{base: now}
	if requests == 0 || unit <= 0 {
		b.window = -1 // never admits
		return b
	}
	b.interval = max(int64(unit)/int64(requests), 1)
	b.window = b.interval * int64(burst)
	return b
}

// TokenBucketFrom builds the bucket for a rate limit policy, or nil when p
// is nil (no limit).
func TokenBucketFrom(p *waypointapi.RateLimit, now time.Time) *TokenBucket {
	if p == nil {
		return nil
	}
	return NewTokenBucket(p.GetRequestsPerUnit(), p.GetUnit().AsDuration(), p.GetBurst(), now)
}

// Allow takes a token at now and reports whether there was one; false
// means answer 429 with flag [FlagRateLimited]. A nil bucket allows all.
func (b *TokenBucket) Allow(now time.Time) bool {
	if b == nil {
		return true
	}
	if b.window < 0 {
		return false
	}
	t := int64(now.Sub(b.base))
	for {
		tat := b.tat.Load()
		next := max(tat, t) + b.interval
		if next-t > b.window {
			return false
		}
		if b.tat.CompareAndSwap(tat, next) {
			return true
		}
	}
}
