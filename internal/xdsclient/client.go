package xdsclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// Resource type URLs the client subscribes to.
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
)

// Defaults of [Config].
const (
	DefaultBackoffInitial = 100 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
)

// Config configures a [Client].
type Config struct {
	// Target is the gRPC target of istiod-lite, e.g. "istiod:15012".
	Target string
	// DialOptions must include transport credentials (TLS in production).
	DialOptions []grpc.DialOption
	// Store receives the configuration. Required.
	Store *state.Store
	// NodeID identifies this ztunnel to the server.
	NodeID string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics defaults to a no-op.
	Metrics Metrics
	// BackoffInitial and BackoffMax bound the reconnect delay, which
	// doubles after each failed attempt (defaults 100 ms and 30 s).
	BackoffInitial, BackoffMax time.Duration
	// Extra are resource types subscribed to besides the Store's, each
	// delivered to its own Sink (the waypoint's routes and policies).
	Extra []Extra
}

// Extra is a resource type the client subscribes to (wildcard) on the same
// stream, delivered to Sink rather than to the Store.
type Extra struct {
	// TypeURL is the resource type; it must not be one of the Store's
	// (TypeAddress, TypeAuthorization) nor repeat another Extra's.
	TypeURL string
	// Sink receives its responses. Required.
	Sink Sink
}

// Sink holds the resources of one [Extra] type. Its methods are called
// from the client's Run goroutine only, one at a time.
type Sink interface {
	// Apply applies one response: the resources upserted, by name, and
	// the names removed. An error rejects the whole response (it is
	// NACKed with the error) and must leave the Sink unchanged.
	Apply(upserts map[string]*anypb.Any, removed []string) error
	// Versions returns name → version of every resource the Sink holds,
	// computed with [Version] over the resource's message, sent as
	// initial_resource_versions on every (re)connect.
	Versions() map[string]string
}

// Metrics receives the client's events; implementations must not block.
type Metrics interface {
	// Response is called for every response received: its type, the
	// number of resources and removed names it carried, and the Store's
	// error if it was NACKed.
	Response(typeURL string, resources, removed int, err error)
	// Connected is called with true when a stream opens and false when
	// it ends.
	Connected(up bool)
}

type nopMetrics struct{}

func (nopMetrics) Response(string, int, int, error) {}
func (nopMetrics) Connected(bool)                   {}

// Client is the Delta ADS client. Create it with [New].
type Client struct {
	cfg     Config
	log     *slog.Logger
	metrics Metrics
	// types are every subscribed type, the Store's first; sinks the
	// Extra types' sinks. Both are fixed by New.
	types []string
	sinks map[string]Sink

	synced     atomic.Bool
	syncedOnce sync.Once
	syncedCh   chan struct{}

	// seen is the set of types received at least once; owned by Run.
	seen map[string]bool
}

// New validates cfg and returns a client; it does not connect.
func New(cfg Config) (*Client, error) {
	if cfg.Target == "" {
		return nil, errors.New("xdsclient: Config.Target is required")
	}
	if cfg.Store == nil {
		return nil, errors.New("xdsclient: Config.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	if cfg.BackoffInitial <= 0 {
		cfg.BackoffInitial = DefaultBackoffInitial
	}
	if cfg.BackoffMax < cfg.BackoffInitial {
		cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffInitial)
	}
	sinks := make(map[string]Sink, len(cfg.Extra))
	types := []string{TypeAddress, TypeAuthorization}
	for i, x := range cfg.Extra {
		switch {
		case x.TypeURL == "":
			return nil, fmt.Errorf("xdsclient: Config.Extra[%d]: TypeURL is required", i)
		case x.Sink == nil:
			return nil, fmt.Errorf("xdsclient: Config.Extra[%d] %s: Sink is required", i, x.TypeURL)
		case x.TypeURL == TypeAddress || x.TypeURL == TypeAuthorization:
			return nil, fmt.Errorf("xdsclient: Config.Extra[%d]: %s is the Store's type", i, x.TypeURL)
		case sinks[x.TypeURL] != nil:
			return nil, fmt.Errorf("xdsclient: Config.Extra[%d]: %s subscribed twice", i, x.TypeURL)
		}
		sinks[x.TypeURL] = x.Sink
		types = append(types, x.TypeURL)
	}
	return &Client{
		cfg: cfg, log: cfg.Logger, metrics: cfg.Metrics,
		types:    types,
		sinks:    sinks,
		syncedCh: make(chan struct{}),
		seen:     make(map[string]bool),
	}, nil
}

// Synced reports whether a response of each subscribed type has been
// applied.
func (c *Client) Synced() bool { return c.synced.Load() }

// SyncedCh is closed when the client becomes synced.
func (c *Client) SyncedCh() <-chan struct{} { return c.syncedCh }

// Run connects and keeps a stream open until ctx is done, reconnecting with
// backoff. It returns nil on cancellation, or an error if the client cannot
// be built at all.
func (c *Client) Run(ctx context.Context) error {
	cc, err := grpc.NewClient(c.cfg.Target, c.cfg.DialOptions...)
	if err != nil {
		return fmt.Errorf("xdsclient: dial %s: %w (set Config.DialOptions, including transport credentials)", c.cfg.Target, err)
	}
	defer cc.Close()
	ads := discovery.NewAggregatedDiscoveryServiceClient(cc)

	backoff := c.cfg.BackoffInitial
	for {
		progressed, err := c.stream(ctx, ads)
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			backoff = c.cfg.BackoffInitial
		}
		// Full jitter: wait a random time in [backoff/2, backoff).
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("xdsclient: stream ended; keeping the last configuration", "target", c.cfg.Target, "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, c.cfg.BackoffMax)
	}
}

// stream runs one ADS stream until it fails. progressed reports whether a
// response was received, which resets the backoff.
func (c *Client) stream(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("xdsclient: open stream to %s: %w", c.cfg.Target, err)
	}
	c.metrics.Connected(true)
	defer c.metrics.Connected(false)

	initial, err := InitialVersions(c.cfg.Store.Current())
	if err != nil {
		return false, err
	}
	node := &core.Node{Id: c.cfg.NodeID}
	for _, x := range c.cfg.Extra {
		initial[x.TypeURL] = x.Sink.Versions()
	}
	for _, t := range c.types {
		req := &discovery.DeltaDiscoveryRequest{
			Node:                    node,
			TypeUrl:                 t,
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: initial[t],
		}
		if err := st.Send(req); err != nil {
			return false, fmt.Errorf("xdsclient: subscribe %s: %w", t, err)
		}
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return progressed, fmt.Errorf("xdsclient: receive from %s: %w", c.cfg.Target, err)
		}
		progressed = true
		applyErr := c.apply(resp)
		c.metrics.Response(resp.GetTypeUrl(), len(resp.GetResources()), len(resp.GetRemovedResources()), applyErr)
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if applyErr != nil {
			c.log.Warn("xdsclient: NACK", "type", resp.GetTypeUrl(), "nonce", resp.GetNonce(), "err", applyErr)
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: applyErr.Error()}
		} else {
			c.markSeen(resp.GetTypeUrl())
		}
		if err := st.Send(ack); err != nil {
			return progressed, fmt.Errorf("xdsclient: ack %s: %w", resp.GetTypeUrl(), err)
		}
	}
}

func (c *Client) markSeen(t string) {
	c.seen[t] = true
	for _, t := range c.types {
		if !c.seen[t] {
			return
		}
	}
	c.syncedOnce.Do(func() {
		c.synced.Store(true)
		close(c.syncedCh)
	})
}

// apply converts a response and applies it to the Store, or hands it to
// its Extra type's Sink.
func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) error {
	if sink, ok := c.sinks[resp.GetTypeUrl()]; ok {
		upserts := make(map[string]*anypb.Any, len(resp.GetResources()))
		for _, r := range resp.GetResources() {
			if r.GetResource() == nil {
				return fmt.Errorf("xdsclient: %s resource %q has no body", resp.GetTypeUrl(), r.GetName())
			}
			if r.GetResource().GetTypeUrl() != resp.GetTypeUrl() {
				return fmt.Errorf("xdsclient: resource %q is a %s in a %s response", r.GetName(), r.GetResource().GetTypeUrl(), resp.GetTypeUrl())
			}
			if _, dup := upserts[r.GetName()]; dup {
				return fmt.Errorf("xdsclient: %s resource %q sent twice in one response", resp.GetTypeUrl(), r.GetName())
			}
			upserts[r.GetName()] = r.GetResource()
		}
		if err := sink.Apply(upserts, resp.GetRemovedResources()); err != nil {
			return fmt.Errorf("xdsclient: apply %s nonce %s: %w", resp.GetTypeUrl(), resp.GetNonce(), err)
		}
		return nil
	}
	u, err := ToUpdate(resp)
	if err != nil {
		return err
	}
	if err := c.cfg.Store.Apply(u); err != nil {
		return fmt.Errorf("xdsclient: apply %s nonce %s: %w", resp.GetTypeUrl(), resp.GetNonce(), err)
	}
	return nil
}

// ToUpdate converts a response into a Store update. It is pure.
func ToUpdate(resp *discovery.DeltaDiscoveryResponse) (state.Update, error) {
	var u state.Update
	switch t := resp.GetTypeUrl(); t {
	case TypeAddress:
		for _, r := range resp.GetResources() {
			a := &workloadapi.Address{}
			if err := r.GetResource().UnmarshalTo(a); err != nil {
				return u, fmt.Errorf("xdsclient: resource %q: %w", r.GetName(), err)
			}
			switch x := a.GetType().(type) {
			case *workloadapi.Address_Workload:
				if k := state.WorkloadKey(x.Workload); k != r.GetName() {
					return u, fmt.Errorf("xdsclient: address %q holds workload %q", r.GetName(), k)
				}
				u.Workloads = append(u.Workloads, x.Workload)
				u.RemovedServices = append(u.RemovedServices, r.GetName())
			case *workloadapi.Address_Service:
				if k := state.ServiceKey(x.Service); k != r.GetName() {
					return u, fmt.Errorf("xdsclient: address %q holds service %q", r.GetName(), k)
				}
				u.Services = append(u.Services, x.Service)
				u.RemovedWorkloads = append(u.RemovedWorkloads, r.GetName())
			default:
				return u, fmt.Errorf("xdsclient: address %q is neither a workload nor a service", r.GetName())
			}
		}
		u.RemovedWorkloads = append(u.RemovedWorkloads, resp.GetRemovedResources()...)
		u.RemovedServices = append(u.RemovedServices, resp.GetRemovedResources()...)
	case TypeAuthorization:
		for _, r := range resp.GetResources() {
			p := &security.Authorization{}
			if err := r.GetResource().UnmarshalTo(p); err != nil {
				return u, fmt.Errorf("xdsclient: resource %q: %w", r.GetName(), err)
			}
			if k := state.PolicyKey(p); k != r.GetName() {
				return u, fmt.Errorf("xdsclient: authorization %q holds %q", r.GetName(), k)
			}
			u.Policies = append(u.Policies, p)
		}
		u.RemovedPolicies = append(u.RemovedPolicies, resp.GetRemovedResources()...)
	default:
		return u, fmt.Errorf("xdsclient: unexpected type %q", t)
	}
	return u, nil
}

// Version is a resource's version as the server computes it: the first 16
// hex digits of the SHA-256 of its deterministic encoding.
func Version(m proto.Message) (string, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("xdsclient: marshal %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}

// InitialVersions returns, per type URL, the name → version of every
// resource in v: what the client sends as initial_resource_versions.
func InitialVersions(v *state.View) (map[string]map[string]string, error) {
	snap := v.Snapshot()
	addr := make(map[string]string, len(snap.Workloads)+len(snap.Services))
	pol := make(map[string]string, len(snap.Policies))
	for _, w := range snap.Workloads {
		ver, err := Version(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
		if err != nil {
			return nil, err
		}
		addr[state.WorkloadKey(w)] = ver
	}
	for _, s := range snap.Services {
		ver, err := Version(&workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}})
		if err != nil {
			return nil, err
		}
		addr[state.ServiceKey(s)] = ver
	}
	for _, p := range snap.Policies {
		ver, err := Version(p)
		if err != nil {
			return nil, err
		}
		pol[state.PolicyKey(p)] = ver
	}
	return map[string]map[string]string{TypeAddress: addr, TypeAuthorization: pol}, nil
}
