package waypointctl

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
)

func TestDesired_TracingFlagsPassedToTheWaypointOnlyWhenOn(t *testing.T) {
	base := []string{
		"--xds-address=istiod.istio-system.svc:15012",
		"--xds-server-name=istiod.istio-system.svc",
		"--ca-root-file=/var/run/secrets/istio/root-cert.pem",
		"--token-file=/var/run/secrets/tokens/istio-token",
		"--trust-domain=cluster.local",
		"--cluster-id=Kubernetes",
	}
	for _, tc := range []struct {
		name    string
		tracing Tracing
		want    []string
	}{
		{"off", Tracing{SamplingPercent: 1}, nil},
		{"TLS at Istio's 1%", Tracing{OTLPEndpoint: "otel.observability:4317", SamplingPercent: 1},
			[]string{"--otlp-endpoint=otel.observability:4317", "--trace-sampling=1"}},
		{"plaintext at 0.5%", Tracing{OTLPEndpoint: "otel.observability:4317", OTLPInsecure: true, SamplingPercent: 0.5},
			[]string{"--otlp-endpoint=otel.observability:4317", "--trace-sampling=0.5", "--otlp-insecure"}},
		{"callers' decisions only", Tracing{OTLPEndpoint: "otel.observability:4317"},
			[]string{"--otlp-endpoint=otel.observability:4317", "--trace-sampling=0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := testTemplate
			tmpl.Tracing = tc.tracing
			if err := tmpl.check(); err != nil {
				t.Fatal(err)
			}
			_, dac, _ := Desired(gateway("waypoint", meshListener), tmpl)
			args := typed[appsv1.Deployment](t, dac).Spec.Template.Spec.Containers[0].Args
			if diff := cmp.Diff(append(append([]string(nil), base...), tc.want...), args); diff != "" {
				t.Errorf("args (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTemplateCheck_RejectsSamplingOutsidePercent(t *testing.T) {
	for _, p := range []float64{-1, 100.5, math.NaN()} {
		tmpl := testTemplate
		tmpl.Tracing = Tracing{OTLPEndpoint: "otel:4317", SamplingPercent: p}
		if err := tmpl.check(); err == nil || !strings.Contains(err.Error(), "SamplingPercent") {
			t.Errorf("sampling %v: %v, want an error", p, err)
		}
	}
}
