package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/waypoint/h1client"
)

func TestSettingsOf_TakesThePoolsTimeoutsElseTheDefaults(t *testing.T) {
	def := connSettings{connect: 10 * time.Second, idle: 90 * time.Second}
	for _, tc := range []struct {
		name string
		pool *waypointapi.ConnectionPool
		want connSettings
	}{
		{"no pool", nil, def},
		{"pool without timeouts", &waypointapi.ConnectionPool{MaxConnections: 3}, def},
		{"connectTimeout", &waypointapi.ConnectionPool{ConnectTimeout: durationpb.New(300 * time.Millisecond)},
			connSettings{connect: 300 * time.Millisecond, idle: 90 * time.Second}},
		{"idleTimeout", &waypointapi.ConnectionPool{IdleTimeout: durationpb.New(time.Hour)},
			connSettings{connect: 10 * time.Second, idle: time.Hour}},
		{"idleTimeout 0 disables it", &waypointapi.ConnectionPool{IdleTimeout: durationpb.New(0)},
			connSettings{connect: 10 * time.Second, idle: 0}},
		{"both", &waypointapi.ConnectionPool{ConnectTimeout: durationpb.New(time.Second), IdleTimeout: durationpb.New(time.Minute)},
			connSettings{connect: time.Second, idle: time.Minute}},
	} {
		if got := settingsOf(tc.pool, def); got != tc.want {
			t.Errorf("%s: settingsOf = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestCompile_RefusesConnectionTimeoutsOutOfRange(t *testing.T) {
	pol := func(cp *waypointapi.ConnectionPool) *waypointapi.ServiceResilience {
		return &waypointapi.ServiceResilience{ServiceKey: reviews, TrafficPolicy: &waypointapi.TrafficPolicy{ConnectionPool: cp}}
	}
	for _, tc := range []struct {
		cp   *waypointapi.ConnectionPool
		want string // "" accepted
	}{
		{&waypointapi.ConnectionPool{ConnectTimeout: durationpb.New(time.Millisecond), IdleTimeout: durationpb.New(0)}, ""},
		{&waypointapi.ConnectionPool{ConnectTimeout: durationpb.New(0)}, "connect_timeout 0s is out of range"},
		{&waypointapi.ConnectionPool{ConnectTimeout: durationpb.New(-time.Second)}, "connect_timeout -1s is out of range"},
		{&waypointapi.ConnectionPool{IdleTimeout: durationpb.New(-time.Second)}, "idle_timeout -1s is out of range"},
	} {
		_, errs := Compile(L7Config{Resilience: []*waypointapi.ServiceResilience{pol(tc.cp)}})
		switch {
		case tc.want == "" && len(errs) != 0:
			t.Errorf("%v refused: %v", tc.cp, errs)
		case tc.want != "" && (len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want)):
			t.Errorf("%v: errors %v, want one mentioning %q", tc.cp, errs, tc.want)
		}
	}
}

func TestConnectTimedOut_OnlyTheDialsOwnDeadline(t *testing.T) {
	hboneTimeout := fmt.Errorf("hbone: TLS handshake with 10.0.0.1:15008: %w", context.DeadlineExceeded)
	refused := errors.New("connect: connection refused")
	for _, tc := range []struct {
		name                       string
		err, dialCtxErr, callerErr error
		want                       bool
	}{
		{"the connect timeout expired", fmt.Errorf("waiting: %w", context.DeadlineExceeded), context.DeadlineExceeded, nil, true},
		{"hbone's handshake timeout", hboneTimeout, nil, nil, true},
		{"refused", refused, nil, nil, false},
		{"the caller's deadline (a route timeout)", fmt.Errorf("waiting: %w", context.DeadlineExceeded), context.DeadlineExceeded, context.DeadlineExceeded, false},
		{"the caller gave up", fmt.Errorf("waiting: %w", context.Canceled), context.Canceled, context.Canceled, false},
	} {
		if got := connectTimedOut(tc.err, tc.dialCtxErr, tc.callerErr); got != tc.want {
			t.Errorf("%s: connectTimedOut = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestAttemptsFailed_EnvoysAnswers(t *testing.T) {
	for _, tc := range []struct {
		perTry, connect, retried, overflowed bool
		code                                 int
		body, flag                           string
	}{
		{false, false, false, false, 503, bodyConnFailed, "UF"},
		{false, true, false, false, 503, "upstream connect error or disconnect/reset before headers. reset reason: connection timeout", "UF"},
		{false, true, true, false, 503, "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection timeout", "URX"},
		{false, true, true, true, 503, bodyConnTimeoutRetried, "UF,UO"},
		{false, false, true, false, 503, bodyConnFailed, "URX"},
		{true, false, false, false, 504, bodyTimeout, "UT"},
		{true, false, true, false, 504, bodyTimeout, "UT"},
		{true, false, true, true, 504, bodyTimeout, "UT,UO"},
	} {
		code, body, flag := attemptsFailed(tc.perTry, tc.connect, tc.retried, tc.overflowed)
		if code != tc.code || body != tc.body || flag != tc.flag {
			t.Errorf("attemptsFailed(perTry %v, connect timeout %v, retried %v, overflowed %v) = %d %q %s; want %d %q %s",
				tc.perTry, tc.connect, tc.retried, tc.overflowed, code, body, flag, tc.code, tc.body, tc.flag)
		}
	}
}

// TestUpstreamsFor_KeepsClientsOfSettingsInUseAndRetiresTheRest: a push
// shares clients between services with equal settings, keeps those of
// unchanged settings, and retires the others.
func TestUpstreamsFor_KeepsClientsOfSettingsInUseAndRetiresTheRest(t *testing.T) {
	p := &Proxy{defConn: connSettings{connect: 10 * time.Second, idle: 90 * time.Second}}
	p.defUp = p.newUpstreams(p.defConn)
	pol := func(svc string, connect, idle time.Duration) *waypointapi.ServiceResilience {
		return &waypointapi.ServiceResilience{ServiceKey: "shop/" + svc, TrafficPolicy: &waypointapi.TrafficPolicy{
			ConnectionPool: &waypointapi.ConnectionPool{ConnectTimeout: durationpb.New(connect), IdleTimeout: durationpb.New(idle)}}}
	}
	fast := connSettings{connect: time.Second, idle: time.Minute}
	c1 := mustCompile(t, L7Config{Resilience: []*waypointapi.ServiceResilience{
		pol("a", time.Second, time.Minute), pol("b", time.Second, time.Minute), // shared
		pol("c", 10*time.Second, 90*time.Second), // the defaults' clients
	}})
	ups1, retired := p.upstreamsFor(c1, map[connSettings]*upstreams{p.defConn: p.defUp})
	if len(ups1) != 2 || ups1[p.defConn] != p.defUp || ups1[fast] == nil || len(retired) != 0 {
		t.Fatalf("first configuration: clients %v, retired %v", ups1, retired)
	}
	if a, b := p.upstreamsIn(ups1, c1.policy("shop/a")), p.upstreamsIn(ups1, c1.policy("shop/b")); a != b || a != ups1[fast] {
		t.Fatal("services with equal settings do not share their clients")
	}
	if got := p.upstreamsIn(ups1, c1.policy("shop/none")); got != p.defUp {
		t.Fatal("a service without a policy does not get the default clients")
	}
	if u := ups1[fast]; u.h1sync.IdleTimeout != time.Minute || u.h1.IdleConnTimeout != time.Minute || u.h2.IdleConnTimeout != time.Minute {
		t.Fatalf("idle timeouts of the clients: %v %v %v", u.h1sync.IdleTimeout, u.h1.IdleConnTimeout, u.h2.IdleConnTimeout)
	}

	// a keeps its settings, b changes its idle timeout to 0 (never).
	c2 := mustCompile(t, L7Config{Resilience: []*waypointapi.ServiceResilience{
		pol("a", time.Second, time.Minute), pol("b", time.Second, 0)}})
	ups2, retired := p.upstreamsFor(c2, ups1)
	never := ups2[connSettings{connect: time.Second}]
	if ups2[fast] != ups1[fast] || never == nil || len(retired) != 0 {
		t.Fatalf("second configuration: clients %v, retired %v", ups2, retired)
	}
	if never.h1sync.IdleTimeout >= 0 || never.h1.IdleConnTimeout != 0 {
		t.Fatalf("idle timeout 0: h1client %v, Transport %v; want none", never.h1sync.IdleTimeout, never.h1.IdleConnTimeout)
	}

	// Nobody uses the fast settings any more: retired, the default kept.
	ups3, retired := p.upstreamsFor(mustCompile(t, L7Config{}), ups2)
	if len(ups3) != 1 || ups3[p.defConn] != p.defUp || len(retired) != 2 {
		t.Fatalf("empty configuration: clients %v, retired %v", ups3, retired)
	}
}

// TestUpstreams_RetiredClientsCloseWhenTheLastRequestEnds: a connection
// carrying a request when its clients are retired is closed once that
// request, the last, has ended.
func TestUpstreams_RetiredClientsCloseWhenTheLastRequestEnds(t *testing.T) {
	closed := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			close(closed)
		}
	}
	srv.Start()
	defer srv.Close()
	var d net.Dialer
	u := &upstreams{h1: &http.Transport{}, h2: &http.Transport{},
		h1sync: &h1client.Client{Dial: func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }}}

	u.acquire()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	resp, err := u.h1sync.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	u.retire() // the connection is in use: it stays
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the connection is idle in the retired pool
	select {
	case <-closed:
		t.Fatal("a connection in use was closed by retire")
	default:
	}
	u.release()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection of retired clients was not closed when their last request ended")
	}
}

// TestOwnClients_LiveAndRetireWithTheConnectionPool: a cluster with
// maxConnections has clients of its own, with its connection settings,
// kept while its connection pool is and retired when the pool changes or
// the cluster goes; a cluster without a limit shares the clients of its
// settings.
func TestOwnClients_LiveAndRetireWithTheConnectionPool(t *testing.T) {
	p := &Proxy{defConn: connSettings{connect: 10 * time.Second, idle: 90 * time.Second}}
	p.defUp = p.newUpstreams(p.defConn)
	now := func() time.Time { return time.Time{} }
	p.now = now
	live := func(string) bool { return true }
	pol := func(maxConns uint32) *waypointapi.ServiceResilience {
		return &waypointapi.ServiceResilience{ServiceKey: reviews, TrafficPolicy: &waypointapi.TrafficPolicy{
			ConnectionPool: &waypointapi.ConnectionPool{MaxConnections: maxConns, IdleTimeout: durationpb.New(time.Minute)}}}
	}
	k := destKey{svc: reviews, port: 9080}
	setL7 := func(old *resTable, c *Compiled) (*resTable, []*upstreams) { return p.nextTable(old, c, live) }

	c1 := mustCompile(t, L7Config{Resilience: []*waypointapi.ServiceResilience{pol(1)}})
	t1, _ := setL7(&resTable{ups: map[connSettings]*upstreams{p.defConn: p.defUp}}, c1)
	cl := newCluster(c1.policy(reviews), now, p.upstreamsIn(t1.ups, c1.policy(reviews)))
	p.ownClients(cl)
	t1.clusters = map[destKey]*cluster{k: cl}
	own := cl.upstreams(p.defUp)
	if own == nil || own != cl.pool.own || own == t1.ups[settingsOf(cl.pool.src, p.defConn)] || own.h2.IdleConnTimeout != time.Minute {
		t.Fatalf("a cluster with maxConnections: clients %p (own %p), want its own with the policy's idle timeout", own, cl.pool.own)
	}

	t2, retired := setL7(t1, mustCompile(t, L7Config{Resilience: []*waypointapi.ServiceResilience{pol(1)}}))
	if t2.clusters[k].upstreams(p.defUp) != own || slices.Contains(retired, own) {
		t.Fatal("an unchanged connection pool did not keep its own clients")
	}
	t3, retired := setL7(t2, mustCompile(t, L7Config{Resilience: []*waypointapi.ServiceResilience{pol(2)}}))
	own3 := t3.clusters[k].upstreams(p.defUp)
	if own3 == own || own3 != t3.clusters[k].pool.own || !slices.Contains(retired, own) {
		t.Fatal("a changed connection pool did not get new clients and retire the old ones")
	}
	t4, retired := setL7(t3, mustCompile(t, L7Config{Resilience: []*waypointapi.ServiceResilience{pol(0)}}))
	if got := t4.clusters[k].upstreams(p.defUp); got != t4.ups[settingsOf(pol(0).TrafficPolicy.ConnectionPool, p.defConn)] || !slices.Contains(retired, own3) {
		t.Fatal("without maxConnections the cluster does not share its settings' clients, or its own were not retired")
	}
	if _, retired := setL7(t3, mustCompile(t, L7Config{})); !slices.Contains(retired, own3) {
		t.Fatal("own clients of a cluster whose limit is gone were not retired")
	}
}
