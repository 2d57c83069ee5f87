// Package stats holds the pure arithmetic of the tunnel benchmark: latency
// percentiles (nearest-rank over a sorted slice), medians, and the timetable
// of an open-loop load generator.
//
// Open-loop scheduling: request i of a run at a fixed rate r starts at
// start + i/r, whatever happened to earlier requests, and request i goes to
// connection i mod n. Its latency is measured from that scheduled time, not
// from the moment it was actually written, so a stall that delays later
// requests shows up in their latency instead of being hidden (no coordinated
// omission).
package stats

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the p-th percentile (0 < p <= 100) of sorted, which must
// be sorted ascending, by the nearest-rank method: the smallest sample such
// that at least p% of the samples are <= it. It returns 0 for no samples.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if p <= 0 {
		return sorted[0]
	}
	// The epsilon absorbs float noise such as 99.9*1000/100 = 999.0000000000001.
	rank := int(math.Ceil(p*float64(n)/100 - 1e-9))
	return sorted[min(max(rank, 1), n)-1]
}

// Summary is the latency distribution of one run.
type Summary struct {
	Count int
	Mean  time.Duration
	P50   time.Duration
	P90   time.Duration
	P99   time.Duration
	P999  time.Duration
	Max   time.Duration
}

// Summarize sorts samples in place and returns their distribution.
func Summarize(samples []time.Duration) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	return Summary{
		Count: len(samples),
		Mean:  sum / time.Duration(len(samples)),
		P50:   Percentile(samples, 50),
		P90:   Percentile(samples, 90),
		P99:   Percentile(samples, 99),
		P999:  Percentile(samples, 99.9),
		Max:   samples[len(samples)-1],
	}
}

// Median returns the median of xs (the mean of the two middle values for an
// even count) without modifying xs; 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// Schedule is the timetable of an open-loop run: Rate requests per second
// starting at Start, spread round robin over Conns connections.
type Schedule struct {
	Start time.Time
	Rate  float64 // requests per second, > 0
	Conns int     // > 0
}

// Offset is when request i is due, relative to Start.
func (s Schedule) Offset(i int) time.Duration {
	return time.Duration(math.Round(float64(i) * float64(time.Second) / s.Rate))
}

// At is the scheduled start time of request i.
func (s Schedule) At(i int) time.Time { return s.Start.Add(s.Offset(i)) }

// Conn is the connection that carries request i.
func (s Schedule) Conn(i int) int { return i % s.Conns }

// Count is the number of requests due in [Start, Start+d).
func (s Schedule) Count(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	n := int(math.Ceil(d.Seconds() * s.Rate))
	// Exclude a request due exactly at Start+d.
	for n > 0 && s.Offset(n-1) >= d {
		n--
	}
	return n
}

// ConnRequests returns the indices of the requests carried by connection c
// out of the first total, in schedule order.
func (s Schedule) ConnRequests(c, total int) []int {
	var out []int
	for i := c; i < total; i += s.Conns {
		out = append(out, i)
	}
	return out
}

// Throughput converts bytes moved in elapsed into megabytes (10^6 bytes) per
// second; 0 when elapsed is not positive.
func Throughput(bytes int64, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 0
	}
	return float64(bytes) / 1e6 / elapsed.Seconds()
}
