package telemetry

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

func flowN(i int) Flow {
	f := sample
	f.Start = sample.Start.Add(time.Duration(i) * time.Second)
	f.BytesSent = int64(i)
	return f
}

func TestFlowLogFeed_SameLinesAsTheLog(t *testing.T) {
	var plain, fed bytes.Buffer
	feed := NewFeed(10)
	NewFlowLog(&plain).Record(sample)
	NewFlowLogFeed(&fed, feed).Record(sample)
	if plain.String() != fed.String() {
		t.Fatalf("the feed changed the log line:\n%s\nvs\n%s", fed.String(), plain.String())
	}
	h := feed.History()
	if len(h) != 1 || string(h[0])+"\n" != plain.String() {
		t.Fatalf("feed history %q, want the log line without its newline", h)
	}
}

func TestFeed_KeepsTheLastNOldestFirst(t *testing.T) {
	feed := NewFeed(3)
	log := NewFlowLogFeed(&bytes.Buffer{}, feed)
	for i := range 5 {
		log.Record(flowN(i))
	}
	var got []int64
	for _, l := range feed.History() {
		f, err := ParseFlow(l)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, f.BytesSent)
	}
	if fmt.Sprint(got) != "[2 3 4]" {
		t.Errorf("history %v, want [2 3 4]", got)
	}
}

func TestFeed_SubscribeHasNoGapAndNoDuplicate(t *testing.T) {
	feed := NewFeed(100)
	log := NewFlowLogFeed(&bytes.Buffer{}, feed)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			log.Record(flowN(i))
		}
	}()
	time.Sleep(time.Millisecond)
	sub := feed.Subscribe(1000)
	defer sub.Close()
	<-done
	var got []int64
	for _, l := range sub.History {
		f, _ := ParseFlow(l)
		got = append(got, f.BytesSent)
	}
	for len(sub.C) > 0 {
		f, _ := ParseFlow(<-sub.C)
		got = append(got, f.BytesSent)
	}
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 {
			t.Fatalf("history + live not contiguous at %d: %v", i, got)
		}
	}
	if got[len(got)-1] != 199 {
		t.Errorf("last record %d, want 199", got[len(got)-1])
	}
}

func TestFeed_SlowSubscriberIsCutOffNotWaitedFor(t *testing.T) {
	feed := NewFeed(10)
	log := NewFlowLogFeed(&bytes.Buffer{}, feed)
	slow := feed.Subscribe(4) // never read
	fast := feed.Subscribe(100)
	defer fast.Close()
	start := time.Now()
	for i := range 50 {
		if err := log.Record(flowN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("recording took %v with a stuck subscriber", d)
	}
	n := 0
	for range slow.C { // closed after its 4 buffered lines
		n++
	}
	if n != 4 || slow.Err() != ErrSlowSubscriber {
		t.Errorf("slow subscriber got %d lines and err %v, want 4 and ErrSlowSubscriber", n, slow.Err())
	}
	if feed.Dropped() != 1 || feed.Subscribers() != 1 {
		t.Errorf("dropped %d, subscribers %d; want 1 and 1", feed.Dropped(), feed.Subscribers())
	}
	if len(fast.C) != 50 {
		t.Errorf("fast subscriber has %d lines, want 50", len(fast.C))
	}
	slow.Close() // after the cut-off: harmless
}

func TestParseFlow_InvertsMarshal(t *testing.T) {
	b, _ := sample.MarshalJSON()
	f, err := ParseFlow(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := f.MarshalJSON()
	if string(b) != string(b2) {
		t.Errorf("round trip:\n%s\n%s", b, b2)
	}
	if _, err := ParseFlow([]byte("not json")); err == nil || !strings.Contains(err.Error(), "invalid") {
		t.Errorf("ParseFlow(garbage) = %v", err)
	}
}
