package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestUDP_AnswersEachDatagramAndCalls: the UDP side answers a datagram
// with the reply JSON naming its source, and /call?url=udp://… shows it.
func TestUDP_AnswersEachDatagramAndCalls(t *testing.T) {
	s := newServer(t, Config{Pod: "ratings-abc", Namespace: "shop"})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.serveUDP(ctx, pc) }()
	defer func() { cancel(); <-done }()

	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(ts.URL + "/call?url=udp://" + pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rep Reply
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || len(rep.Upstreams) != 1 || rep.Upstreams[0].Status != 200 {
		t.Fatalf("/call udp: %d %+v", resp.StatusCode, rep)
	}
	var answer Reply
	if err := json.Unmarshal(rep.Upstreams[0].Body, &answer); err != nil {
		t.Fatalf("UDP answer %s: %v", rep.Upstreams[0].Body, err)
	}
	host, _, _ := net.SplitHostPort(answer.RemoteAddr)
	if answer.Proto != "udp" || answer.Pod != "ratings-abc" || host != "127.0.0.1" {
		t.Fatalf("UDP answer = %+v, want proto udp from ratings-abc naming the caller 127.0.0.1", answer)
	}
}

// TestUDP_CallWithoutAnswerFails: a datagram nobody answers is a failed
// call (502), not a hang.
func TestUDP_CallWithoutAnswerFails(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // bound, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	s := newServer(t, Config{CallTimeout: 200 * time.Millisecond})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(ts.URL + "/call?url=udp://" + pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("/call to a silent UDP port = %d, want 502", resp.StatusCode)
	}
}
