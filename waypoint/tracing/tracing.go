package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Config configures a Tracer.
type Config struct {
	// Endpoint is the OTLP/gRPC collector as host:port, e.g.
	// otel-collector.observability:4317. Required.
	Endpoint string
	// Insecure speaks plaintext gRPC to the collector; otherwise TLS with
	// the system roots.
	Insecure bool
	// SamplingPercent is the share of new traces (requests without a
	// caller's traceparent) that are sampled, from 0 to 100. Zero samples
	// none; callers' sampled flags are honoured either way. cmd/waypoint
	// defaults it to 1, Istio's default.
	SamplingPercent float64
	// ServiceName is the resource's service.name. Required.
	ServiceName string
	// Attributes are further resource attributes (service.namespace,
	// k8s.pod.name, ...).
	Attributes []attribute.KeyValue
	// BatchTimeout is the longest a finished span waits for export.
	// Default 5s (the SDK's).
	BatchTimeout time.Duration
	// ExportTimeout bounds one export to the collector. Default 10s.
	ExportTimeout time.Duration
	// MaxQueue bounds the finished spans waiting for export; a span that
	// finds the queue full is dropped. Default 2048 (the SDK's).
	MaxQueue int
	// ShutdownTimeout bounds the final flush once Run's context ends.
	// Default 5s.
	ShutdownTimeout time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Tracer starts the waypoint's spans and exports them. A nil *Tracer is
// tracing turned off: its methods do nothing and its spans are zero.
type Tracer struct {
	tp              *sdktrace.TracerProvider
	tracer          trace.Tracer
	root            *rootSampler
	shutdownTimeout time.Duration
}

// New checks cfg and returns a Tracer exporting to cfg.Endpoint. The
// connection to the collector is made lazily: New does no I/O.
func New(cfg Config) (*Tracer, error) {
	switch {
	case cfg.Endpoint == "":
		return nil, errors.New("tracing: an OTLP collector Endpoint (host:port) is required")
	case cfg.ServiceName == "":
		return nil, errors.New("tracing: a ServiceName (the resource's service.name) is required")
	}
	root, err := newRootSampler(cfg.SamplingPercent)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.BatchTimeout <= 0 {
		cfg.BatchTimeout = 5 * time.Second
	}
	if cfg.ExportTimeout <= 0 {
		cfg.ExportTimeout = 10 * time.Second
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = 2048
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.Endpoint), otlptracegrpc.WithTimeout(cfg.ExportTimeout)}
	if cfg.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	// The gRPC client connects on the first export; the context only
	// bounds starting it.
	exp, err := otlptracegrpc.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", cfg.Endpoint, err)
	}
	attrs := append([]attribute.KeyValue{semconv.ServiceName(cfg.ServiceName)}, cfg.Attributes...)
	res := resource.NewWithAttributes(semconv.SchemaURL, attrs...)
	batchSize := min(512, cfg.MaxQueue) // the SDK's default batch, within the queue
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(root)),
		sdktrace.WithBatcher(&loggingExporter{SpanExporter: exp, log: cfg.Logger, endpoint: cfg.Endpoint},
			sdktrace.WithBatchTimeout(cfg.BatchTimeout), sdktrace.WithExportTimeout(cfg.ExportTimeout),
			sdktrace.WithMaxQueueSize(cfg.MaxQueue), sdktrace.WithMaxExportBatchSize(batchSize)),
	)
	return &Tracer{
		tp:              tp,
		tracer:          tp.Tracer("github.com/ambientmesh/ambient/waypoint"),
		root:            root,
		shutdownTimeout: cfg.ShutdownTimeout,
	}, nil
}

// Run waits for ctx to end, then flushes the spans not yet exported and
// shuts the exporter down within Config.ShutdownTimeout.
func (t *Tracer) Run(ctx context.Context) error {
	if t == nil {
		return nil
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.shutdownTimeout)
	defer cancel()
	return t.Shutdown(sctx)
}

// Shutdown flushes the spans not yet exported and closes the connection
// to the collector; spans that end later are dropped. ctx bounds it.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if err := t.tp.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing: shutdown: %w", err)
	}
	return nil
}

// ForceFlush exports the spans that have ended and waits for the export.
// A failed export is logged (see Config.Logger), not returned: the error
// is ctx's or the SDK's.
func (t *Tracer) ForceFlush(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if err := t.tp.ForceFlush(ctx); err != nil {
		return fmt.Errorf("tracing: flush: %w", err)
	}
	return nil
}

// SetSampling changes the share of new traces that are sampled, in
// percent (0 to 100).
func (t *Tracer) SetSampling(percent float64) error {
	if t == nil {
		return nil
	}
	return t.root.set(percent)
}

// Sampling is the share of new traces sampled, in percent.
func (t *Tracer) Sampling() float64 {
	if t == nil {
		return 0
	}
	return t.root.box.Load().percent
}

// rootSampler samples root spans by trace id at a ratio that can change;
// ParentBased around it honours callers' decisions.
type rootSampler struct {
	box atomic.Pointer[ratio]
}

type ratio struct {
	sdktrace.Sampler
	percent float64
}

func newRootSampler(percent float64) (*rootSampler, error) {
	s := &rootSampler{}
	if err := s.set(percent); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *rootSampler) set(percent float64) error {
	if math.IsNaN(percent) || percent < 0 || percent > 100 {
		return fmt.Errorf("tracing: sampling %v%%: want a percentage from 0 to 100 (Istio's default is 1)", percent)
	}
	s.box.Store(&ratio{Sampler: sdktrace.TraceIDRatioBased(percent / 100), percent: percent})
	return nil
}

func (s *rootSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	return s.box.Load().ShouldSample(p)
}

func (s *rootSampler) Description() string {
	return "WaypointRoot{" + s.box.Load().Description() + "}"
}

// loggingExporter logs export failures on the Tracer's logger, at most
// once per failureLogEvery with the spans lost since, instead of handing
// them to OpenTelemetry's global error handler.
type loggingExporter struct {
	sdktrace.SpanExporter
	log      *slog.Logger
	endpoint string

	mu      sync.Mutex // guards the fields below
	lastLog time.Time
	lost    int
}

const failureLogEvery = 30 * time.Second

func (e *loggingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	if err == nil {
		return nil
	}
	e.mu.Lock()
	e.lost += len(spans)
	now := time.Now()
	if now.Sub(e.lastLog) < failureLogEvery {
		e.mu.Unlock()
		return nil
	}
	lost := e.lost
	e.lastLog, e.lost = now, 0
	e.mu.Unlock()
	e.log.Warn("tracing: exporting spans to the OTLP collector failed; they are dropped. Check that the collector at the endpoint is up and speaks OTLP/gRPC (and TLS unless --otlp-insecure)",
		"endpoint", e.endpoint, "spans_lost", lost, "err", err.Error())
	return nil
}

// statusAttr is the http.response.status_code attribute (a helper so the
// proxy's code need not import semconv).
func statusAttr(code int) attribute.KeyValue { return semconv.HTTPResponseStatusCode(code) }

// errorType is error.type for a failed request: the status code for a
// 5xx, else the response flags (or "_OTHER").
func errorType(code int, flags string) attribute.KeyValue {
	switch {
	case code >= 500:
		return semconv.ErrorTypeKey.String(strconv.Itoa(code))
	case flags != "" && flags != "-":
		return semconv.ErrorTypeKey.String(flags)
	}
	return semconv.ErrorTypeOther
}
