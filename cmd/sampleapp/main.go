// Command sampleapp is the mesh's sample service: a small HTTP server that
// says who it is and who called it, and can call other services, so that a
// chain such as frontend → reviews → ratings shows every hop. The sample
// application in manifests/samples/shop runs it as every service.
//
//	sampleapp [--listen :8080] [--name NAME] [--version v1]
//	          [--upstream URL]... [--tcp-echo :9000] [--call-timeout 5s]
//	          [--otlp-sink-addr :4317] [--otlp-sink-spans 1000]
//
// Endpoints:
//
//	GET /            JSON: service, version, pod, namespace, node (from
//	                 $POD_NAME, $POD_NAMESPACE, $NODE_NAME), the caller's
//	                 remote address, the traceparent header received, and
//	                 the replies of every --upstream;
//	                 502 when an upstream failed or did not answer 2xx
//	                 (the chain below is broken; the body says where)
//	GET /call?url=U  calls U (http or https, GET; grpc://host:port, a gRPC
//	                 health check; udp://host:port, one datagram) and
//	                 returns the same JSON with U's reply as its one
//	                 upstream; 502 if the call fails
//	UDP              on the --listen port number: each datagram answered
//	                 with the JSON of GET / (remoteAddr its source)
//	GET /healthz     200 "ok"
//	GET /fail?percent=P&code=C  C (default 503) for exactly P % (default
//	                 50) of the requests to /fail, evenly spread; else GET /
//	GET /delay?d=D   GET / after D (at most 30s)
//	gRPC             grpc.health.v1.Health on the same port (h2c)
//	GET /spans       with --otlp-sink-addr only: the spans received, JSON
//	                 (?traceId=<32 hex> for one trace's)
//
// It speaks HTTP/1.1 and HTTP/2 by prior knowledge (h2c). Upstream calls
// carry the request's trace context, x-request-id, x-user and end-user
// headers, as Istio's Bookinfo propagates them.
//
// In a captured pod the remote address is the caller's pod IP: ztunnel
// preserves it, which is how the sample shows who talked to whom.
//
// With --tcp-echo it also echoes every byte received on a raw TCP port.
//
// With --otlp-sink-addr it is also a trace sink: it serves the
// OpenTelemetry collector's OTLP/gRPC TraceService on that address
// (plaintext, as an in-cluster collector on 4317) and keeps the last
// --otlp-sink-spans spans it receives, shown by GET /spans: trace, span and
// parent span ids in hex, name, kind, the sender's service.name and every
// attribute as a string (manifests/samples/tracing runs it as the
// waypoints' collector).
// Logs are JSON on stderr. SIGINT or SIGTERM shuts down gracefully.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sampleapp:", err)
		os.Exit(2)
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := New(cfg)
	if err == nil {
		err = srv.Run(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sampleapp:", err)
		os.Exit(1)
	}
}

// stringsFlag collects a repeated flag.
type stringsFlag []string

func (s *stringsFlag) String() string { return fmt.Sprint([]string(*s)) }
func (s *stringsFlag) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// parseFlags turns the command line (and the downward-API environment,
// through getenv) into a Config; errors are usage errors.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	cfg := Config{
		Pod:       getenv("POD_NAME"),
		Namespace: getenv("POD_NAMESPACE"),
		Node:      getenv("NODE_NAME"),
	}
	name := getenv("SERVICE_NAME")
	if name == "" {
		name = "sampleapp"
	}
	fs := flag.NewFlagSet("sampleapp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Listen, "listen", ":8080", "HTTP listen `address`")
	fs.StringVar(&cfg.Name, "name", name, "service `name` reported in replies; $SERVICE_NAME sets the default")
	fs.StringVar(&cfg.Version, "version", "v1", "`version` reported in replies (v1, v2, ...)")
	var ups stringsFlag
	fs.Var(&ups, "upstream", "`URL` called on every GET / and included in the reply (repeatable)")
	fs.StringVar(&cfg.TCPEcho, "tcp-echo", "", "if set, also echo raw TCP on this `address`")
	fs.DurationVar(&cfg.CallTimeout, "call-timeout", DefaultCallTimeout, "timeout of one outbound call")
	fs.StringVar(&cfg.OTLPSink, "otlp-sink-addr", "", "if set, also receive OpenTelemetry spans over OTLP/gRPC on this `address` (e.g. :4317) and show them on GET /spans")
	fs.IntVar(&cfg.SinkSpans, "otlp-sink-spans", DefaultSinkSpans, "how many received spans the trace sink keeps (the last ones)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q; every setting is a flag (see -help)", fs.Args())
	}
	cfg.Upstreams = ups
	if cfg.SinkSpans <= 0 {
		return cfg, fmt.Errorf("--otlp-sink-spans %d: want 1 to %d", cfg.SinkSpans, maxSinkSpans)
	}
	if err := cfg.validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// validate checks what New needs.
func (c Config) validate() error {
	if c.Name == "" {
		return errors.New("--name is empty")
	}
	if c.Version == "" {
		return errors.New("--version is empty")
	}
	if c.CallTimeout <= 0 || c.CallTimeout > time.Minute {
		return fmt.Errorf("--call-timeout %v: want (0, 1m]", c.CallTimeout)
	}
	if c.SinkSpans < 0 || c.SinkSpans > maxSinkSpans {
		return fmt.Errorf("--otlp-sink-spans %d: want 1 to %d", c.SinkSpans, maxSinkSpans)
	}
	for _, u := range c.Upstreams {
		if _, err := checkURL(u); err != nil {
			return fmt.Errorf("--upstream: %w", err)
		}
	}
	return nil
}
