package metricstest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestSeriesAndSum(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "requests_total"}, []string{"code", "reporter"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "ejected"})
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "duration"})
	reg.MustRegister(c, g, h)
	c.WithLabelValues("200", "waypoint").Add(3)
	c.WithLabelValues("403", "waypoint").Add(2)
	c.WithLabelValues("200", "source").Add(5)
	g.Set(7)
	h.Observe(1)
	h.Observe(2)

	for _, tc := range []struct {
		name string
		want map[string]string
		sum  float64
	}{
		{"requests_total", nil, 10},
		{"requests_total", map[string]string{"code": "200"}, 8},
		{"requests_total", map[string]string{"code": "200", "reporter": "waypoint"}, 3},
		{"requests_total", map[string]string{"code": "500"}, 0},
		{"ejected", nil, 7},
		{"duration", nil, 2},
		{"absent", nil, 0},
	} {
		if got := Sum(t, reg, tc.name, tc.want); got != tc.sum {
			t.Errorf("Sum(%s, %v) = %v, want %v", tc.name, tc.want, got, tc.sum)
		}
	}
	if s := Series(t, reg, "requests_total"); len(s) != 3 {
		t.Errorf("Series(requests_total) has %d series, want 3", len(s))
	}
	if s := Series(t, reg, "absent"); s != nil {
		t.Errorf("Series(absent) = %v, want none", s)
	}
}
