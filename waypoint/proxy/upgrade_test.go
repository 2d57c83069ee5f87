package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/netns"
)

// TestWaypoint_UpgradeCarriesTheSwitchedProtocol: a request asking to
// upgrade (as a WebSocket handshake does) is routed like any other, the
// backend's 101 reaches the client, and bytes then flow both ways for as
// long as the connection lives, past the route's request timeout.
func TestWaypoint_UpgradeCarriesTheSwitchedProtocol(t *testing.T) {
	m := newTestMesh(t)
	m.setL7(t, serverRoute(toV1+"    timeouts: {request: 0.2s}\n"))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := netns.DialTCP(ctx, m.client.Path, serverVIP+":80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(c, "GET /upgrade HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", serverHost)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "echo" || resp.Header.Get("X-Served-By") != "v1" {
		t.Fatalf("handshake answered %d, Upgrade %q, served by %q; want 101 echo from v1 (the route)", resp.StatusCode, resp.Header.Get("Upgrade"), resp.Header.Get("X-Served-By"))
	}
	for i, msg := range []string{"hello\n", "through the waypoint\n"} {
		if i == 1 {
			time.Sleep(300 * time.Millisecond) // past the route's 200 ms request timeout
		}
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if want := upper(msg); got != want {
			t.Fatalf("message %d: got %q, want %q", i, got, want)
		}
	}
	c.Close()
	findFlow(t, m.wpLog, map[string]any{"reporter": "waypoint", "method": "GET", "path": "/upgrade",
		"response_code": 101, "src.identity": id("client"), "bytes_sent": 27.0, "bytes_received": 27.0})

	// Without Upgrade the same path is an ordinary request.
	if r := do(t, m.httpClient(t, false), "GET", "/upgrade", nil); r.code != http.StatusBadRequest {
		t.Fatalf("plain GET /upgrade = %d, want the backend's 400", r.code)
	}
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}
