package main

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambientmesh/ambient/internal/xdsclient"
	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/waypoint/l7authz"
	"github.com/ambientmesh/ambient/waypoint/proxy"
)

// l7XDS holds the waypoint's L7 resources as they arrive over xDS (the
// ServiceRoutes, AuthorizationPolicy and ServiceResilience types, one
// xdsclient.Sink each) and compiles them on the xDS client's goroutine,
// off the request path. A push that does not decode or does not compile is
// refused whole (the client NACKs it) and the last good configuration
// stays in force.
//
// The compiled configuration is put in force (on the proxy given to
// attach) once all three types have arrived, so the waypoint never serves
// routes without their policies. This cannot wait for ever on a type that
// has no resources: istiod-lite answers the first request of every type
// with one response, empty when it has none (istiod-lite/xds, "Stream
// protocol"), and xdsclient hands an empty response to the Sink like any
// other.
type l7XDS struct {
	log *slog.Logger

	mu sync.Mutex // guards the fields below
	// target receives each good configuration once attached; current is
	// the last one published (nil before both types arrived).
	target  l7Setter
	current *proxy.Compiled
	// routes, policies and resilience are the resources in force, by xDS
	// name.
	routes     map[string]*waypointapi.ServiceRoutes
	policies   map[string]*waypointapi.AuthorizationPolicy
	resilience map[string]*waypointapi.ServiceResilience
	// inputs are policies decoded (l7authz.FromProto), by name.
	inputs map[string]l7authz.Input
	// seen: the types applied at least once.
	seenRoutes, seenPolicies, seenResilience bool
	// rejected is, by type URL, the error of the last push NACKed; a good
	// push of the type clears it.
	rejected map[string]error
}

// l7Setter is where a compiled configuration goes: *proxy.Proxy.
type l7Setter interface{ SetL7(*proxy.Compiled) }

func newL7XDS(log *slog.Logger) *l7XDS {
	return &l7XDS{
		log:        log,
		routes:     map[string]*waypointapi.ServiceRoutes{},
		policies:   map[string]*waypointapi.AuthorizationPolicy{},
		resilience: map[string]*waypointapi.ServiceResilience{},
		inputs:     map[string]l7authz.Input{},
		rejected:   map[string]error{},
	}
}

// attach makes t receive every configuration from now on, starting with
// the current one if there is one.
func (l *l7XDS) attach(t l7Setter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.target = t
	if l.current != nil {
		t.SetL7(l.current)
	}
}

// Extra is the xdsclient subscription of the three types.
func (l *l7XDS) Extra() []xdsclient.Extra {
	return []xdsclient.Extra{
		{TypeURL: waypointapi.TypeURL, Sink: routesSink{l}},
		{TypeURL: waypointapi.PolicyTypeURL, Sink: policiesSink{l}},
		{TypeURL: waypointapi.ResilienceTypeURL, Sink: resilienceSink{l}},
	}
}

// Rejected joins the errors of the last refused push of each type whose
// later pushes were not applied either; nil when every type's last push was.
func (l *l7XDS) Rejected() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return errors.Join(l.rejected[waypointapi.TypeURL], l.rejected[waypointapi.PolicyTypeURL],
		l.rejected[waypointapi.ResilienceTypeURL])
}

type routesSink struct{ l *l7XDS }

func (s routesSink) Apply(upserts map[string]*anypb.Any, removed []string) error {
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	next := maps.Clone(l.routes)
	for name, a := range upserts {
		r := &waypointapi.ServiceRoutes{}
		if err := a.UnmarshalTo(r); err != nil {
			return l.rejectLocked(waypointapi.TypeURL, fmt.Errorf("routes %q: %w", name, err))
		}
		if r.Name() != name {
			return l.rejectLocked(waypointapi.TypeURL, fmt.Errorf("routes %q hold the table of %q", name, r.Name()))
		}
		next[name] = r
	}
	for _, n := range removed {
		delete(next, n)
	}
	c, err := compile(next, l.inputs, l.resilience)
	if err != nil {
		return l.rejectLocked(waypointapi.TypeURL, err)
	}
	l.routes, l.seenRoutes = next, true
	delete(l.rejected, waypointapi.TypeURL)
	l.publishLocked(c)
	return nil
}

func (s routesSink) Versions() map[string]string {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	return versions(s.l.routes)
}

type policiesSink struct{ l *l7XDS }

func (s policiesSink) Apply(upserts map[string]*anypb.Any, removed []string) error {
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	next, nextIn := maps.Clone(l.policies), maps.Clone(l.inputs)
	for name, a := range upserts {
		p := &waypointapi.AuthorizationPolicy{}
		if err := a.UnmarshalTo(p); err != nil {
			return l.rejectLocked(waypointapi.PolicyTypeURL, fmt.Errorf("authorization policy %q: %w", name, err))
		}
		if p.Key() != name {
			return l.rejectLocked(waypointapi.PolicyTypeURL, fmt.Errorf("authorization policy %q holds %q", name, p.Key()))
		}
		in, err := l7authz.FromProto(p)
		if err != nil {
			return l.rejectLocked(waypointapi.PolicyTypeURL, err)
		}
		next[name], nextIn[name] = p, in
	}
	for _, n := range removed {
		delete(next, n)
		delete(nextIn, n)
	}
	c, err := compile(l.routes, nextIn, l.resilience)
	if err != nil {
		return l.rejectLocked(waypointapi.PolicyTypeURL, err)
	}
	l.policies, l.inputs, l.seenPolicies = next, nextIn, true
	delete(l.rejected, waypointapi.PolicyTypeURL)
	l.publishLocked(c)
	return nil
}

func (s policiesSink) Versions() map[string]string {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	return versions(s.l.policies)
}

type resilienceSink struct{ l *l7XDS }

func (s resilienceSink) Apply(upserts map[string]*anypb.Any, removed []string) error {
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	next := maps.Clone(l.resilience)
	for name, a := range upserts {
		r := &waypointapi.ServiceResilience{}
		if err := a.UnmarshalTo(r); err != nil {
			return l.rejectLocked(waypointapi.ResilienceTypeURL, fmt.Errorf("resilience policy %q: %w", name, err))
		}
		if r.Name() != name {
			return l.rejectLocked(waypointapi.ResilienceTypeURL, fmt.Errorf("resilience policy %q holds the policy of %q", name, r.Name()))
		}
		next[name] = r
	}
	for _, n := range removed {
		delete(next, n)
	}
	c, err := compile(l.routes, l.inputs, next)
	if err != nil {
		return l.rejectLocked(waypointapi.ResilienceTypeURL, err)
	}
	l.resilience, l.seenResilience = next, true
	delete(l.rejected, waypointapi.ResilienceTypeURL)
	l.publishLocked(c)
	return nil
}

func (s resilienceSink) Versions() map[string]string {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	return versions(s.l.resilience)
}

func (l *l7XDS) rejectLocked(typeURL string, err error) error {
	l.rejected[typeURL] = err
	l.log.Warn("L7 configuration push refused; keeping the last good configuration", "type", typeURL, "err", err.Error())
	return err
}

// publishLocked puts c in force once all three types have arrived.
func (l *l7XDS) publishLocked(c *proxy.Compiled) {
	if !l.seenRoutes || !l.seenPolicies || !l.seenResilience {
		return
	}
	l.current = c
	if l.target != nil {
		l.target.SetL7(c)
	}
}

// compile builds the configuration of routes, policies and resilience
// policies (each in name order) and compiles it; any item that does not
// compile fails the whole.
func compile(routes map[string]*waypointapi.ServiceRoutes, inputs map[string]l7authz.Input,
	resilience map[string]*waypointapi.ServiceResilience) (*proxy.Compiled, error) {
	var cfg proxy.L7Config
	for _, n := range slices.Sorted(maps.Keys(routes)) {
		cfg.Routes = append(cfg.Routes, routes[n])
	}
	for _, n := range slices.Sorted(maps.Keys(inputs)) {
		cfg.Policies = append(cfg.Policies, inputs[n])
	}
	for _, n := range slices.Sorted(maps.Keys(resilience)) {
		cfg.Resilience = append(cfg.Resilience, resilience[n])
	}
	c, errs := proxy.Compile(cfg)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// versions computes xdsclient.Version of each resource, for resuming.
func versions[M proto.Message](m map[string]M) map[string]string {
	out := make(map[string]string, len(m))
	for n, r := range m {
		if v, err := xdsclient.Version(r); err == nil {
			out[n] = v
		}
	}
	return out
}
