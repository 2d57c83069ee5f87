package stats

import (
	"testing"
	"time"
)

func durs(xs ...int) []time.Duration {
	out := make([]time.Duration, len(xs))
	for i, x := range xs {
		out[i] = time.Duration(x)
	}
	return out
}

func seq(n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i + 1)
	}
	return out
}

func TestPercentile_NearestRank(t *testing.T) {
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"single", durs(7), 99.9, 7},
		{"p50 of odd count is the middle", durs(1, 2, 3), 50, 2},
		{"p50 of even count is the lower middle", durs(1, 2, 3, 4), 50, 2},
		{"p100 is the max", durs(1, 2, 3, 4), 100, 4},
		{"p0 is the min", durs(1, 2, 3, 4), 0, 1},
		{"p99 of 100", seq(100), 99, 99},
		{"p99 of 1000", seq(1000), 99, 990},
		{"p99.9 of 1000 despite float noise", seq(1000), 99.9, 999},
		{"p99.9 of 10000", seq(10000), 99.9, 9990},
		{"p99.9 of 100 rounds up to the max", seq(100), 99.9, 100},
		{"p90 of 10", seq(10), 90, 9},
		{"p91 of 10 rounds up", seq(10), 91, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("Percentile(%d samples, %v) = %v, want %v", len(tt.sorted), tt.p, got, tt.want)
			}
		})
	}
}

func TestSummarize_SortsAndReportsTail(t *testing.T) {
	samples := durs(5, 1, 4, 2, 3, 100, 6, 7, 8, 9)
	got := Summarize(samples)
	want := Summary{Count: 10, Mean: 14, P50: 5, P90: 9, P99: 100, P999: 100, Max: 100}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
	if samples[0] != 1 || samples[9] != 100 {
		t.Errorf("samples not sorted in place: %v", samples)
	}
	if (Summarize(nil) != Summary{}) {
		t.Error("Summarize(nil) is not zero")
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		xs   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{9, 1, 5}, 5},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		orig := append([]float64(nil), tt.xs...)
		if got := Median(tt.xs); got != tt.want {
			t.Errorf("Median(%v) = %v, want %v", tt.xs, got, tt.want)
		}
		for i := range orig {
			if orig[i] != tt.xs[i] {
				t.Errorf("Median modified its input: %v", tt.xs)
			}
		}
	}
}

func TestSchedule_FixedIntervalsFromStart(t *testing.T) {
	start := time.Unix(1000, 0)
	s := Schedule{Start: start, Rate: 1000, Conns: 8}
	for _, tc := range []struct {
		i    int
		want time.Duration
	}{{0, 0}, {1, time.Millisecond}, {999, 999 * time.Millisecond}, {10000, 10 * time.Second}} {
		if got := s.At(tc.i).Sub(start); got != tc.want {
			t.Errorf("At(%d) = start+%v, want start+%v", tc.i, got, tc.want)
		}
	}
	// A rate that does not divide a second evenly must not drift.
	s3 := Schedule{Start: start, Rate: 3, Conns: 1}
	if got := s3.Offset(3); got != time.Second {
		t.Errorf("Offset(3) at 3/s = %v, want 1s", got)
	}
	if got := s3.Offset(1); got != 333333333 {
		t.Errorf("Offset(1) at 3/s = %v, want 333.333333ms", got)
	}
}

func TestSchedule_CountExcludesTheEnd(t *testing.T) {
	tests := []struct {
		rate float64
		d    time.Duration
		want int
	}{
		{1000, 10 * time.Second, 10000},
		{1000, 0, 0},
		{1000, -time.Second, 0},
		{1000, 1500 * time.Microsecond, 2},
		{3, time.Second, 3},
		{3, 1001 * time.Millisecond, 4},
		{0.5, 3 * time.Second, 2},
	}
	for _, tt := range tests {
		s := Schedule{Rate: tt.rate, Conns: 1}
		got := s.Count(tt.d)
		if got != tt.want {
			t.Errorf("Count(rate %v, %v) = %d, want %d", tt.rate, tt.d, got, tt.want)
		}
		if got > 0 && s.Offset(got-1) >= tt.d {
			t.Errorf("rate %v: last request due at %v, not before %v", tt.rate, s.Offset(got-1), tt.d)
		}
	}
}

func TestSchedule_RoundRobinCoversEveryRequestOnce(t *testing.T) {
	s := Schedule{Rate: 1000, Conns: 8}
	const total = 101
	seen := make(map[int]int)
	for c := range s.Conns {
		reqs := s.ConnRequests(c, total)
		for k, i := range reqs {
			if s.Conn(i) != c {
				t.Errorf("request %d listed for conn %d but Conn says %d", i, c, s.Conn(i))
			}
			if k > 0 && reqs[k-1] >= i {
				t.Errorf("conn %d requests out of order: %v", c, reqs)
			}
			seen[i]++
		}
	}
	for i := range total {
		if seen[i] != 1 {
			t.Errorf("request %d carried %d times", i, seen[i])
		}
	}
	// At 1000/s over 8 connections each connection sends every 8 ms.
	reqs := s.ConnRequests(3, total)
	if gap := s.Offset(reqs[1]) - s.Offset(reqs[0]); gap != 8*time.Millisecond {
		t.Errorf("per-connection gap = %v, want 8ms", gap)
	}
}

func TestThroughput_MegabytesPerSecond(t *testing.T) {
	if got := Throughput(2e9, 2*time.Second); got != 1000 {
		t.Errorf("Throughput = %v, want 1000", got)
	}
	if got := Throughput(1, 0); got != 0 {
		t.Errorf("Throughput with no time = %v, want 0", got)
	}
}
