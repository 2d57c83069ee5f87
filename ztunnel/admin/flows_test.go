package admin_test

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/ztunnel/admin"
)

func flowAt(i int) telemetry.Flow {
	return telemetry.Flow{
		Start: time.Date(2026, 11, 25, 12, 0, i, 0, time.UTC), Reporter: "destination",
		Src:      telemetry.Peer{Workload: "frontend-1", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/frontend"},
		Dst:      telemetry.Peer{Workload: "reviews-1", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/reviews"},
		Decision: telemetry.Allow, BytesSent: int64(i),
	}
}

var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// serveFlows runs a real admin Server with a feed on a loopback listener.
func serveFlows(t *testing.T, feed *telemetry.Feed) (base string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := admin.New(admin.Config{Admin: ln, Source: &fakeSource{view: emptyView(t)}, Flows: feed})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return "http://" + ln.Addr().String(), stop
}

func TestDebugFlows_RecentRecordsAsTheFlowLogWritesThem(t *testing.T) {
	feed := telemetry.NewFeed(3)
	var logged bytes.Buffer
	log := telemetry.NewFlowLogFeed(&logged, feed)
	for i := range 5 {
		log.Record(flowAt(i))
	}
	base, _ := serveFlows(t, feed)
	for _, tc := range []struct{ query, want string }{
		{"", strings.Join(strings.Split(logged.String(), "\n")[2:5], "\n") + "\n"}, // the last 3 kept
		{"?history=1", strings.Split(logged.String(), "\n")[4] + "\n"},
		{"?history=0", ""},
	} {
		resp, err := noKeepAlive.Get(base + "/debug/flows" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		body.ReadFrom(resp.Body)
		resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
			t.Errorf("Content-Type %q", ct)
		}
		if n := resp.Header.Get(admin.FlowHistoryHeader); n != strconv.Itoa(strings.Count(tc.want, "\n")) {
			t.Errorf("GET /debug/flows%s: %s %q, want the number of lines", tc.query, admin.FlowHistoryHeader, n)
		}
		if body.String() != tc.want {
			t.Errorf("GET /debug/flows%s:\n%s\nwant\n%s", tc.query, body.String(), tc.want)
		}
	}
	resp, err := noKeepAlive.Get(base + "/debug/flows?history=x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("history=x: %d, want 400", resp.StatusCode)
	}
}

func TestDebugFlows_FollowGetsLiveRecordsAndEndsAtShutdown(t *testing.T) {
	feed := telemetry.NewFeed(10)
	log := telemetry.NewFlowLogFeed(&bytes.Buffer{}, feed)
	log.Record(flowAt(1))
	base, stop := serveFlows(t, feed)
	resp, err := noKeepAlive.Get(base + "/debug/flows?follow=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() || !strings.Contains(sc.Text(), `"bytes_sent":1`) {
		t.Fatalf("first line %q, want the recorded flow", sc.Text())
	}
	for deadline := time.Now().Add(5 * time.Second); feed.Subscribers() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no subscriber")
		}
		time.Sleep(5 * time.Millisecond)
	}
	log.Record(flowAt(2))
	if !sc.Scan() || !strings.Contains(sc.Text(), `"bytes_sent":2`) {
		t.Fatalf("live line %q, want the flow recorded after connecting", sc.Text())
	}
	stop() // must not wait for the stream; goleak checks its goroutines end
	if sc.Scan() {
		t.Errorf("stream went on after shutdown: %q", sc.Text())
	}
	if feed.Subscribers() != 0 {
		t.Errorf("%d subscribers left after shutdown", feed.Subscribers())
	}
}

func TestDebugFlows_NotServedWithoutAFeed(t *testing.T) {
	if rec := get(t, admin.AdminHandler(&fakeSource{view: emptyView(t)}), "/debug/flows"); rec.Code != http.StatusNotFound {
		t.Errorf("/debug/flows without a feed: %d, want 404", rec.Code)
	}
}

func TestDebugFlows_FollowersAreBounded(t *testing.T) {
	feed := telemetry.NewFeed(10)
	for range admin.MaxFlowFollowers {
		defer feed.Subscribe(0).Close()
	}
	rec := get(t, admin.FlowsHandler(feed, nil), "/debug/flows?follow=1")
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("follower beyond the limit: %d, want 503", rec.Code)
	}
	if rec := get(t, admin.FlowsHandler(feed, nil), "/debug/flows"); rec.Code != http.StatusOK {
		t.Errorf("a non-following read at the limit: %d, want 200", rec.Code)
	}
}
