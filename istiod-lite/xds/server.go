package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of [Config].
const (
	DefaultDebounceAfter = 100 * time.Millisecond
	DefaultDebounceMax   = time.Second
	DefaultMaxPending    = 10000
	DefaultAckTimeout    = 30 * time.Second
)

// maxTypes bounds the resource types one stream may subscribe to, and so its
// send queue (one response in flight per type).
const maxTypes = 16

// Config configures a [Server].
type Config struct {
	// Cache is the resource source. Required.
	Cache *Cache
	// Listener is what [Server.Run] serves on. Required for Run only.
	Listener net.Listener
	// ServerOptions configure the gRPC server built by Run (TLS
	// credentials, keepalive, stream limits).
	ServerOptions []grpc.ServerOption
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics defaults to a no-op; see [NewPrometheusMetrics].
	Metrics Metrics

	// DebounceAfter is the quiet time after the last change before a push
	// (default 100 ms); DebounceMax caps the wait after the first change
	// (default 1 s).
	DebounceAfter, DebounceMax time.Duration
	// MaxPending bounds the changed names queued for one stream; beyond
	// it the stream is closed (default 10000).
	MaxPending int
	// AckTimeout is how long a response may stay unanswered before the
	// stream is closed (default 30 s).
	AckTimeout time.Duration
	// Ready, if not nil, is closed once Cache holds a full translation of
	// the cluster. Until then streams are refused with Unavailable, as
	// Istio's istiod refuses them until its caches have synced: a client
	// that holds resources would otherwise be told they are all gone.
	Ready <-chan struct{}
}

// Server is the Delta ADS server. Register it on a gRPC server with
// [Server.Register] or let [Server.Run] serve Config.Listener.
type Server struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer

	cfg     Config
	log     *slog.Logger
	metrics Metrics
	streams atomic.Int64
	nextID  atomic.Uint64
}

// New validates cfg, fills in defaults and returns a server.
func New(cfg Config) (*Server, error) {
	if cfg.Cache == nil {
		return nil, errors.New("xds: Config.Cache is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	if cfg.DebounceAfter <= 0 {
		cfg.DebounceAfter = DefaultDebounceAfter
	}
	if cfg.DebounceMax <= 0 {
		cfg.DebounceMax = DefaultDebounceMax
	}
	if cfg.DebounceMax < cfg.DebounceAfter {
		cfg.DebounceMax = cfg.DebounceAfter
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	return &Server{cfg: cfg, log: cfg.Logger, metrics: cfg.Metrics}, nil
}

// Register registers the server's ADS service on r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	discovery.RegisterAggregatedDiscoveryServiceServer(r, s)
}

// Run serves Config.Listener until ctx is done, then stops the gRPC server,
// closing every stream, and returns nil.
func (s *Server) Run(ctx context.Context) error {
	if s.cfg.Listener == nil {
		return errors.New("xds: Config.Listener is required by Run")
	}
	gs := grpc.NewServer(s.cfg.ServerOptions...)
	s.Register(gs)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(s.cfg.Listener) }()
	select {
	case <-ctx.Done():
		gs.Stop()
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("xds: serve %s: %w", s.cfg.Listener.Addr(), err)
	}
}

// Clients returns the number of open streams.
func (s *Server) Clients() int { return int(s.streams.Load()) }

// DeltaAggregatedResources serves one Delta ADS stream.
func (s *Server) DeltaAggregatedResources(st grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]) error {
	if s.cfg.Ready != nil {
		select {
		case <-s.cfg.Ready:
		default:
			return status.Error(codes.Unavailable, "xds: not ready: the first translation of the cluster is not done yet; retry")
		}
	}
	s.streams.Add(1)
	s.metrics.Connected(1)
	defer func() {
		s.streams.Add(-1)
		s.metrics.Connected(-1)
	}()

	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	c := newConn(s, s.nextID.Add(1))
	s.cfg.Cache.watch(c)
	defer s.cfg.Cache.unwatch(c)

	reqs := make(chan *discovery.DeltaDiscoveryRequest)
	recvErr := make(chan error, 1)
	sendErr := make(chan error, 1)
	go recvLoop(ctx, st, reqs, recvErr)
	go sendLoop(ctx, st, c.sendq, sendErr, s.metrics)

	err := c.loop(ctx, reqs, recvErr, sendErr)
	if err != nil && status.Code(err) != codes.Canceled {
		s.log.Info("xds: stream closed", "stream", c.id, "node", c.node, "err", err)
	}
	return err
}

// recvLoop reads requests until the stream fails or ctx is done.
func recvLoop(ctx context.Context, st grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse], out chan<- *discovery.DeltaDiscoveryRequest, errc chan<- error) {
	for {
		req, err := st.Recv()
		if err != nil {
			errc <- err
			return
		}
		select {
		case out <- req:
		case <-ctx.Done():
			return
		}
	}
}

// outgoing is a response queued for the sender, with the time its oldest
// change was made.
type outgoing struct {
	resp  *discovery.DeltaDiscoveryResponse
	since time.Time
}

// sendLoop writes queued responses. Send may block on a client that does not
// read; the stream loop never waits for it, and the AckTimeout closes such a
// stream, which unblocks Send.
func sendLoop(ctx context.Context, st grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse], in <-chan outgoing, errc chan<- error, m Metrics) {
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-in:
			if err := st.Send(o.resp); err != nil {
				errc <- err
				return
			}
			m.Push(o.resp.GetTypeUrl(), len(o.resp.GetResources())+len(o.resp.GetRemovedResources()), time.Since(o.since))
		}
	}
}

// isEOF reports whether a receive error is the client closing its side.
func isEOF(err error) bool { return errors.Is(err, io.EOF) }
