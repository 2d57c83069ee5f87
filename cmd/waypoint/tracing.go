package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"

	"go.opentelemetry.io/otel/attribute"

	"github.com/ambientmesh/ambient/waypoint/tracing"
)

// checkTracing checks the tracing flags.
func checkTracing(o options) error {
	if math.IsNaN(o.traceSampling) || o.traceSampling < 0 || o.traceSampling > 100 {
		return fmt.Errorf("--trace-sampling %v: want a percentage from 0 to 100 (Istio's default is 1)", o.traceSampling)
	}
	return nil
}

// tracingConfig is the Tracer's configuration from the flags. The resource
// names the waypoint as Istio names a proxy's canonical service:
// service.name "<gateway>.<namespace>" (istiod-lite names the waypoint's
// workload after its Gateway).
func tracingConfig(o options, logger *slog.Logger) tracing.Config {
	attrs := []attribute.KeyValue{
		attribute.String("service.namespace", o.gatewayNS),
		attribute.String("k8s.namespace.name", o.namespace),
	}
	if o.podName != "" {
		attrs = append(attrs, attribute.String("k8s.pod.name", o.podName), attribute.String("service.instance.id", o.podName))
	}
	return tracing.Config{
		Endpoint: o.otlpEndpoint, Insecure: o.otlpInsecure, SamplingPercent: o.traceSampling,
		ServiceName: o.gatewayName + "." + o.gatewayNS, Attributes: attrs, Logger: logger,
	}
}

// startTracing starts the Tracer of --otlp-endpoint (nil without one).
// stop ends it, flushing the spans not yet exported: call it once the
// proxy has drained.
func startTracing(o options, logger *slog.Logger) (tr *tracing.Tracer, stop func(), err error) {
	if o.otlpEndpoint == "" {
		return nil, func() {}, nil
	}
	tr, err = tracing.New(tracingConfig(o, logger))
	if err != nil {
		return nil, nil, fmt.Errorf("--otlp-endpoint %s: %w", o.otlpEndpoint, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := tr.Run(ctx); err != nil {
			logger.Warn("tracing: the last spans were not all exported", "endpoint", o.otlpEndpoint, "err", err.Error())
		}
	}()
	logger.Info("tracing on", "endpoint", o.otlpEndpoint, "insecure", o.otlpInsecure, "sampling_percent", o.traceSampling)
	return tr, func() { cancel(); <-done }, nil
}
