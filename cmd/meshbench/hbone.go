package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/bench/certdir"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/identity"
)

var benchTD = spiffeid.RequireTrustDomainFromString("cluster.local")

// loadSource reads one side's SVID and the trust bundle from a cert dir.
func loadSource(dir, certFile, keyFile string) (*identity.StaticSource, *x509bundle.Bundle, error) {
	svid, err := x509svid.Load(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("load SVID: %w", err)
	}
	bundle, err := x509bundle.Load(benchTD, filepath.Join(dir, certdir.CAFile))
	if err != nil {
		return nil, nil, fmt.Errorf("load bundle: %w", err)
	}
	return identity.NewStaticSource(svid, bundle), bundle, nil
}

// runHBONEClient listens for plain TCP and carries each connection through
// an HBONE tunnel to --tunnel, with --dest as the :authority.
func runHBONEClient(args []string) error {
	fs := flag.NewFlagSet("hbone-client", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:15001", "plain TCP listen address")
	tunnel := fs.String("tunnel", "127.0.0.1:15008", "HBONE server address")
	dest := fs.String("dest", "", "destination ip:port sent as :authority")
	certs := fs.String("certs", "", "certificate directory")
	procs := fs.Int("procs", 0, "GOMAXPROCS (0: Go's default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *procs > 0 {
		runtime.GOMAXPROCS(*procs)
	}
	tunnelAddr, err := netip.ParseAddrPort(*tunnel)
	if err != nil {
		return fmt.Errorf("--tunnel: %w", err)
	}
	destAddr, err := netip.ParseAddrPort(*dest)
	if err != nil {
		return fmt.Errorf("--dest: %w", err)
	}
	src, bundle, err := loadSource(*certs, certdir.ClientCertFile, certdir.ClientKeyFile)
	if err != nil {
		return err
	}
	cl, err := hbone.NewClient(hbone.ClientConfig{
		TLSConfig: func(_, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientConfig(src, bundle, dst), nil
		},
	})
	if err != nil {
		return err
	}
	defer cl.Close()
	target := hbone.Target{
		Source:      certdir.ClientID(benchTD),
		Destination: certdir.ServerID(benchTD),
		Address:     tunnelAddr,
		Authority:   destAddr,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer profile("client")()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			t, err := cl.Dial(ctx, target)
			if err != nil {
				fmt.Fprintln(os.Stderr, "hbone-client:", err)
				c.Close()
				return
			}
			hbone.Splice(t, c)
		}()
	}
}

// runHBONEServer terminates HBONE and connects each stream to its
// :authority.
func runHBONEServer(args []string) error {
	fs := flag.NewFlagSet("hbone-server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:15008", "HBONE listen address")
	certs := fs.String("certs", "", "certificate directory")
	procs := fs.Int("procs", 0, "GOMAXPROCS (0: Go's default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *procs > 0 {
		runtime.GOMAXPROCS(*procs)
	}
	src, bundle, err := loadSource(*certs, certdir.ServerCertFile, certdir.ServerKeyFile)
	if err != nil {
		return err
	}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig:    identity.ServerConfig(src, bundle, benchTD),
		DrainTimeout: time.Second,
		Authorize: func(_ context.Context, st *hbone.Stream) error {
			if st.Peer != certdir.ClientID(benchTD) {
				return errors.New("unexpected peer")
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer profile("server")()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	return srv.Serve(ctx, ln)
}

// profile writes a CPU profile to $MESHBENCH_CPUPROFILE.<side>.pprof when
// that variable is set; the returned function stops it.
func profile(side string) func() {
	prefix := os.Getenv("MESHBENCH_CPUPROFILE")
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(prefix + "." + side + ".pprof")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpu profile:", err)
		return func() {}
	}
	pprof.StartCPUProfile(f)
	return func() { pprof.StopCPUProfile(); f.Close() }
}
