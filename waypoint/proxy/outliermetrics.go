package proxy

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Outlier detection's state, per backend service port (Envoy's cluster),
// read from the clusters in force at each scrape.
var (
	ejectionsActiveDesc = prometheus.NewDesc("ambient_outlier_ejections_active",
		"Endpoints of the service port that outlier detection has ejected now.",
		[]string{"destination_service", "destination_service_namespace", "destination_port"}, nil)
	ejectionsTotalDesc = prometheus.NewDesc("ambient_outlier_ejections_total",
		"Ejections by outlier detection of endpoints of the service port, since its policy was last changed.",
		[]string{"destination_service", "destination_service_namespace", "destination_port"}, nil)
)

// OutlierCollector exports, for every backend service port with outlier
// detection that has served a request, its ejected endpoints (a gauge)
// and its ejections so far (a counter, which restarts when the port's
// outlier policy changes), as Envoy's cluster outlier_detection
// statistics do. Register it with the registry of the proxy's metrics.
func (p *Proxy) OutlierCollector() prometheus.Collector { return outlierCollector{p} }

type outlierCollector struct{ p *Proxy }

func (outlierCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ejectionsActiveDesc
	ch <- ejectionsTotalDesc
}

func (c outlierCollector) Collect(ch chan<- prometheus.Metric) {
	for key, cl := range c.p.res.Load().clusters {
		if cl.outlier == nil {
			continue
		}
		active, total := cl.outlier.Ejections()
		ns, host, _ := strings.Cut(key.svc, "/")
		port := strconv.Itoa(int(key.port))
		ch <- prometheus.MustNewConstMetric(ejectionsActiveDesc, prometheus.GaugeValue, float64(active), host, ns, port)
		ch <- prometheus.MustNewConstMetric(ejectionsTotalDesc, prometheus.CounterValue, float64(total), host, ns, port)
	}
}
