package certs

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/identity"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td       = spiffeid.RequireTrustDomainFromString("cluster.local")
	frontend = spiffeid.RequireFromPath(td, "/ns/shop/sa/frontend")
)

func newManager(t *testing.T, sign identity.SignFunc) *Manager {
	t.Helper()
	m, err := New(Config{Sign: sign})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func countingSigner(t *testing.T, calls *atomic.Int64) identity.SignFunc {
	a, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sign := LocalSigner(a, time.Hour)
	return func(ctx context.Context, id spiffeid.ID, csr []byte) ([]byte, []byte, error) {
		calls.Add(1)
		return sign(ctx, id, csr)
	}
}

func TestManager_OneSourcePerIdentitySharedByHolders(t *testing.T) {
	var calls atomic.Int64
	m := newManager(t, countingSigner(t, &calls))
	ctx := context.Background()
	var wg sync.WaitGroup
	srcs := make([]*identity.Source, 20)
	for i := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := m.Acquire(ctx, frontend)
			if err != nil {
				t.Error(err)
			}
			srcs[i] = s
		}()
	}
	wg.Wait()
	for _, s := range srcs[1:] {
		if s != srcs[0] {
			t.Fatal("holders got different sources")
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("signed %d times, want 1", calls.Load())
	}
	svid, err := srcs[0].GetX509SVID()
	if err != nil || svid.ID != frontend {
		t.Fatalf("svid = %v, %v", svid, err)
	}
	if _, ok := m.Source(frontend); !ok {
		t.Fatal("Source does not see an acquired identity")
	}
	for range srcs {
		m.Release(frontend)
	}
	if _, ok := m.Source(frontend); ok {
		t.Fatal("identity still held after the last release")
	}
	if _, err := srcs[0].GetX509SVID(); !errors.Is(err, identity.ErrSourceClosed) {
		t.Fatalf("source after last release: %v, want closed", err)
	}
}

func TestManager_FailedFetchIsRetriedByNextAcquire(t *testing.T) {
	var calls atomic.Int64
	good := countingSigner(t, &calls)
	var fail atomic.Bool
	fail.Store(true)
	m := newManager(t, func(ctx context.Context, id spiffeid.ID, csr []byte) ([]byte, []byte, error) {
		if fail.Load() {
			return nil, nil, errors.New("CA unreachable")
		}
		return good(ctx, id, csr)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := m.Acquire(ctx, frontend); err == nil {
		t.Fatal("Acquire succeeded with the CA down")
	}
	fail.Store(false)
	waitGone(t, m, frontend)
	if _, err := m.Acquire(context.Background(), frontend); err != nil {
		t.Fatalf("Acquire after the CA came back: %v", err)
	}
	m.Release(frontend)
}

// waitGone waits until the failed entry is dropped (its fetch gave up).
func waitGone(t *testing.T, m *Manager, id spiffeid.ID) {
	deadline := time.Now().Add(40 * time.Second)
	for {
		m.mu.Lock()
		_, ok := m.entries[id]
		m.mu.Unlock()
		if !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("failed entry never dropped")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestManager_ClosedRefusesAcquire(t *testing.T) {
	var calls atomic.Int64
	m := newManager(t, countingSigner(t, &calls))
	m.Close()
	if _, err := m.Acquire(context.Background(), frontend); !errors.Is(err, ErrClosed) {
		t.Fatalf("Acquire after Close: %v", err)
	}
}
