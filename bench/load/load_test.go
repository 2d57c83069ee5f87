package load

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseHeader(t *testing.T) {
	good, _ := Header{Op: OpEcho, Length: 1024}.MarshalBinary()
	if h, err := ParseHeader(good); err != nil || h != (Header{Op: OpEcho, Length: 1024}) {
		t.Fatalf("round trip = %+v, %v", h, err)
	}
	mut := func(f func(b []byte) []byte) []byte {
		b, _ := Header{Op: OpUpload, Length: 7}.MarshalBinary()
		return f(b)
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"short", good[:15]},
		{"bad magic", mut(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"reserved bytes set", mut(func(b []byte) []byte { b[6] = 1; return b })},
		{"unknown op", mut(func(b []byte) []byte { b[4] = 'Z'; return b })},
		{"zero echo size", func() []byte { b, _ := Header{Op: OpEcho}.MarshalBinary(); return b }()},
		{"huge echo size", func() []byte { b, _ := Header{Op: OpEcho, Length: 1 << 30}.MarshalBinary(); return b }()},
	}
	for _, tt := range tests {
		if _, err := ParseHeader(tt.b); !errors.Is(err, ErrBadHeader) {
			t.Errorf("%s: err = %v, want ErrBadHeader", tt.name, err)
		}
	}
}

func startBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBackend(BackendConfig{Listener: ln, BufSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("backend Run: %v", err)
		}
	})
	return b.Addr()
}

func TestUploadAndDownload_MoveExactlyNBytes(t *testing.T) {
	addr := startBackend(t)
	ctx := t.Context()
	const n = 10<<20 + 123 // not a multiple of the buffer size
	up, err := Upload(ctx, addr, n, 256<<10)
	if err != nil {
		t.Fatalf("Upload: %v", err)
	}
	if up.Bytes != n || up.Elapsed <= 0 || up.MBps() <= 0 {
		t.Errorf("Upload = %+v", up)
	}
	down, err := Download(ctx, addr, n, 256<<10)
	if err != nil {
		t.Fatalf("Download: %v", err)
	}
	if down.Bytes != n || down.Elapsed <= 0 {
		t.Errorf("Download = %+v", down)
	}
}

func TestLatency_OpenLoopCountsEveryScheduledRequest(t *testing.T) {
	addr := startBackend(t)
	res, err := Latency(t.Context(), LatencyConfig{
		Addr: addr, Rate: 500, Duration: 300 * time.Millisecond, Conns: 4, Size: 1024, Warmup: 2,
	})
	if err != nil {
		t.Fatalf("Latency: %v", err)
	}
	if res.Sent != 150 || res.Errors != 0 || res.Summary.Count != 150 {
		t.Errorf("sent %d, errors %d, count %d; want 150, 0, 150", res.Sent, res.Errors, res.Summary.Count)
	}
	s := res.Summary
	if !(0 < s.P50 && s.P50 <= s.P90 && s.P90 <= s.P99 && s.P99 <= s.P999 && s.P999 <= s.Max) {
		t.Errorf("percentiles not ordered: %+v", s)
	}
}

func TestLatency_StalledPathCountsErrorsNotSilence(t *testing.T) {
	// A "proxy" that acknowledges the header and then swallows everything.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
			c.Read(make([]byte, headerLen))
			c.Write([]byte{ackByte})
		}
	}()
	res, err := Latency(t.Context(), LatencyConfig{
		Addr: ln.Addr().String(), Rate: 100, Duration: 100 * time.Millisecond, Conns: 2, Size: 16,
		Timeout: 50 * time.Millisecond,
	})
	if err == nil {
		t.Fatal("Latency through a black hole succeeded")
	}
	if res.Sent != 10 || res.Errors != 10 {
		t.Errorf("sent %d errors %d, want 10 and 10", res.Sent, res.Errors)
	}
	ln.Close()
	<-done
}

func TestUpload_CancelledContextStopsTransfer(t *testing.T) {
	addr := startBackend(t)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Upload(ctx, addr, 1<<40, 256<<10)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Upload of 1 TiB with a 50ms context: err = %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("cancellation took %v", time.Since(start))
	}
}

func TestVia_EveryConnectionComesFromTheDialFunc(t *testing.T) {
	addr := startBackend(t)
	var dials atomic.Int32
	dial := func(ctx context.Context, a string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", a)
	}
	ctx := t.Context()
	if _, err := UploadVia(ctx, dial, addr, 1<<20, 64<<10); err != nil {
		t.Fatalf("UploadVia: %v", err)
	}
	if _, err := DownloadVia(ctx, dial, addr, 1<<20, 64<<10); err != nil {
		t.Fatalf("DownloadVia: %v", err)
	}
	var started atomic.Int32
	res, err := Latency(ctx, LatencyConfig{
		Addr: addr, Rate: 200, Duration: 50 * time.Millisecond, Conns: 3, Size: 64, Warmup: 1,
		Dial: dial,
		Started: func() {
			if dials.Load() != 5 { // the bulk pair and all three latency connections
				t.Errorf("Started before every connection was open: %d dials", dials.Load())
			}
			started.Add(1)
		},
	})
	if err != nil || res.Errors != 0 {
		t.Fatalf("Latency: %+v, %v", res, err)
	}
	if dials.Load() != 5 || started.Load() != 1 {
		t.Errorf("dials %d, Started called %d times; want 5 and 1", dials.Load(), started.Load())
	}
}
