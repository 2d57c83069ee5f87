package state

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// Snapshot is a complete set of resources, the input of [Store.Replace] and
// [NewView]. Names must be unique within each kind.
type Snapshot struct {
	Workloads []*workloadapi.Workload
	Services  []*workloadapi.Service
	Policies  []*security.Authorization
}

// Update is a delta: resources to insert or replace, and names to remove.
// Removals are applied before upserts, so a name in both ends up present.
// Removing a name that is not present is not an error.
type Update struct {
	Workloads []*workloadapi.Workload
	Services  []*workloadapi.Service
	Policies  []*security.Authorization

	// RemovedWorkloads are Workload uids.
	RemovedWorkloads []string
	// RemovedServices are "namespace/hostname" names.
	RemovedServices []string
	// RemovedPolicies are "namespace/name" names.
	RemovedPolicies []string
}

// ErrInvalid is wrapped by every validation error of Replace, Apply and
// NewView.
var ErrInvalid = errors.New("invalid resource")

// WorkloadKey is the resource name of a workload: its uid.
func WorkloadKey(w *workloadapi.Workload) string { return w.GetUid() }

// ServiceKey is the resource name of a service: "namespace/hostname".
func ServiceKey(s *workloadapi.Service) string {
	return s.GetNamespace() + "/" + s.GetHostname()
}

// PolicyKey is the resource name of an authorization policy: "namespace/name".
func PolicyKey(p *security.Authorization) string {
	return p.GetNamespace() + "/" + p.GetName()
}

func validateWorkload(w *workloadapi.Workload) error {
	if w == nil {
		return fmt.Errorf("state: nil workload: %w", ErrInvalid)
	}
	if w.GetUid() == "" {
		return fmt.Errorf("state: workload %q (namespace %q) has no uid: %w", w.GetName(), w.GetNamespace(), ErrInvalid)
	}
	for i, a := range w.GetAddresses() {
		if _, ok := netip.AddrFromSlice(a); !ok {
			return fmt.Errorf("state: workload %q: addresses[%d] has %d bytes, want 4 or 16: %w", w.GetUid(), i, len(a), ErrInvalid)
		}
	}
	return nil
}

func validateService(s *workloadapi.Service) error {
	if s == nil {
		return fmt.Errorf("state: nil service: %w", ErrInvalid)
	}
	if s.GetHostname() == "" {
		return fmt.Errorf("state: service %q (namespace %q) has no hostname: %w", s.GetName(), s.GetNamespace(), ErrInvalid)
	}
	for i, a := range s.GetAddresses() {
		if _, ok := netip.AddrFromSlice(a.GetAddress()); !ok {
			return fmt.Errorf("state: service %q: addresses[%d] has %d bytes, want 4 or 16: %w", ServiceKey(s), i, len(a.GetAddress()), ErrInvalid)
		}
	}
	return nil
}

func validatePolicy(p *security.Authorization) error {
	if p == nil {
		return fmt.Errorf("state: nil authorization: %w", ErrInvalid)
	}
	if p.GetName() == "" {
		return fmt.Errorf("state: authorization in namespace %q has no name: %w", p.GetNamespace(), ErrInvalid)
	}
	return nil
}

// upsertAll validates items and puts them into m under key(item), rejecting
// a name given twice in the same batch.
func upsertAll[T any](kind string, m map[string]T, items []T, key func(T) string, validate func(T) error) error {
	seen := make(map[string]bool, len(items))
	for _, it := range items {
		if err := validate(it); err != nil {
			return err
		}
		k := key(it)
		if seen[k] {
			return fmt.Errorf("state: %s %q given twice: %w", kind, k, ErrInvalid)
		}
		seen[k] = true
		m[k] = it
	}
	return nil
}

// NewView validates a full snapshot and builds its indexed view, with the
// given version. It is pure: [Store.Replace] uses it, and tests and tools can
// call it directly.
func NewView(snap Snapshot, version uint64) (*View, error) {
	w := make(map[string]*workloadapi.Workload, len(snap.Workloads))
	s := make(map[string]*workloadapi.Service, len(snap.Services))
	p := make(map[string]*security.Authorization, len(snap.Policies))
	if err := upsertAll("workload", w, snap.Workloads, WorkloadKey, validateWorkload); err != nil {
		return nil, err
	}
	if err := upsertAll("service", s, snap.Services, ServiceKey, validateService); err != nil {
		return nil, err
	}
	if err := upsertAll("authorization", p, snap.Policies, PolicyKey, validatePolicy); err != nil {
		return nil, err
	}
	return build(version, w, s, p), nil
}

// apply returns the view that results from applying u to v; v is unchanged.
func (v *View) apply(u Update) (*View, error) {
	w := maps.Clone(v.workloads)
	s := maps.Clone(v.services)
	p := maps.Clone(v.policies)
	for _, k := range u.RemovedWorkloads {
		delete(w, k)
	}
	for _, k := range u.RemovedServices {
		delete(s, k)
	}
	for _, k := range u.RemovedPolicies {
		delete(p, k)
	}
	if err := upsertAll("workload", w, u.Workloads, WorkloadKey, validateWorkload); err != nil {
		return nil, err
	}
	if err := upsertAll("service", s, u.Services, ServiceKey, validateService); err != nil {
		return nil, err
	}
	if err := upsertAll("authorization", p, u.Policies, PolicyKey, validatePolicy); err != nil {
		return nil, err
	}
	return build(v.version+1, w, s, p), nil
}

// Store holds the current View and publishes new ones. The zero value is not
// usable; call [NewStore].
type Store struct {
	cur atomic.Pointer[View]

	// writeMu serializes writers (Apply, Replace).
	writeMu sync.Mutex

	// subMu guards the fields below.
	subMu sync.Mutex
	subs  map[chan struct{}]struct{}
}

// NewStore returns a store holding an empty view of version 0.
func NewStore() *Store {
	s := &Store{subs: make(map[chan struct{}]struct{})}
	empty, _ := NewView(Snapshot{}, 0)
	s.cur.Store(empty)
	return s
}

// Current returns the current view. It takes no lock; the View never changes.
func (s *Store) Current() *View { return s.cur.Load() }

// Replace installs snap as the whole state. On a validation error (wrapping
// [ErrInvalid]) the state is unchanged.
func (s *Store) Replace(snap Snapshot) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	next, err := NewView(snap, s.cur.Load().version+1)
	if err != nil {
		return err
	}
	s.cur.Store(next)
	s.notify()
	return nil
}

// Apply applies a delta atomically. On a validation error (wrapping
// [ErrInvalid]) the state is unchanged.
func (s *Store) Apply(u Update) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	next, err := s.cur.Load().apply(u)
	if err != nil {
		return err
	}
	s.cur.Store(next)
	s.notify()
	return nil
}

// Subscribe returns a channel that receives a value after every successful
// write. Signals coalesce: the channel has a buffer of one and the writer
// never blocks, so a slow subscriber sees one signal for many writes and
// must read [Store.Current] for the latest state. The channel starts with one
// pending signal, so a subscriber's first receive covers the state as it was
// when it subscribed. The channel is closed once ctx is done.
func (s *Store) Subscribe(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	ch <- struct{}{}
	s.subMu.Lock()
	s.subs[ch] = struct{}{}
	s.subMu.Unlock()
	context.AfterFunc(ctx, func() {
		s.subMu.Lock()
		defer s.subMu.Unlock()
		delete(s.subs, ch)
		close(ch)
	})
	return ch
}

// notify signals every subscriber without blocking.
func (s *Store) notify() {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
