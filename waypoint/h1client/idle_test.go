package h1client

import (
	"testing"
	"time"
)

// TestIdleTimeout_CountsFromTheLastUse: the idle timer armed when the
// connection was first pooled keeps running while it is reused; when it
// fires on a connection idle for less than IdleTimeout it waits for the
// rest, so the connection closes IdleTimeout after its last use, neither
// at the first deadline nor never.
func TestIdleTimeout_CountsFromTheLastUse(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, d := newClient(t)
	// Generous times: a stall of the machine up to 600 ms between the
	// two requests still leaves the connection pooled for the second.
	c.IdleTimeout = time.Second
	get(t, c, s.url) // pooled at t0: the timer fires at t0+1s
	time.Sleep(400 * time.Millisecond)
	get(t, c, s.url) // pooled again at about t0+400ms
	last := time.Now()
	s.waitClosed(t, 1)
	if took := time.Since(last); took < 900*time.Millisecond {
		t.Errorf("closed %v after its last use, want IdleTimeout (1s)", took)
	}
	if d.dials() != 1 {
		t.Errorf("dials = %d, want 1", d.dials())
	}
	c.mu.Lock()
	n := len(c.hosts)
	c.mu.Unlock()
	if n != 0 {
		t.Errorf("%d addresses left in the pool, want none", n)
	}
}

// TestPutIdle_LeavesARunningTimerAlone: taking and pooling a connection
// again touches no timer while its idle timer runs.
func TestPutIdle_LeavesARunningTimerAlone(t *testing.T) {
	s := newTestServer(t, echoPath)
	c, _ := newClient(t)
	c.IdleTimeout = time.Hour
	get(t, c, s.url)
	pc := onlyIdle(t, c)
	timer := pc.idleTimer
	for range 10 {
		get(t, c, s.url)
	}
	if pc2 := onlyIdle(t, c); pc2 != pc || pc2.idleTimer != timer || !pc2.timerOn {
		t.Fatalf("the connection or its running timer changed")
	}
}

func onlyIdle(t *testing.T, c *Client) *conn {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var idle []*conn
	for _, h := range c.hosts {
		idle = append(idle, h.idle...)
	}
	if len(idle) != 1 {
		t.Fatalf("%d idle connections, want 1", len(idle))
	}
	return idle[0]
}
