package main

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ambientmesh/ambient/istiod-lite/xds"
	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/waypoint/proxy"
)

// recorder is an l7Setter that keeps what it was given.
type recorder struct{ got []*proxy.Compiled }

func (r *recorder) SetL7(c *proxy.Compiled) { r.got = append(r.got, c) }

func (r *recorder) last() *proxy.Compiled {
	if len(r.got) == 0 {
		return nil
	}
	return r.got[len(r.got)-1]
}

func anys(t *testing.T, ms ...proto.Message) map[string]*anypb.Any {
	t.Helper()
	out := map[string]*anypb.Any{}
	for _, m := range ms {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		var name string
		switch x := m.(type) {
		case *waypointapi.ServiceRoutes:
			name = x.Name()
		case *waypointapi.AuthorizationPolicy:
			name = x.Key()
		case *waypointapi.ServiceResilience:
			name = x.Name()
		}
		out[name] = a
	}
	return out
}

func routes(key string) *waypointapi.ServiceRoutes {
	return &waypointapi.ServiceRoutes{ServiceKey: key,
		Rules:   []*waypointapi.RouteRule{{Route: "shop/r"}},
		Matches: []*waypointapi.RouteMatch{{Rule: 0}}}
}

func policy(name, spec string) *waypointapi.AuthorizationPolicy {
	return &waypointapi.AuthorizationPolicy{Namespace: "shop", Name: name, SpecJson: []byte(spec)}
}

func resil(key string, rps uint32) *waypointapi.ServiceResilience {
	return &waypointapi.ServiceResilience{ServiceKey: key, LocalPolicy: &waypointapi.LocalTrafficPolicy{
		RateLimit: &waypointapi.RateLimit{RequestsPerUnit: rps, Unit: durationpb.New(time.Second)}}}
}

const denyAdmin = `{"targetRefs":[{"kind":"Gateway","group":"gateway.networking.k8s.io","name":"waypoint"}],"action":"DENY","rules":[{"to":[{"operation":{"paths":["/admin"]}}]}]}`

type sinkSet struct {
	rs routesSink
	ps policiesSink
	xs resilienceSink
}

func sinks(l *l7XDS) sinkSet {
	x := l.Extra()
	return sinkSet{x[0].Sink.(routesSink), x[1].Sink.(policiesSink), x[2].Sink.(resilienceSink)}
}

func TestL7XDS_InForceOnlyOnceAllThreeTypesArrived(t *testing.T) {
	l := newL7XDS(slog.New(slog.DiscardHandler))
	rec := &recorder{}
	l.attach(rec)
	s := sinks(l)
	if err := s.rs.Apply(anys(t, routes("shop/reviews")), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.xs.Apply(anys(t, resil("shop/reviews.shop.svc.cluster.local", 100)), nil); err != nil {
		t.Fatal(err)
	}
	if len(rec.got) != 0 {
		t.Fatal("configuration put in force before the policies arrived")
	}
	if err := s.ps.Apply(anys(t, policy("deny-admin", denyAdmin)), nil); err != nil {
		t.Fatal(err)
	}
	c := rec.last()
	if c == nil || len(c.Source().Routes) != 1 || len(c.Source().Policies) != 1 || len(c.Source().Resilience) != 1 {
		t.Fatalf("in force: %+v", rec.got)
	}
	// A resilience push changes only that part.
	if err := s.xs.Apply(nil, []string{"shop/reviews.shop.svc.cluster.local"}); err != nil {
		t.Fatal(err)
	}
	c = rec.last()
	if src := c.Source(); len(src.Routes) != 1 || len(src.Policies) != 1 || len(src.Resilience) != 0 {
		t.Fatalf("after the resilience policy was removed: %+v", src)
	}
	// A proxy attached later gets the current configuration at once.
	late := &recorder{}
	l.attach(late)
	if late.last() != c {
		t.Fatal("a proxy attached late did not get the current configuration")
	}
}

// TestL7XDS_EmptyResilienceTypeDoesNotHoldBackTheConfiguration: a cluster
// without DestinationRules or LocalTrafficPolicies has no ServiceResilience
// resources; istiod-lite still answers the subscription, with an empty
// response, and that completes the configuration.
func TestL7XDS_EmptyResilienceTypeDoesNotHoldBackTheConfiguration(t *testing.T) {
	l := newL7XDS(slog.New(slog.DiscardHandler))
	rec := &recorder{}
	l.attach(rec)
	s := sinks(l)
	if err := s.rs.Apply(anys(t, routes("shop/reviews")), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.ps.Apply(map[string]*anypb.Any{}, nil); err != nil {
		t.Fatal(err)
	}
	if len(rec.got) != 0 {
		t.Fatal("configuration put in force before the resilience type arrived")
	}
	if err := s.xs.Apply(map[string]*anypb.Any{}, nil); err != nil {
		t.Fatal(err)
	}
	if c := rec.last(); c == nil || len(c.Source().Routes) != 1 {
		t.Fatalf("not in force after an empty resilience response: %+v", rec.got)
	}
}

func TestL7XDS_BadPushIsRefusedAndLastGoodKept(t *testing.T) {
	bad := routes("shop/ratings")
	bad.Matches = []*waypointapi.RouteMatch{{Rule: 7}} // no such rule
	for _, tc := range []struct {
		name  string
		apply func(s sinkSet) error
		want  string
	}{
		{"route that does not compile", func(s sinkSet) error {
			return s.rs.Apply(anys(t, bad, routes("shop/frontend")), nil)
		}, "rule 7 does not exist"},
		{"route under another name", func(s sinkSet) error {
			a := anys(t, routes("shop/frontend"))
			return s.rs.Apply(map[string]*anypb.Any{"shop/other": a["shop/frontend"]}, nil)
		}, `"shop/other"`},
		{"policy with an unknown field", func(s sinkSet) error {
			return s.ps.Apply(anys(t, policy("odd", `{"action":"DENY","frobnicate":true}`)), nil)
		}, "frobnicate"},
		{"policy that does not compile", func(s sinkSet) error {
			return s.ps.Apply(anys(t, policy("odd", `{"action":"NOPE"}`)), []string{"deny-admin"})
		}, "odd"},
		{"not a route at all", func(s sinkSet) error {
			return s.rs.Apply(anys(t, policy("x", "{}")), nil)
		}, "routes"},
		{"resilience policy that does not compile", func(s sinkSet) error {
			return s.xs.Apply(anys(t, resil("shop/ratings.shop.svc.cluster.local", 0)), nil)
		}, "admits nothing"},
		{"resilience policy under another name", func(s sinkSet) error {
			a := anys(t, resil("shop/ratings.shop.svc.cluster.local", 5))
			return s.xs.Apply(map[string]*anypb.Any{"shop/x": a["shop/ratings.shop.svc.cluster.local"]}, nil)
		}, `"shop/x"`},
		{"not a resilience policy at all", func(s sinkSet) error {
			return s.xs.Apply(anys(t, routes("shop/frontend")), nil)
		}, "resilience policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newL7XDS(slog.New(slog.DiscardHandler))
			rec := &recorder{}
			l.attach(rec)
			s := sinks(l)
			if err := s.rs.Apply(anys(t, routes("shop/reviews")), nil); err != nil {
				t.Fatal(err)
			}
			if err := s.ps.Apply(anys(t, policy("deny-admin", denyAdmin)), nil); err != nil {
				t.Fatal(err)
			}
			if err := s.xs.Apply(anys(t, resil("shop/reviews.shop.svc.cluster.local", 100)), nil); err != nil {
				t.Fatal(err)
			}
			good := rec.last()
			versions := func() [3]int { return [3]int{len(s.rs.Versions()), len(s.ps.Versions()), len(s.xs.Versions())} }
			before := versions()

			err := tc.apply(s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Apply = %v, want an error mentioning %s", err, tc.want)
			}
			if rec.last() != good {
				t.Fatal("a refused push changed the configuration in force")
			}
			if got := versions(); got != before {
				t.Fatalf("versions after a refused push: %v, want %v", got, before)
			}
			if l.Rejected() == nil {
				t.Fatal("Rejected() is nil after a refused push")
			}
			// The next good pushes apply and clear the error.
			if err := s.rs.Apply(anys(t, routes("shop/frontend")), []string{"shop/reviews"}); err != nil {
				t.Fatal(err)
			}
			if err := s.ps.Apply(nil, nil); err != nil {
				t.Fatal(err)
			}
			if err := s.xs.Apply(nil, nil); err != nil {
				t.Fatal(err)
			}
			if l.Rejected() != nil {
				t.Fatalf("Rejected() = %v after good pushes", l.Rejected())
			}
			src := rec.last().Source()
			if len(src.Routes) != 1 || src.Routes[0].GetServiceKey() != "shop/frontend" || len(src.Policies) != 1 || len(src.Resilience) != 1 {
				t.Fatalf("in force after the good push: %+v", src)
			}
		})
	}
}

func TestL7XDS_VersionsMatchTheServers(t *testing.T) {
	l := newL7XDS(slog.New(slog.DiscardHandler))
	s := sinks(l)
	r, p, x := routes("shop/reviews"), policy("deny-admin", denyAdmin), resil("shop/reviews.shop.svc.cluster.local", 100)
	if err := s.rs.Apply(anys(t, r), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.ps.Apply(anys(t, p), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.xs.Apply(anys(t, x), nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		got  map[string]string
		name string
		m    proto.Message
	}{{s.rs.Versions(), "shop/reviews", r}, {s.ps.Versions(), "shop/deny-admin", p}, {s.xs.Versions(), x.Name(), x}} {
		want, err := xds.Version(tc.m)
		if err != nil {
			t.Fatal(err)
		}
		if tc.got[tc.name] != want {
			t.Errorf("version of %s: %q, server computes %q", tc.name, tc.got[tc.name], want)
		}
	}
}
