package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/bench/certdir"
	"github.com/ambientmesh/ambient/bench/proxies"
	"github.com/ambientmesh/ambient/bench/report"
	"github.com/ambientmesh/ambient/bench/tunnelbench"
	"github.com/ambientmesh/ambient/internal/ca"
)

// tunnelFlags are the command-line settings of "meshbench tunnel".
type tunnelFlags struct {
	only      string
	quick     bool
	verify    bool
	keep      bool
	jsonOut   string
	bulk      int64
	repeats   int
	rounds    int
	writeSize int
	rate      float64
	duration  time.Duration
	conns     int
	size      int
	warmup    int
	tuning    proxies.Tuning
	tools     proxies.Tools
	timeout   time.Duration
	verbose   bool
}

func parseTunnelFlags(args []string, stderr io.Writer) (tunnelFlags, error) {
	var f tunnelFlags
	def := proxies.DefaultTuning()
	fs := flag.NewFlagSet("meshbench tunnel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: meshbench tunnel [flags]\n\n"+
			"Compares single-stream throughput, proxy CPU and 1 KB request latency of\n"+
			"direct TCP, stunnel, haproxy, nginx and our hbone pair on 127.0.0.1.\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&f.only, "only", "", "comma-separated subset of paths to run: "+strings.Join(tunnelbench.PathNames(), ","))
	fs.BoolVar(&f.quick, "quick", false, "smoke run (~30 s): 256 MiB transfers, 1 repeat, 2 s latency; overrides -bulk, -repeats, -duration")
	fs.BoolVar(&f.verify, "verify", false, "only run the mutual-TLS 1.3 checks of each pair and list them; measure nothing")
	fs.BoolVar(&f.keep, "keep", false, "keep the work directory (certs, configs, logs)")
	fs.StringVar(&f.jsonOut, "json", "", "also write all figures as JSON to this file")
	fs.Int64Var(&f.bulk, "bulk", 2<<30, "bytes per bulk transfer")
	fs.IntVar(&f.repeats, "repeats", 1, "bulk transfers per direction per round")
	fs.IntVar(&f.rounds, "rounds", 3, "interleaved passes over all paths (medians reported)")
	fs.IntVar(&f.writeSize, "write-size", 256<<10, "bulk write/read size in bytes")
	fs.Float64Var(&f.rate, "rate", 1000, "latency test requests per second (open loop)")
	fs.DurationVar(&f.duration, "duration", 5*time.Second, "latency test duration per round")
	fs.IntVar(&f.conns, "conns", 8, "latency test connections (round robin)")
	fs.IntVar(&f.size, "size", 1024, "latency request and response size in bytes")
	fs.IntVar(&f.warmup, "warmup", 20, "unmeasured round trips per latency connection")
	fs.IntVar(&f.tuning.HAProxyThreads, "haproxy-nbthread", def.HAProxyThreads, "haproxy nbthread per process")
	fs.IntVar(&f.tuning.HAProxyBufSize, "haproxy-bufsize", def.HAProxyBufSize, "haproxy tune.bufsize in bytes")
	fs.StringVar(&f.tuning.NginxWorkers, "nginx-workers", def.NginxWorkers, "nginx worker_processes (a number or auto)")
	fs.IntVar(&f.tuning.NginxBufferSize, "nginx-buffer", def.NginxBufferSize, "nginx proxy_buffer_size in bytes")
	fs.IntVar(&f.tuning.HBONEProcs, "hbone-procs", def.HBONEProcs, "GOMAXPROCS of each hbone process (0: Go's default)")
	fs.StringVar(&f.tools.Stunnel, "stunnel", "stunnel4", "stunnel executable")
	fs.StringVar(&f.tools.HAProxy, "haproxy", "haproxy", "haproxy executable")
	fs.StringVar(&f.tools.Nginx, "nginx", "nginx", "nginx executable")
	fs.DurationVar(&f.timeout, "timeout", 2*time.Minute, "limit for one bulk transfer or latency run")
	fs.BoolVar(&f.verbose, "v", false, "log debug details to stderr")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if f.quick {
		f.bulk, f.repeats, f.rounds, f.duration = 256<<20, 1, 1, 2*time.Second
	}
	return f, nil
}

func (f tunnelFlags) config(mesh string, progress io.Writer, logger *slog.Logger) tunnelbench.Config {
	var paths []string
	for _, p := range strings.Split(f.only, ",") {
		if p = strings.TrimSpace(p); p != "" {
			paths = append(paths, p)
		}
	}
	tools := f.tools
	tools.Mesh = mesh
	return tunnelbench.Config{
		Paths: paths, BulkBytes: f.bulk, Repeats: f.repeats, Rounds: f.rounds, WriteSize: f.writeSize,
		Rate: f.rate, LatencyDuration: f.duration, Conns: f.conns, MessageSize: f.size, Warmup: f.warmup,
		Tuning: f.tuning, Tools: tools,
		NewAuthority: func(td spiffeid.TrustDomain) (certdir.Authority, error) {
			return ca.NewSelfSigned(td, ca.Options{})
		},
		VerifyOnly: f.verify, Keep: f.keep, TransferTimeout: f.timeout,
		Logger: logger, Progress: progress,
	}
}

func runTunnel(args []string) error {
	f, err := parseTunnelFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	mesh, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable for the hbone pair: %w", err)
	}
	level := slog.LevelInfo
	if f.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	b, err := tunnelbench.New(f.config(mesh, os.Stderr, logger))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, runErr := b.Run(ctx)
	if rep != nil {
		fmt.Println()
		if f.verify {
			report.WriteChecks(os.Stdout, rep)
		} else if err := report.WriteTable(os.Stdout, rep); err != nil {
			return err
		}
		if f.jsonOut != "" {
			if err := writeJSON(f.jsonOut, rep); err != nil {
				return err
			}
		}
	}
	return runErr
}

func writeJSON(path string, rep *report.Report) error {
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	if err := report.WriteJSON(out, rep); err != nil {
		out.Close()
		return fmt.Errorf("write JSON %s: %w", path, err)
	}
	return out.Close()
}
