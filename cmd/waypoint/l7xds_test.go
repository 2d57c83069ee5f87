package main

import (
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

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

const denyAdmin = `{"targetRefs":[{"kind":"Gateway","group":"gateway.networking.k8s.io","name":"waypoint"}],"action":"DENY","rules":[{"to":[{"operation":{"paths":["/admin"]}}]}]}`

func sinks(l *l7XDS) (routesSink, policiesSink) {
	x := l.Extra()
	return x[0].Sink.(routesSink), x[1].Sink.(policiesSink)
}

func TestL7XDS_InForceOnlyOnceBothTypesArrived(t *testing.T) {
	l := newL7XDS(slog.New(slog.DiscardHandler))
	rec := &recorder{}
	l.attach(rec)
	rs, ps := sinks(l)
	if err := rs.Apply(anys(t, routes("shop/reviews")), nil); err != nil {
		t.Fatal(err)
	}
	if len(rec.got) != 0 {
		t.Fatal("configuration put in force before the policies arrived")
	}
	if err := ps.Apply(anys(t, policy("deny-admin", denyAdmin)), nil); err != nil {
		t.Fatal(err)
	}
	c := rec.last()
	if c == nil || len(c.Source().Routes) != 1 || len(c.Source().Policies) != 1 {
		t.Fatalf("in force: %+v", rec.got)
	}
	// A proxy attached later gets the current configuration at once.
	late := &recorder{}
	l.attach(late)
	if late.last() != c {
		t.Fatal("a proxy attached late did not get the current configuration")
	}
}

func TestL7XDS_BadPushIsRefusedAndLastGoodKept(t *testing.T) {
	bad := routes("shop/ratings")
	bad.Matches = []*waypointapi.RouteMatch{{Rule: 7}} // no such rule
	for _, tc := range []struct {
		name  string
		apply func(rs routesSink, ps policiesSink) error
		want  string
	}{
		{"route that does not compile", func(rs routesSink, _ policiesSink) error {
			return rs.Apply(anys(t, bad, routes("shop/frontend")), nil)
		}, "rule 7 does not exist"},
		{"route under another name", func(rs routesSink, _ policiesSink) error {
			a := anys(t, routes("shop/frontend"))
			return rs.Apply(map[string]*anypb.Any{"shop/other": a["shop/frontend"]}, nil)
		}, `"shop/other"`},
		{"policy with an unknown field", func(_ routesSink, ps policiesSink) error {
			return ps.Apply(anys(t, policy("odd", `{"action":"DENY","frobnicate":true}`)), nil)
		}, "frobnicate"},
		{"policy that does not compile", func(_ routesSink, ps policiesSink) error {
			return ps.Apply(anys(t, policy("odd", `{"action":"NOPE"}`)), []string{"deny-admin"})
		}, "odd"},
		{"not a route at all", func(rs routesSink, _ policiesSink) error {
			return rs.Apply(anys(t, policy("x", "{}")), nil)
		}, "routes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newL7XDS(slog.New(slog.DiscardHandler))
			rec := &recorder{}
			l.attach(rec)
			rs, ps := sinks(l)
			if err := rs.Apply(anys(t, routes("shop/reviews")), nil); err != nil {
				t.Fatal(err)
			}
			if err := ps.Apply(anys(t, policy("deny-admin", denyAdmin)), nil); err != nil {
				t.Fatal(err)
			}
			good := rec.last()
			versions := []map[string]string{rs.Versions(), ps.Versions()}

			err := tc.apply(rs, ps)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Apply = %v, want an error mentioning %s", err, tc.want)
			}
			if rec.last() != good {
				t.Fatal("a refused push changed the configuration in force")
			}
			if got := []map[string]string{rs.Versions(), ps.Versions()}; len(got[0]) != len(versions[0]) || len(got[1]) != len(versions[1]) {
				t.Fatalf("versions after a refused push: %v, want %v", got, versions)
			}
			if l.Rejected() == nil {
				t.Fatal("Rejected() is nil after a refused push")
			}
			// The next good push applies and clears the error.
			if err := rs.Apply(anys(t, routes("shop/frontend")), []string{"shop/reviews"}); err != nil {
				t.Fatal(err)
			}
			if err := ps.Apply(nil, nil); err != nil {
				t.Fatal(err)
			}
			if l.Rejected() != nil {
				t.Fatalf("Rejected() = %v after good pushes", l.Rejected())
			}
			src := rec.last().Source()
			if len(src.Routes) != 1 || src.Routes[0].GetServiceKey() != "shop/frontend" || len(src.Policies) != 1 {
				t.Fatalf("in force after the good push: %+v", src)
			}
		})
	}
}

func TestL7XDS_VersionsMatchTheServers(t *testing.T) {
	l := newL7XDS(slog.New(slog.DiscardHandler))
	rs, ps := sinks(l)
	r, p := routes("shop/reviews"), policy("deny-admin", denyAdmin)
	if err := rs.Apply(anys(t, r), nil); err != nil {
		t.Fatal(err)
	}
	if err := ps.Apply(anys(t, p), nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		got  map[string]string
		name string
		m    proto.Message
	}{{rs.Versions(), "shop/reviews", r}, {ps.Versions(), "shop/deny-admin", p}} {
		want, err := xds.Version(tc.m)
		if err != nil {
			t.Fatal(err)
		}
		if tc.got[tc.name] != want {
			t.Errorf("version of %s: %q, server computes %q", tc.name, tc.got[tc.name], want)
		}
	}
}
