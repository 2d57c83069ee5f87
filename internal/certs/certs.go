// Package certs keeps the certificates of the identities whose pods run on
// this node: one identity.Source per SPIFFE identity, created when the first
// pod with that identity is enrolled and closed when the last one leaves.
// Every pod's connections use its own identity's certificate. Certificates
// come from a CA through an identity.SignFunc: istiod-lite's
// CreateCertificate in a cluster, the in-process CA core (LocalSigner) with
// --local-config.
package certs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/identity"
)

// Config configures a Manager.
type Config struct {
	// Sign obtains a certificate for a CSR. Required.
	Sign identity.SignFunc
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Manager hands out reference-counted certificate sources per identity.
type Manager struct {
	cfg Config

	mu      sync.Mutex // guards the fields below
	entries map[spiffeid.ID]*entry
	closed  bool
}

// entry is one identity's source; ready closes once src or err is set.
type entry struct {
	refs   int
	ready  chan struct{}
	cancel context.CancelFunc // stops a first fetch nobody waits for any more
	src    *identity.Source
	err    error
}

// ErrClosed is returned after Close.
var ErrClosed = errors.New("certs: manager closed")

// New returns a Manager.
func New(cfg Config) (*Manager, error) {
	if cfg.Sign == nil {
		return nil, errors.New("certs: a Sign function is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{cfg: cfg, entries: make(map[spiffeid.ID]*entry)}, nil
}

// Acquire returns id's certificate source, fetching the first certificate if
// this is the identity's first holder; it waits at most until ctx ends.
// Each successful Acquire must be paired with a Release.
func (m *Manager) Acquire(ctx context.Context, id spiffeid.ID) (*identity.Source, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	e, ok := m.entries[id]
	if !ok {
		fctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
		e = &entry{ready: make(chan struct{}), cancel: cancel}
		m.entries[id] = e
		go m.fetch(fctx, id, e)
	}
	e.refs++
	m.mu.Unlock()

	select {
	case <-e.ready:
	case <-ctx.Done():
		m.release(id, e)
		return nil, fmt.Errorf("certs: waiting for a certificate for %s: %w", id, ctx.Err())
	}
	if e.err != nil {
		m.release(id, e)
		return nil, e.err
	}
	return e.src, nil
}

// fetchTimeout bounds the first certificate of an identity.
const fetchTimeout = 30 * time.Second

// fetch creates the identity's source (it rotates by itself from then on).
func (m *Manager) fetch(ctx context.Context, id spiffeid.ID, e *entry) {
	defer e.cancel()
	src, err := identity.NewSource(ctx, identity.SourceConfig{
		ID:     id,
		Fetch:  identity.CSRFetcher(m.cfg.Sign),
		Logger: m.cfg.Logger.With("identity", id.String()),
	})
	if err != nil {
		err = fmt.Errorf("certs: certificate for %s: %w", id, err)
		m.cfg.Logger.Warn("certificate fetch failed", "identity", id.String(), "err", err)
	}
	m.mu.Lock()
	e.src, e.err = src, err
	if err != nil && m.entries[id] == e {
		delete(m.entries, id) // the next Acquire tries again
	}
	close(e.ready)
	m.mu.Unlock()
}

// Release drops one reference; the last one closes the source.
func (m *Manager) Release(id spiffeid.ID) {
	m.mu.Lock()
	e, ok := m.entries[id]
	m.mu.Unlock()
	if ok {
		m.release(id, e)
	}
}

// release drops one reference to e, which may already be out of the map
// (a failed fetch removes its entry so the next Acquire starts afresh).
func (m *Manager) release(id spiffeid.ID, e *entry) {
	m.mu.Lock()
	e.refs--
	if e.refs > 0 {
		m.mu.Unlock()
		return
	}
	if m.entries[id] == e {
		delete(m.entries, id)
	}
	m.mu.Unlock()
	e.cancel()
	<-e.ready // prompt: the fetch stops on cancel
	if e.src != nil {
		e.src.Close()
	}
}

// Source returns id's source if some holder has acquired it and its first
// certificate has arrived; the data path uses it without blocking.
func (m *Manager) Source(id spiffeid.ID) (*identity.Source, bool) {
	m.mu.Lock()
	e, ok := m.entries[id]
	m.mu.Unlock()
	if !ok {
		return nil, false
	}
	select {
	case <-e.ready:
		return e.src, e.src != nil
	default:
		return nil, false
	}
}

// Identities lists the identities currently held, for the config dump.
func (m *Manager) Identities() []spiffeid.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]spiffeid.ID, 0, len(m.entries))
	for id := range m.entries {
		ids = append(ids, id)
	}
	return ids
}

// Close closes every source; later Acquires fail.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	entries := m.entries
	m.entries = make(map[spiffeid.ID]*entry)
	m.mu.Unlock()
	for _, e := range entries {
		e.cancel()
		<-e.ready
		if e.src != nil {
			e.src.Close()
		}
	}
}

// LocalSigner signs with an in-process CA: for --local-config and tests.
// ttl 0 means the CA's default lifetime.
func LocalSigner(a *ca.Authority, ttl time.Duration) identity.SignFunc {
	return func(_ context.Context, id spiffeid.ID, csrPEM []byte) ([]byte, []byte, error) {
		chain, err := a.SignCSR(csrPEM, id, ttl)
		if err != nil {
			return nil, nil, err
		}
		return chain, a.RootsPEM(), nil
	}
}
