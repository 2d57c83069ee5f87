package xds

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// typeState is one stream's subscription to one resource type. It is owned
// by the stream loop.
type typeState struct {
	wildcard bool
	names    map[string]bool   // explicit subscriptions
	sent     map[string]string // name → version the client holds
	inflight string            // nonce of the unanswered response, or ""
	sentAt   time.Time         // when inflight was queued
}

func (t *typeState) wants(name string) bool { return t.wildcard || t.names[name] }

// conn is the server side of one stream.
type conn struct {
	srv   *Server
	id    uint64
	node  string
	sendq chan outgoing
	nonce uint64
	types map[string]*typeState // owned by loop

	signal chan struct{} // buffered 1: pending changed

	// mu guards the fields below, written by the cache's watcher calls.
	mu       sync.Mutex
	watching map[string]bool                // types subscribed
	pending  map[string]map[string]struct{} // type → changed names
	since    map[string]time.Time           // type → first pending change
	npending int
	overflow bool
	first    time.Time // first change since the last flush
	last     time.Time // latest change
}

func newConn(s *Server, id uint64) *conn {
	return &conn{
		srv:      s,
		id:       id,
		sendq:    make(chan outgoing, maxTypes),
		types:    make(map[string]*typeState),
		signal:   make(chan struct{}, 1),
		watching: make(map[string]bool),
		pending:  make(map[string]map[string]struct{}),
		since:    make(map[string]time.Time),
	}
}

// changed implements watcher. It never blocks.
func (c *conn) changed(typeURL string, names []string) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.watching[typeURL] {
		return
	}
	c.addPendingLocked(typeURL, names, now)
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

func (c *conn) addPendingLocked(typeURL string, names []string, now time.Time) {
	p := c.pending[typeURL]
	if p == nil {
		p = make(map[string]struct{}, len(names))
		c.pending[typeURL] = p
		c.since[typeURL] = now
	}
	for _, n := range names {
		if _, ok := p[n]; !ok {
			p[n] = struct{}{}
			c.npending++
		}
	}
	if c.npending > c.srv.cfg.MaxPending {
		c.overflow = true
	}
	if c.first.IsZero() {
		c.first = now
	}
	c.last = now
}

// takePending removes and returns the pending names of one type.
func (c *conn) takePending(typeURL string) (map[string]struct{}, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, since := c.pending[typeURL], c.since[typeURL]
	delete(c.pending, typeURL)
	delete(c.since, typeURL)
	c.npending -= len(p)
	return p, since
}

// loop is the stream's state machine: requests, debounced pushes and ACK
// deadlines. It returns the stream's final status.
func (c *conn) loop(ctx context.Context, reqs <-chan *discovery.DeltaDiscoveryRequest, recvErr, sendErr <-chan error) error {
	cfg := &c.srv.cfg
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	armed := false // debounce timer running
	ackTimer := time.NewTimer(time.Hour)
	ackTimer.Stop()
	defer ackTimer.Stop()
	ackArmed := false

	armAck := func() {
		if !ackArmed {
			ackTimer.Reset(cfg.AckTimeout)
			ackArmed = true
		}
	}

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			if isEOF(err) {
				return nil
			}
			return err
		case err := <-sendErr:
			return err
		case req := <-reqs:
			if err := c.handle(req, !armed); err != nil {
				return err
			}
		case <-c.signal:
			c.mu.Lock()
			overflow, first, last := c.overflow, c.first, c.last
			c.mu.Unlock()
			if overflow {
				c.srv.metrics.Drop("queue_full")
				return status.Errorf(codes.ResourceExhausted, "xds: stream %d: more than %d changes pending; the client is too slow", c.id, cfg.MaxPending)
			}
			if first.IsZero() {
				continue
			}
			deadline := debounceDeadline(first, last, cfg)
			debounce.Reset(time.Until(deadline))
			armed = true
		case <-debounce.C:
			armed = false
			c.mu.Lock()
			first, last := c.first, c.last
			deadline := debounceDeadline(first, last, cfg)
			if wait := time.Until(deadline); wait > 0 && !first.IsZero() {
				c.mu.Unlock()
				debounce.Reset(wait)
				armed = true
				continue
			}
			c.first, c.last = time.Time{}, time.Time{}
			c.mu.Unlock()
			for _, t := range slices.Sorted(maps.Keys(c.types)) {
				c.flush(t)
			}
		case <-ackTimer.C:
			ackArmed = false
			var oldest time.Time
			for t, ts := range c.types {
				if ts.inflight == "" {
					continue
				}
				if time.Since(ts.sentAt) >= cfg.AckTimeout {
					c.srv.metrics.Drop("ack_timeout")
					return status.Errorf(codes.DeadlineExceeded, "xds: stream %d: no ACK for %s nonce %s within %v", c.id, t, ts.inflight, cfg.AckTimeout)
				}
				if oldest.IsZero() || ts.sentAt.Before(oldest) {
					oldest = ts.sentAt
				}
			}
			if !oldest.IsZero() {
				ackTimer.Reset(time.Until(oldest.Add(cfg.AckTimeout)))
				ackArmed = true
			}
		}
		for _, ts := range c.types {
			if ts.inflight != "" {
				armAck()
				break
			}
		}
	}
}

// handle processes one request. flushNow says no debounce is running, so
// changes that waited for an ACK go out at once.
func (c *conn) handle(req *discovery.DeltaDiscoveryRequest, flushNow bool) error {
	t := req.GetTypeUrl()
	if c.node == "" {
		c.node = req.GetNode().GetId()
	}
	ts := c.types[t]
	if ts == nil {
		if len(c.types) >= maxTypes {
			return status.Errorf(codes.InvalidArgument, "xds: stream %d: more than %d resource types", c.id, maxTypes)
		}
		return c.subscribe(req)
	}
	if n := req.GetResponseNonce(); n != "" && n == ts.inflight {
		ts.inflight = ""
		if d := req.GetErrorDetail(); d != nil {
			c.srv.metrics.Nack(t)
			c.srv.log.Warn("xds: NACK", "stream", c.id, "node", c.node, "type", t, "nonce", n, "code", d.GetCode(), "error", d.GetMessage())
		}
	}
	var names []string
	for _, n := range req.GetResourceNamesSubscribe() {
		if n == "*" {
			ts.wildcard = true
			continue
		}
		ts.names[n] = true
		names = append(names, n)
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if n == "*" {
			ts.wildcard = false
		} else {
			delete(ts.names, n)
		}
		delete(ts.sent, n) // the client forgets unsubscribed resources
	}
	if len(names) > 0 {
		c.mu.Lock()
		c.addPendingLocked(t, names, time.Now())
		c.mu.Unlock()
		flushNow = true
	}
	if flushNow {
		c.flush(t)
	}
	return nil
}

// subscribe handles the first request of a type: it answers with what
// differs from the client's initial_resource_versions, always, so the client
// learns it is in sync.
func (c *conn) subscribe(req *discovery.DeltaDiscoveryRequest) error {
	t := req.GetTypeUrl()
	ts := &typeState{names: make(map[string]bool), sent: maps.Clone(req.GetInitialResourceVersions())}
	if ts.sent == nil {
		ts.sent = make(map[string]string)
	}
	subs := req.GetResourceNamesSubscribe()
	ts.wildcard = len(subs) == 0
	for _, n := range subs {
		if n == "*" {
			ts.wildcard = true
		} else {
			ts.names[n] = true
		}
	}
	c.types[t] = ts
	c.mu.Lock()
	c.watching[t] = true // changes from now on are queued; the snapshot below may include them, and versions dedupe
	c.mu.Unlock()

	now := time.Now()
	snap := c.srv.cfg.Cache.snapshot(t)
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: t}
	for _, name := range slices.Sorted(maps.Keys(snap)) {
		e := snap[name]
		if !ts.wants(name) || ts.sent[name] == e.version {
			continue
		}
		resp.Resources = append(resp.Resources, &discovery.Resource{Name: name, Version: e.version, Resource: e.body})
		ts.sent[name] = e.version
	}
	for _, name := range slices.Sorted(maps.Keys(ts.sent)) {
		if _, ok := snap[name]; !ok || !ts.wants(name) {
			resp.RemovedResources = append(resp.RemovedResources, name)
			delete(ts.sent, name)
		}
	}
	c.send(ts, resp, now)
	return nil
}

// flush sends the pending changes of one type, unless a response of that
// type is still unanswered. It sends nothing when no change is visible to
// the client.
func (c *conn) flush(t string) {
	ts := c.types[t]
	if ts == nil || ts.inflight != "" {
		return
	}
	names, since := c.takePending(t)
	if len(names) == 0 {
		return
	}
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: t}
	for _, name := range slices.Sorted(maps.Keys(names)) {
		e, ok := c.srv.cfg.Cache.get(t, name)
		have, had := ts.sent[name]
		switch {
		case ok && ts.wants(name):
			if had && have == e.version {
				continue
			}
			resp.Resources = append(resp.Resources, &discovery.Resource{Name: name, Version: e.version, Resource: e.body})
			ts.sent[name] = e.version
		case had:
			resp.RemovedResources = append(resp.RemovedResources, name)
			delete(ts.sent, name)
		}
	}
	if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 {
		return
	}
	c.send(ts, resp, since)
}

// send queues resp; the queue holds at most one response per type, so this
// never blocks.
func (c *conn) send(ts *typeState, resp *discovery.DeltaDiscoveryResponse, since time.Time) {
	c.nonce++
	resp.Nonce = strconv.FormatUint(c.nonce, 10)
	ts.inflight = resp.Nonce
	ts.sentAt = time.Now()
	c.sendq <- outgoing{resp: resp, since: since}
}

// debounceDeadline is when changes made between first and last go out:
// DebounceAfter after the last, but no later than DebounceMax after the
// first.
func debounceDeadline(first, last time.Time, cfg *Config) time.Time {
	quiet, cap := last.Add(cfg.DebounceAfter), first.Add(cfg.DebounceMax)
	if cap.Before(quiet) {
		return cap
	}
	return quiet
}
