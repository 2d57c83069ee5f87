package telemetry

import (
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultFeedHistory is how many recent flow lines a Feed keeps by default.
const DefaultFeedHistory = 1000

// DefaultSubscriberBuffer is how many lines a subscriber may fall behind
// by default before it is cut off.
const DefaultSubscriberBuffer = 1024

// ErrSlowSubscriber is why a subscription ended when its reader fell
// further behind than its buffer.
var ErrSlowSubscriber = errors.New("telemetry: flow subscriber too slow; it was cut off")

// Feed fans flow lines out to live subscribers and keeps the last lines in
// a bounded ring. Publishing never blocks: a subscriber whose buffer is full
// is cut off (its channel closed, Err = ErrSlowSubscriber) and counted in
// Dropped, so a slow reader costs the data path nothing.
type Feed struct {
	dropped atomic.Uint64

	mu   sync.Mutex // guards the fields below
	ring [][]byte   // capacity = history; oldest at next once full
	next int
	full bool
	subs map[*Subscription]struct{}
}

// NewFeed returns a Feed keeping the last history lines (DefaultFeedHistory
// when history ≤ 0).
func NewFeed(history int) *Feed {
	if history <= 0 {
		history = DefaultFeedHistory
	}
	return &Feed{ring: make([][]byte, history), subs: map[*Subscription]struct{}{}}
}

// Subscription is one live reader of a Feed.
type Subscription struct {
	// History holds the lines recorded before the subscription, oldest first.
	History [][]byte
	// C delivers every later line (JSON, no newline) in order; it is closed
	// when the subscription ends.
	C <-chan []byte

	c    chan []byte
	feed *Feed
	err  atomic.Pointer[error]
}

// Err says why C was closed: ErrSlowSubscriber, or nil after Close.
func (s *Subscription) Err() error {
	if p := s.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Close ends the subscription; it is safe to call more than once.
func (s *Subscription) Close() {
	f := s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.subs[s]; ok {
		delete(f.subs, s)
		close(s.c)
	}
}

// Subscribe returns the recent history and a subscription to every line
// published after it, with no gap and no duplicate between the two. buffer
// is how many lines the reader may lag (DefaultSubscriberBuffer when ≤ 0).
func (f *Feed) Subscribe(buffer int) *Subscription {
	if buffer <= 0 {
		buffer = DefaultSubscriberBuffer
	}
	s := &Subscription{c: make(chan []byte, buffer), feed: f}
	s.C = s.c
	f.mu.Lock()
	defer f.mu.Unlock()
	s.History = f.historyLocked()
	f.subs[s] = struct{}{}
	return s
}

// History returns the recent lines, oldest first.
func (f *Feed) History() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.historyLocked()
}

func (f *Feed) historyLocked() [][]byte {
	if !f.full {
		return append([][]byte(nil), f.ring[:f.next]...)
	}
	out := make([][]byte, 0, len(f.ring))
	out = append(out, f.ring[f.next:]...)
	return append(out, f.ring[:f.next]...)
}

// Dropped counts the subscribers cut off for being too slow.
func (f *Feed) Dropped() uint64 { return f.dropped.Load() }

// Subscribers is the number of live subscriptions.
func (f *Feed) Subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// Publish records one line (a flow's JSON without newline; the Feed keeps
// line, which must not be modified afterwards) and hands it to every
// subscriber without blocking.
func (f *Feed) Publish(line []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ring[f.next] = line
	f.next++
	if f.next == len(f.ring) {
		f.next, f.full = 0, true
	}
	for s := range f.subs {
		select {
		case s.c <- line:
		default:
			err := ErrSlowSubscriber
			s.err.Store(&err)
			delete(f.subs, s)
			close(s.c)
			f.dropped.Add(1)
		}
	}
}

// ParseFlow decodes one flow line, the inverse of Flow.MarshalJSON.
func ParseFlow(line []byte) (Flow, error) {
	var r record
	if err := json.Unmarshal(line, &r); err != nil {
		return Flow{}, err
	}
	return Flow{
		Start: r.Start, Reporter: r.Reporter,
		Src:       Peer{Workload: r.SrcWork, Namespace: r.SrcNS, Identity: r.SrcID, Addr: r.SrcAddr},
		Dst:       Peer{Workload: r.DstWork, Namespace: r.DstNS, Service: r.DstService, Identity: r.DstID, Addr: r.DstAddr},
		BytesSent: r.BytesSent, BytesRecv: r.BytesRecv,
		Duration: time.Duration(r.DurationMS * float64(time.Millisecond)),
		Decision: r.Decision, Policy: r.Policy, Security: r.Security, Transport: r.Transport, Error: r.Error,
	}, nil
}
