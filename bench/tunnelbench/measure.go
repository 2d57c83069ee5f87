package tunnelbench

import (
	"context"
	"fmt"
	"time"

	"github.com/ambientmesh/ambient/bench/load"
	"github.com/ambientmesh/ambient/bench/report"
	"github.com/ambientmesh/ambient/bench/stats"
)

// cpuFunc reports the proxy pair's CPU time so far; nil for the direct path.
type cpuFunc func() (time.Duration, error)

// measure runs the bulk and latency tests through addr and fills in res. A
// failing test marks res failed and skips the tests after it.
func (b *Bench) measure(ctx context.Context, res report.Path, addr string, cpu cpuFunc) report.Path {
	cfg := b.cfg
	fail := func(err error) report.Path {
		res.Status = report.StatusFailed
		res.Error = err.Error()
		return res
	}
	var cpuRes report.CPU
	for _, dir := range []struct {
		name string
		run  func(context.Context, string, int64, int) (load.BulkResult, error)
		out  **report.Bulk
		cpu  *float64
	}{
		{"upload", load.Upload, &res.Upload, &cpuRes.UploadSeconds},
		{"download", load.Download, &res.Download, &cpuRes.DownloadSeconds},
	} {
		bulk := &report.Bulk{Bytes: cfg.BulkBytes}
		before, err := sample(cpu)
		if err != nil {
			return fail(err)
		}
		for i := range cfg.Repeats {
			tctx, cancel := context.WithTimeout(ctx, cfg.TransferTimeout)
			r, err := dir.run(tctx, addr, cfg.BulkBytes, cfg.WriteSize)
			cancel()
			if err != nil {
				return fail(fmt.Errorf("%s run %d: %w", dir.name, i+1, err))
			}
			bulk.RunsMBps = append(bulk.RunsMBps, r.MBps())
			fmt.Fprintf(cfg.Progress, "%s: %s %d/%d: %.0f MB/s\n", res.Name, dir.name, i+1, cfg.Repeats, r.MBps())
		}
		after, err := sample(cpu)
		if err != nil {
			return fail(err)
		}
		bulk.MedianMBps = stats.Median(bulk.RunsMBps)
		*dir.out = bulk
		*dir.cpu = (after - before).Seconds()
	}
	if cpu != nil {
		cpuRes.Bytes = 2 * int64(cfg.Repeats) * cfg.BulkBytes
		cpuRes.SecondsPerGB = (cpuRes.UploadSeconds + cpuRes.DownloadSeconds) / (float64(cpuRes.Bytes) / 1e9)
		res.CPU = &cpuRes
	}

	lctx, cancel := context.WithTimeout(ctx, cfg.LatencyDuration+cfg.TransferTimeout)
	defer cancel()
	lr, err := load.Latency(lctx, load.LatencyConfig{
		Addr: addr, Rate: cfg.Rate, Duration: cfg.LatencyDuration, Conns: cfg.Conns,
		Size: cfg.MessageSize, Warmup: cfg.Warmup,
	})
	if err != nil {
		return fail(fmt.Errorf("latency: %w", err))
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	s := lr.Summary
	res.Latency = &report.Latency{
		Count: s.Count, Errors: lr.Errors, MeanUs: us(s.Mean),
		P50Us: us(s.P50), P90Us: us(s.P90), P99Us: us(s.P99), P999Us: us(s.P999), MaxUs: us(s.Max),
		MaxSendLagUs: us(lr.MaxSendLag),
	}
	fmt.Fprintf(cfg.Progress, "%s: latency p50 %.0fµs p99 %.0fµs (%d requests, %d errors)\n",
		res.Name, us(s.P50), us(s.P99), s.Count, lr.Errors)
	return res
}

func sample(cpu cpuFunc) (time.Duration, error) {
	if cpu == nil {
		return 0, nil
	}
	d, err := cpu()
	if err != nil {
		return 0, fmt.Errorf("cpu accounting: %w", err)
	}
	return d, nil
}
