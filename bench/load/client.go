package load

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/ambientmesh/ambient/bench/stats"
)

// BulkResult is one timed bulk transfer.
type BulkResult struct {
	Bytes   int64
	Elapsed time.Duration
}

// MBps is the transfer rate in 10^6 bytes per second.
func (r BulkResult) MBps() float64 { return stats.Throughput(r.Bytes, r.Elapsed) }

// DialFunc opens the TCP connection of a benchmark run to addr. It lets the
// load client run elsewhere than the calling thread's network namespace
// (e.g. internal/netns.DialTCP into a pod). Nil means a net.Dialer here.
type DialFunc func(ctx context.Context, addr string) (net.Conn, error)

func (f DialFunc) dial(ctx context.Context, addr string) (net.Conn, error) {
	if f != nil {
		return f(ctx, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// dialBench opens a benchmark connection to addr through df, sends the
// header and waits for the backend's acknowledgement, so the path is fully
// established on return. The connection is closed when ctx is done.
func dialBench(ctx context.Context, df DialFunc, addr string, h Header) (net.Conn, func(), error) {
	c, err := df.dial(ctx, addr)
	if err != nil {
		return nil, nil, fmt.Errorf("load: dial %s: %w", addr, err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	closeAll := func() { stop(); c.Close() }
	hb, _ := h.MarshalBinary()
	if _, err := c.Write(hb); err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("load: %s: send header: %w", addr, err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("load: %s: no acknowledgement from the backend (is the path up?): %w", addr, ctxErr(ctx, err))
	}
	if ack[0] != ackByte {
		closeAll()
		return nil, nil, fmt.Errorf("load: %s: bad acknowledgement %q", addr, ack[0])
	}
	return c, closeAll, nil
}

// ctxErr prefers the context's error over the deadline error it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// Upload sends n bytes to the backend through addr in bufSize writes from
// one reused buffer and returns how long it took until the backend confirmed
// receipt of all of them.
func Upload(ctx context.Context, addr string, n int64, bufSize int) (BulkResult, error) {
	return UploadVia(ctx, nil, addr, n, bufSize)
}

// UploadVia is Upload over a connection opened by dial.
func UploadVia(ctx context.Context, dial DialFunc, addr string, n int64, bufSize int) (BulkResult, error) {
	c, closeConn, err := dialBench(ctx, dial, addr, Header{Op: OpUpload, Length: uint64(n)})
	if err != nil {
		return BulkResult{}, err
	}
	defer closeConn()
	buf := make([]byte, bufSize)
	start := time.Now()
	for sent := int64(0); sent < n; {
		k, err := c.Write(buf[:min(int64(len(buf)), n-sent)])
		sent += int64(k)
		if err != nil {
			return BulkResult{}, fmt.Errorf("load: upload via %s after %d bytes: %w", addr, sent, ctxErr(ctx, err))
		}
	}
	var reply [8]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return BulkResult{}, fmt.Errorf("load: upload via %s: no receipt: %w", addr, ctxErr(ctx, err))
	}
	elapsed := time.Since(start)
	if got := binary.BigEndian.Uint64(reply[:]); got != uint64(n) {
		return BulkResult{}, fmt.Errorf("load: upload via %s: backend got %d of %d bytes", addr, got, n)
	}
	return BulkResult{Bytes: n, Elapsed: elapsed}, nil
}

// Download asks the backend for n bytes through addr, reads them in bufSize
// chunks and returns how long they took to arrive.
func Download(ctx context.Context, addr string, n int64, bufSize int) (BulkResult, error) {
	return DownloadVia(ctx, nil, addr, n, bufSize)
}

// DownloadVia is Download over a connection opened by dial.
func DownloadVia(ctx context.Context, dial DialFunc, addr string, n int64, bufSize int) (BulkResult, error) {
	c, closeConn, err := dialBench(ctx, dial, addr, Header{Op: OpDownload, Length: uint64(n)})
	if err != nil {
		return BulkResult{}, err
	}
	defer closeConn()
	buf := make([]byte, bufSize)
	start := time.Now()
	if _, err := c.Write([]byte{goByte}); err != nil {
		return BulkResult{}, fmt.Errorf("load: download via %s: %w", addr, ctxErr(ctx, err))
	}
	for got := int64(0); got < n; {
		k, err := c.Read(buf[:min(int64(len(buf)), n-got)])
		got += int64(k)
		if err != nil {
			return BulkResult{}, fmt.Errorf("load: download via %s after %d of %d bytes: %w", addr, got, n, ctxErr(ctx, err))
		}
	}
	return BulkResult{Bytes: n, Elapsed: time.Since(start)}, nil
}

// LatencyConfig describes an open-loop request/response run.
type LatencyConfig struct {
	Addr     string
	Protocol Protocol      // ProtoEcho (the default) or ProtoHTTP1
	Host     string        // HTTP Host header (default Addr)
	Rate     float64       // requests per second over all connections
	Duration time.Duration // measured period
	Conns    int           // connections, opened before measuring
	Size     int           // request and response size in bytes
	Warmup   int           // unmeasured round trips per connection before the run
	// Timeout bounds a single round trip; a connection whose request takes
	// longer is abandoned and its remaining requests counted as errors.
	Timeout time.Duration
	// Dial opens the connections (nil: a net.Dialer in this namespace).
	Dial DialFunc
	// Started, if set, is called once every connection is open and warm,
	// just before the measured period: the moment to sample the CPU time of
	// the processes on the path.
	Started func()
}

// LatencyResult is the outcome of an open-loop run.
type LatencyResult struct {
	Summary stats.Summary
	Sent    int // requests scheduled
	Errors  int // requests that failed or were never sent after a failure
	// MaxSendLag is the largest delay between a request's scheduled time and
	// its write: how far the generator itself (or a busy connection) fell
	// behind. It is included in the latencies.
	MaxSendLag time.Duration
}

// Latency runs cfg: it opens cfg.Conns connections through cfg.Addr, warms
// them up, then issues Rate requests per second for Duration, round robin
// over the connections, and measures each from its scheduled start to the
// last byte of its response.
func Latency(ctx context.Context, cfg LatencyConfig) (LatencyResult, error) {
	if cfg.Rate <= 0 || cfg.Conns <= 0 || cfg.Size <= 0 || cfg.Duration <= 0 {
		return LatencyResult{}, fmt.Errorf("load: invalid latency config %+v", cfg)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	conns := make([]exchanger, 0, cfg.Conns)
	for range cfg.Conns {
		c, closeConn, err := openConn(ctx, cfg.Protocol, cfg.Dial, cfg.Addr, cfg.Host, cfg.Size)
		if err != nil {
			return LatencyResult{}, err
		}
		defer closeConn()
		conns = append(conns, c)
		for range cfg.Warmup {
			if err := c.roundTrip(time.Now().Add(cfg.Timeout)); err != nil {
				return LatencyResult{}, fmt.Errorf("load: warm-up via %s: %w", cfg.Addr, ctxErr(ctx, err))
			}
		}
	}

	if cfg.Started != nil {
		cfg.Started()
	}
	sched := stats.Schedule{Start: time.Now().Add(20 * time.Millisecond), Rate: cfg.Rate, Conns: cfg.Conns}
	total := sched.Count(cfg.Duration)
	samples := make([]time.Duration, total)
	ok := make([]bool, total)
	lags := make([]time.Duration, cfg.Conns)
	var wg sync.WaitGroup
	for ci, c := range conns {
		wg.Go(func() {
			lags[ci] = latencyConn(ctx, c, sched, sched.ConnRequests(ci, total), cfg, samples, ok)
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return LatencyResult{}, err
	}

	res := LatencyResult{Sent: total}
	good := samples[:0]
	for i, s := range samples {
		if ok[i] {
			good = append(good, s)
		} else {
			res.Errors++
		}
	}
	res.Summary = stats.Summarize(good)
	for _, l := range lags {
		res.MaxSendLag = max(res.MaxSendLag, l)
	}
	if res.Errors == total {
		return res, fmt.Errorf("load: latency via %s: all %d requests failed", cfg.Addr, total)
	}
	return res, nil
}

// latencyConn carries the requests reqs of sched on c, recording each
// latency into samples[i] and ok[i]; it returns its largest send lag.
func latencyConn(ctx context.Context, c exchanger, sched stats.Schedule, reqs []int, cfg LatencyConfig, samples []time.Duration, ok []bool) time.Duration {
	var maxLag time.Duration
	for _, i := range reqs {
		due := sched.At(i)
		if !sleepUntil(ctx, due) {
			return maxLag
		}
		maxLag = max(maxLag, time.Since(due))
		if err := c.roundTrip(time.Now().Add(cfg.Timeout)); err != nil {
			return maxLag // this and the remaining requests stay !ok
		}
		samples[i] = time.Since(due)
		ok[i] = true
	}
	return maxLag
}

// coarseSlack is how early sleepUntil leaves the Go timer: the runtime's
// netpoller sleeps in whole milliseconds, so a Go timer can fire up to ~1ms
// late, which would be counted as latency by an open-loop generator.
const coarseSlack = 1500 * time.Microsecond

// sleepUntil waits until t: on a Go timer for all but the last coarseSlack,
// then in nanosleep(2), which blocks only this goroutine's OS thread and
// wakes within the kernel's timer slack (50µs). It returns false if ctx is
// done first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	if d := time.Until(t) - coarseSlack; d > 0 {
		timer := time.NewTimer(d)
		select {
		case <-ctx.Done():
			timer.Stop()
			return false
		case <-timer.C:
		}
	}
	for {
		d := time.Until(t)
		if d <= 0 {
			return ctx.Err() == nil
		}
		ts := syscall.NsecToTimespec(int64(d))
		syscall.Nanosleep(&ts, nil) // EINTR: loop and recompute
	}
}

func roundTrip(c net.Conn, buf []byte, deadline time.Time) error {
	c.SetDeadline(deadline)
	if _, err := c.Write(buf); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	return nil
}
