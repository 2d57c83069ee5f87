package xdsclient_test

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/xdsclient"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
	"github.com/ambientmesh/ambient/proto/waypointapi"
)

// routesSink is a Sink of ServiceRoutes that refuses tables whose
// service key is "bad", counting what it was given.
type routesSink struct {
	mu       sync.Mutex
	held     map[string]*waypointapi.ServiceRoutes
	upserts  int
	removals int
	applies  int
}

func newRoutesSink() *routesSink { return &routesSink{held: map[string]*waypointapi.ServiceRoutes{}} }

func (s *routesSink) Apply(upserts map[string]*anypb.Any, removed []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(s.held)
	for name, a := range upserts {
		r := &waypointapi.ServiceRoutes{}
		if err := a.UnmarshalTo(r); err != nil {
			return err
		}
		if r.GetServiceKey() == "bad" {
			return errors.New("bad table")
		}
		if r.Name() != name {
			return fmt.Errorf("name %q holds %q", name, r.Name())
		}
		next[name] = r
	}
	for _, n := range removed {
		delete(next, n)
	}
	s.held = next
	s.applies++
	s.upserts += len(upserts)
	s.removals += len(removed)
	return nil
}

func (s *routesSink) Versions() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	for n, r := range s.held {
		v, err := xdsclient.Version(r)
		if err != nil {
			panic(err)
		}
		out[n] = v
	}
	return out
}

func (s *routesSink) has(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[name] != nil
}

func (s *routesSink) counts() (applies, upserts, removals int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applies, s.upserts, s.removals
}

func table(key string, port uint32) *waypointapi.ServiceRoutes {
	return &waypointapi.ServiceRoutes{ServiceKey: key, Port: port}
}

func putRoutes(t *testing.T, c *xds.Cache, rs ...*waypointapi.ServiceRoutes) {
	t.Helper()
	m := map[string]proto.Message{}
	for _, r := range rs {
		m[r.Name()] = r
	}
	if err := c.Update(xds.TypeServiceRoutes, m, nil); err != nil {
		t.Fatal(err)
	}
}

// runExtraClient runs a client with extra subscriptions; it returns the
// client and a stop function.
func runExtraClient(t *testing.T, addr string, store *state.Store, m xdsclient.Metrics, extra ...xdsclient.Extra) (*xdsclient.Client, func()) {
	t.Helper()
	return runClientWith(t, addr, store, m, extra)
}

func TestClient_ExtraTypeReachesItsSink(t *testing.T) {
	s := newServer(t)
	put(t, s.cache, wl("w1", 1))
	putRoutes(t, s.cache, table("shop/reviews", 0), table("shop/ratings", 9080))
	store := state.NewStore()
	sink := newRoutesSink()
	c, _ := runExtraClient(t, s.addr, store, nil, xdsclient.Extra{TypeURL: waypointapi.TypeURL, Sink: sink})
	waitSynced(t, c)
	if !sink.has("shop/reviews") || !sink.has("shop/ratings:9080") || store.Current().Workload("w1") == nil {
		t.Fatalf("after sync: sink %v, store %+v", sink.Versions(), store.Current().Snapshot())
	}

	putRoutes(t, s.cache, table("shop/frontend", 0))
	if err := s.cache.Update(xds.TypeServiceRoutes, nil, []string{"shop/reviews"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delta to the sink", func() bool { return sink.has("shop/frontend") && !sink.has("shop/reviews") })
	if sink.has("shop/ratings:9080") == false {
		t.Fatal("unchanged table lost")
	}
}

// refusingSink NACKs everything.
type refusingSink struct{}

func (refusingSink) Apply(map[string]*anypb.Any, []string) error { return errors.New("refused") }
func (refusingSink) Versions() map[string]string                 { return nil }

func TestClient_NotSyncedUntilEveryExtraTypeApplied(t *testing.T) {
	s := newServer(t)
	m := &counter{}
	c, _ := runExtraClient(t, s.addr, state.NewStore(), m,
		xdsclient.Extra{TypeURL: waypointapi.TypeURL, Sink: newRoutesSink()},
		xdsclient.Extra{TypeURL: waypointapi.PolicyTypeURL, Sink: refusingSink{}})
	eventually(t, "the refused first response", func() bool { r, _, _, n := m.snapshot(); return r == 4 && n == 1 })
	if c.Synced() {
		t.Fatal("Synced although one subscribed type was never applied")
	}

	s2 := newServer(t)
	c2, _ := runExtraClient(t, s2.addr, state.NewStore(), nil,
		xdsclient.Extra{TypeURL: waypointapi.TypeURL, Sink: newRoutesSink()},
		xdsclient.Extra{TypeURL: waypointapi.PolicyTypeURL, Sink: newRoutesSink()})
	waitSynced(t, c2)
}

func TestClient_SinkErrorIsNackedAndStateKept(t *testing.T) {
	s := newServer(t)
	putRoutes(t, s.cache, table("shop/reviews", 0))
	store := state.NewStore()
	m := &counter{}
	sink := newRoutesSink()
	c, _ := runExtraClient(t, s.addr, store, m, xdsclient.Extra{TypeURL: waypointapi.TypeURL, Sink: sink})
	waitSynced(t, c)

	putRoutes(t, s.cache, table("bad", 0), table("shop/ratings", 0))
	eventually(t, "NACK", func() bool { _, _, _, n := m.snapshot(); return n == 1 })
	if sink.has("shop/ratings") || !sink.has("shop/reviews") {
		t.Fatalf("sink after a rejected push: %v; want it unchanged", sink.Versions())
	}
	putRoutes(t, s.cache, table("shop/frontend", 0)) // the stream survives the NACK
	eventually(t, "next push", func() bool { return sink.has("shop/frontend") })
	if _, _, _, n := m.snapshot(); n != 1 {
		t.Fatalf("%d NACKs, want 1", n)
	}
}

func TestClient_ExtraTypeResumesWithSinkVersions(t *testing.T) {
	s := newServer(t)
	putRoutes(t, s.cache, table("shop/reviews", 0), table("shop/ratings", 0))
	store := state.NewStore()
	sink := newRoutesSink()
	c, stop := runExtraClient(t, s.addr, store, nil, xdsclient.Extra{TypeURL: waypointapi.TypeURL, Sink: sink})
	waitSynced(t, c)
	stop()
	_, before, _ := sink.counts()

	// While the client is down: one new table, one removed.
	putRoutes(t, s.cache, table("shop/frontend", 0))
	if err := s.cache.Update(xds.TypeServiceRoutes, nil, []string{"shop/ratings"}); err != nil {
		t.Fatal(err)
	}
	c2, _ := runExtraClient(t, s.addr, store, nil, xdsclient.Extra{TypeURL: waypointapi.TypeURL, Sink: sink})
	waitSynced(t, c2)
	_, after, removed := sink.counts()
	if after-before != 1 || removed != 1 {
		t.Fatalf("resume sent %d tables and %d removals; want 1 (frontend) and 1 (ratings)", after-before, removed)
	}
	if !sink.has("shop/reviews") || !sink.has("shop/frontend") || sink.has("shop/ratings") {
		t.Fatalf("sink after resume: %v", sink.Versions())
	}
}

func TestNew_RefusesBadExtras(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []xdsclient.Extra
	}{
		{"no type", []xdsclient.Extra{{Sink: newRoutesSink()}}},
		{"no sink", []xdsclient.Extra{{TypeURL: waypointapi.TypeURL}}},
		{"the store's type", []xdsclient.Extra{{TypeURL: xdsclient.TypeAddress, Sink: newRoutesSink()}}},
		{"twice", []xdsclient.Extra{{TypeURL: waypointapi.TypeURL, Sink: newRoutesSink()}, {TypeURL: waypointapi.TypeURL, Sink: newRoutesSink()}}},
	} {
		if _, err := xdsclient.New(xdsclient.Config{Target: "x:1", Store: state.NewStore(), Extra: tc.extra}); err == nil {
			t.Errorf("%s: New accepted %+v", tc.name, tc.extra)
		}
	}
}
