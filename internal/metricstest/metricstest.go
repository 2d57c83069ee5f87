// Package metricstest reads Prometheus metrics back in tests: the series
// of a metric, and the sum of those whose labels include a set. Only
// tests import it.
package metricstest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Sample is one series of a metric: its labels and its value (a
// counter's, a gauge's or an untyped one's; a histogram's sample count).
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Series returns every series of the metric name in g, none when it is
// not there.
func Series(t testing.TB, g prometheus.Gatherer, name string) []Sample {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []Sample
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			s := Sample{Labels: make(map[string]string, len(m.GetLabel()))}
			for _, l := range m.GetLabel() {
				s.Labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				s.Value = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				s.Value = m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				s.Value = m.GetUntyped().GetValue()
			case m.GetHistogram() != nil:
				s.Value = float64(m.GetHistogram().GetSampleCount())
			}
			out = append(out, s)
		}
	}
	return out
}

// Sum adds up the series of name in g whose labels include want (every
// series for an empty want).
func Sum(t testing.TB, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	var sum float64
next:
	for _, s := range Series(t, g, name) {
		for k, v := range want {
			if s.Labels[k] != v {
				continue next
			}
		}
		sum += s.Value
	}
	return sum
}
