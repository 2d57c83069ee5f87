package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// Limits.
const (
	DefaultCallTimeout = 5 * time.Second
	maxUpstreamBody    = 1 << 20 // bytes of an upstream reply kept
	shutdownGrace      = 5 * time.Second
	echoIdleTimeout    = 5 * time.Minute // an echo connection with no traffic is closed
)

// Config configures a Server.
type Config struct {
	Listen    string // HTTP listen address
	TCPEcho   string // raw TCP echo listen address; empty: none
	Name      string // service name
	Version   string
	Pod       string // from the downward API; may be empty
	Namespace string
	Node      string
	// Upstreams are called on every GET /.
	Upstreams   []string
	CallTimeout time.Duration
	// OTLPSink is the listen address of the OTLP/gRPC trace sink (sink.go);
	// empty: none, and no GET /spans.
	OTLPSink string
	// SinkSpans is how many received spans the sink keeps; 0:
	// DefaultSinkSpans.
	SinkSpans int
	// Client makes the outbound calls; nil: a client with CallTimeout.
	Client *http.Client
	Logger *slog.Logger // nil: discard
}

// propagated are the request headers passed on to upstream calls, as
// Istio's Bookinfo propagates them: the trace context, the request id and
// the user, so that a route matching x-user holds along a chain and a trace
// spans every hop.
var propagated = []string{"traceparent", "tracestate", "baggage", "x-request-id", "x-user", "end-user"}

// Server is the sample service.
type Server struct {
	cfg    Config
	client *http.Client
	log    *slog.Logger
	grpc   *grpc.Server  // the gRPC health service, on the HTTP port (h2c)
	failN  atomic.Uint64 // requests to /fail so far
	// sink and sinkGRPC are the trace sink and its gRPC server; nil
	// without Config.OTLPSink.
	sink     *spanSink
	sinkGRPC *grpc.Server
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.SinkSpans == 0 {
		cfg.SinkSpans = DefaultSinkSpans
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("sampleapp: %w", err)
	}
	s := &Server{cfg: cfg, client: cfg.Client, log: cfg.Logger, grpc: grpc.NewServer()}
	healthpb.RegisterHealthServer(s.grpc, health.NewServer()) // "" is SERVING
	if cfg.OTLPSink != "" {
		s.sink = newSpanSink(cfg.SinkSpans)
		s.sinkGRPC = newSinkServer(s.sink)
	}
	if s.client == nil {
		s.client = &http.Client{Timeout: cfg.CallTimeout}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Reply is the JSON body of GET / and GET /call.
type Reply struct {
	Service    string `json:"service"`
	Version    string `json:"version"`
	Pod        string `json:"pod,omitempty"`
	Namespace  string `json:"namespace,omitempty"`
	Node       string `json:"node,omitempty"`
	RemoteAddr string `json:"remoteAddr"`
	Host       string `json:"host,omitempty"`
	Proto      string `json:"proto,omitempty"` // the request's, e.g. HTTP/2.0
	// TraceParent is the request's W3C traceparent header as it arrived
	// (a proxy that traces, such as the waypoint, names its own span in it).
	TraceParent string     `json:"traceparent,omitempty"`
	Upstreams   []Upstream `json:"upstreams,omitempty"`
}

// Upstream is the outcome of one outbound call.
type Upstream struct {
	URL    string `json:"url"`
	Status int    `json:"status,omitempty"`
	// GRPCStatus is a grpc:// call's health status (e.g. SERVING).
	GRPCStatus string `json:"grpcStatus,omitempty"`
	// Body is the reply itself when it is JSON (so a chain nests), else a
	// JSON string.
	Body  json.RawMessage `json:"body,omitempty"`
	Error string          `json:"error,omitempty"`
}

// Handler returns the HTTP API, and the gRPC health service for HTTP/2
// requests with a gRPC content type.
func (s *Server) Handler() http.Handler {
	api := s.api()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			s.grpc.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}

func (s *Server) api() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		rep := s.reply(r)
		code := http.StatusOK
		for _, u := range s.cfg.Upstreams {
			up := s.call(r, u)
			if up.Error != "" || up.Status/100 != 2 {
				code = http.StatusBadGateway // the chain is broken below us
			}
			rep.Upstreams = append(rep.Upstreams, up)
		}
		s.write(w, code, rep)
	})
	if s.sink != nil {
		mux.HandleFunc("GET /spans", s.sink.serveSpans)
	}
	mux.HandleFunc("GET /fail", s.fail)
	mux.HandleFunc("GET /delay", s.delay)
	mux.HandleFunc("GET /call", func(w http.ResponseWriter, r *http.Request) {
		target := r.URL.Query().Get("url")
		if _, err := checkURL(target); err != nil {
			http.Error(w, "sampleapp: "+err.Error()+"; use /call?url=http://service:port/", http.StatusBadRequest)
			return
		}
		rep := s.reply(r)
		up := s.call(r, target)
		rep.Upstreams = []Upstream{up}
		code := http.StatusOK
		if up.Error != "" {
			code = http.StatusBadGateway
		}
		s.write(w, code, rep)
	})
	return mux
}

// maxDelay bounds /delay.
const maxDelay = 30 * time.Second

// fail answers ?code= (default 503) to exactly ?percent= (default 50) of
// the requests to /fail, evenly spread (with 50, every second one), and
// the usual reply to the others: a backend that fails as often as asked,
// for retries and outlier detection.
func (s *Server) fail(w http.ResponseWriter, r *http.Request) {
	percent, err1 := queryInt(r, "percent", 50, 0, 100)
	code, err2 := queryInt(r, "code", http.StatusServiceUnavailable, 200, 599)
	if err := errors.Join(err1, err2); err != nil {
		http.Error(w, "sampleapp: "+err.Error(), http.StatusBadRequest)
		return
	}
	n := s.failN.Add(1)
	if n*uint64(percent)/100 > (n-1)*uint64(percent)/100 {
		http.Error(w, fmt.Sprintf("sampleapp: failing %d%% of requests", percent), code)
		return
	}
	s.write(w, http.StatusOK, s.reply(r))
}

// delay answers after ?d= (a Go duration, at most maxDelay), or when the
// caller gives up.
func (s *Server) delay(w http.ResponseWriter, r *http.Request) {
	d, err := time.ParseDuration(r.URL.Query().Get("d"))
	if err != nil || d < 0 || d > maxDelay {
		http.Error(w, fmt.Sprintf("sampleapp: want ?d=DURATION up to %v", maxDelay), http.StatusBadRequest)
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		s.write(w, http.StatusOK, s.reply(r))
	case <-r.Context().Done():
	}
}

// queryInt reads an integer query parameter within [lo, hi].
func queryInt(r *http.Request, name string, def, lo, hi int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s=%q: want an integer in [%d, %d]", name, v, lo, hi)
	}
	return n, nil
}

// reply describes this instance and the caller.
func (s *Server) reply(r *http.Request) Reply {
	return Reply{
		Service: s.cfg.Name, Version: s.cfg.Version,
		Pod: s.cfg.Pod, Namespace: s.cfg.Namespace, Node: s.cfg.Node,
		RemoteAddr: r.RemoteAddr, Host: r.Host, Proto: r.Proto,
		TraceParent: r.Header.Get("Traceparent"),
	}
}

func (s *Server) write(w http.ResponseWriter, code int, rep Reply) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		s.log.Debug("write reply", "err", err)
	}
}

// checkURL accepts absolute http, https and grpc URLs with a host.
func checkURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("missing url")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("url %q: %w", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "grpc" && u.Scheme != "udp") || u.Host == "" {
		return nil, fmt.Errorf("url %q: want http://host[:port]/path, https://..., grpc://host:port or udp://host:port", raw)
	}
	return u, nil
}

// call GETs target (a grpc:// target: a gRPC health check) on behalf of
// in, whose propagated headers it passes on, and records the outcome; a
// non-2xx status is not an error (it is the upstream's answer, shown as
// such).
func (s *Server) call(in *http.Request, target string) Upstream {
	up := Upstream{URL: target}
	ctx, cancel := context.WithTimeout(in.Context(), s.cfg.CallTimeout)
	defer cancel()
	if host, ok := strings.CutPrefix(target, "grpc://"); ok {
		return s.callGRPC(ctx, in, strings.TrimSuffix(host, "/"), up)
	}
	if host, ok := strings.CutPrefix(target, "udp://"); ok {
		return s.callUDP(ctx, strings.TrimSuffix(host, "/"), up)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		up.Error = err.Error()
		return up
	}
	for _, h := range propagated {
		if v := in.Header.Values(h); len(v) > 0 {
			req.Header[http.CanonicalHeaderKey(h)] = v
		}
	}
	resp, err := s.client.Do(req)
	if err != nil {
		up.Error = err.Error()
		s.log.Info("upstream call failed", "url", target, "err", err)
		return up
	}
	defer resp.Body.Close()
	up.Status = resp.StatusCode
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody))
	if err != nil {
		up.Error = fmt.Sprintf("read reply: %v", err)
	}
	if json.Valid(body) {
		up.Body = body
	} else {
		up.Body, _ = json.Marshal(string(body))
	}
	return up
}

// callGRPC asks host's gRPC health service (plaintext HTTP/2: in the mesh
// ztunnel adds mTLS) whether it is serving.
func (s *Server) callGRPC(ctx context.Context, in *http.Request, host string, up Upstream) Upstream {
	cc, err := grpc.NewClient("passthrough:///"+host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		up.Error = err.Error()
		return up
	}
	defer cc.Close()
	var md []string
	for _, h := range propagated {
		for _, v := range in.Header.Values(h) {
			md = append(md, h, v)
		}
	}
	ctx = metadataContext(ctx, md)
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		up.Error = err.Error()
		s.log.Info("upstream call failed", "url", "grpc://"+host, "err", err)
		return up
	}
	up.Status = http.StatusOK
	up.GRPCStatus = resp.GetStatus().String()
	return up
}

// Listeners are what Serve serves on; Echo and OTLP may be nil.
type Listeners struct {
	HTTP net.Listener // the HTTP API and gRPC health (h2c)
	Echo net.Listener // the raw TCP echo
	OTLP net.Listener // the trace sink; needs Config.OTLPSink
}

// Run serves until ctx ends, then shuts down gracefully and returns nil.
func (s *Server) Run(ctx context.Context) (err error) {
	var l Listeners
	var closers []io.Closer
	defer func() {
		if err != nil {
			for _, c := range closers {
				c.Close()
			}
		}
	}()
	listen := func(addr, what string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("sampleapp: listen %s%s: %w", addr, what, err)
		}
		closers = append(closers, ln)
		return ln, nil
	}
	if l.HTTP, err = listen(s.cfg.Listen, ""); err != nil {
		return err
	}
	if s.cfg.TCPEcho != "" {
		if l.Echo, err = listen(s.cfg.TCPEcho, " (tcp echo)"); err != nil {
			return err
		}
	}
	if s.sink != nil {
		if l.OTLP, err = listen(s.cfg.OTLPSink, " (otlp sink)"); err != nil {
			return err
		}
	}
	pc, err := net.ListenPacket("udp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("sampleapp: listen %s (udp): %w", s.cfg.Listen, err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.serveUDP(ctx, pc) }()
	defer func() { pc.Close(); <-done }()
	return s.Serve(ctx, l)
}

// Serve is Run on given listeners. It closes them all.
func (s *Server) Serve(ctx context.Context, l Listeners) error {
	if l.OTLP != nil && s.sinkGRPC == nil {
		l.OTLP.Close()
		l.HTTP.Close()
		if l.Echo != nil {
			l.Echo.Close()
		}
		return errors.New("sampleapp: an OTLP listener without Config.OTLPSink")
	}
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		Protocols:         new(http.Protocols),
	}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true) // h2c by prior knowledge, and gRPC
	attrs := []any{"service", s.cfg.Name, "version", s.cfg.Version, "http", l.HTTP.Addr().String(), "pod", s.cfg.Pod}
	if l.OTLP != nil {
		attrs = append(attrs, "otlp_sink", l.OTLP.Addr().String(), "sink_spans", s.cfg.SinkSpans)
	}
	s.log.Info("serving", attrs...)
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := hs.Serve(l.HTTP); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("sampleapp: serve http: %w", err)
		}
	}()
	var conns sync.WaitGroup
	if l.Echo != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.echoLoop(ctx, l.Echo, &conns); err != nil {
				errc <- err
			}
		}()
	}
	if l.OTLP != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.sinkGRPC.Serve(l.OTLP); err != nil {
				errc <- fmt.Errorf("sampleapp: serve otlp sink: %w", err)
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	hs.Shutdown(sctx) //nolint:errcheck // best effort; Close follows
	hs.Close()
	s.grpc.Stop()
	if s.sinkGRPC != nil {
		s.sinkGRPC.Stop() // closes l.OTLP
	}
	if l.OTLP != nil {
		l.OTLP.Close() // in case Serve had not started on it yet
	}
	if l.Echo != nil {
		l.Echo.Close()
	}
	wg.Wait()
	conns.Wait()
	return err
}

// echoLoop accepts raw TCP connections and echoes them until ctx ends.
func (s *Server) echoLoop(ctx context.Context, ln net.Listener, conns *sync.WaitGroup) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("sampleapp: accept tcp echo: %w", err)
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			echoConn(ctx, c)
		}()
	}
}

// echoConn copies c's input back to it until EOF, idleness or ctx ends.
func echoConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	buf := make([]byte, 32<<10)
	for {
		c.SetReadDeadline(time.Now().Add(echoIdleTimeout))
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if tc, ok := c.(*net.TCPConn); ok && errors.Is(err, io.EOF) {
				tc.CloseWrite() // propagate the half-close
			}
			return
		}
	}
}

// metadataContext adds outgoing gRPC metadata (key, value pairs).
func metadataContext(ctx context.Context, kv []string) context.Context {
	if len(kv) == 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}
