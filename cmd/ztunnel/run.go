package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/certs"
	"github.com/ambientmesh/ambient/internal/gomaxprocs"
	"github.com/ambientmesh/ambient/internal/hbone"
	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/internal/istiodconn"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/ztunnel"
	"github.com/ambientmesh/ambient/ztunnel/admin"
	"github.com/ambientmesh/ambient/ztunnel/cniserver"
	"github.com/ambientmesh/ambient/ztunnel/localconfig"
)

// run wires the components from opts and serves until ctx ends; it returns
// once open connections drained (and, with --remove-capture-on-exit, every
// pod's capture rules are removed).
func run(ctx context.Context, o options, logger *slog.Logger, stdout io.Writer) error {
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %w", o.trustDomain, err)
	}
	// Check the config first: a broken file is the likeliest mistake, and
	// saying so beats any later error.
	if o.localConfig != "" {
		if _, err := localconfig.Load(o.localConfig); err != nil {
			return fmt.Errorf("--local-config: %w; fix the file or point --local-config at a valid one", err)
		}
	}
	if err := checkPrivileges(); err != nil {
		return err
	}
	for uid, path := range o.pods {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("--pod %s=%s: %w; give the path of the pod's network namespace, e.g. /run/netns/NAME or /proc/PID/ns/net", uid, path, err)
		}
	}
	if o.netnsDir != "" {
		if _, err := scanNetnsDir(o.netnsDir); err != nil {
			return fmt.Errorf("--netns-dir: %w", err)
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ztunnel_idle_parked_connections",
			Help: "Idle connections whose socket waits in the idle poller, holding no goroutine or buffer.",
		}, func() float64 { return float64(hbone.ParkedConnections()) }))
	metrics, err := telemetry.NewMetrics(reg, o.clusterID)
	if err != nil {
		return err
	}

	// The mesh and the certificates come from istiod-lite, or from the
	// local file and the in-process CA.
	store := state.NewStore()
	var sign identity.SignFunc
	var ist *istiodconn.Conn
	if o.xdsAddress != "" {
		ist, err = dialIstiod(o, store, reg, logger)
		if err != nil {
			return err
		}
		defer ist.Close()
		sign = ist.CA.Sign
	} else {
		authority, err := loadCA(o, td, logger)
		if err != nil {
			return err
		}
		sign = certs.LocalSigner(authority, 0)
	}
	mgr, err := certs.New(certs.Config{Sign: sign, Logger: logger})
	if err != nil {
		return err
	}
	defer mgr.Close()

	flowOut := stdout
	if o.flowLog != "-" {
		f, err := os.OpenFile(o.flowLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("--flow-log: %w; give a writable file, or - for stdout", err)
		}
		defer f.Close()
		flowOut = f
	}

	var lns []net.Listener
	defer func() {
		for _, ln := range lns { // closed already when the admin server ran
			ln.Close()
		}
	}()
	for _, l := range []struct{ flag, addr string }{
		{"--admin-addr", o.adminAddr}, {"--metrics-addr", o.metricsAddr}, {"--ready-addr", o.readyAddr},
	} {
		ln, err := listen(l.flag, l.addr)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}

	// The flow log also feeds the admin port's /debug/flows (ambientctl flows).
	flows := telemetry.NewFeed(telemetry.DefaultFeedHistory)
	z, err := ztunnel.New(ztunnel.Config{
		Node: o.node, TrustDomain: td, Store: store, Certs: mgr,
		FlowLog: telemetry.NewFlowLogFeed(flowOut, flows), Metrics: metrics, Logger: logger,
		RemoveCaptureOnExit: o.removeCapture, CaptureUDP: o.captureUDP,
		DrainTimeout: o.drainTimeout, UDPIdleTimeout: o.udpIdleTimeout,
		TunnelCongestion: o.tunnelCongestion,
	})
	if err != nil {
		return err
	}
	src := admin.NewSource(z, store, mgr)
	if ist != nil {
		src = readyWhenSynced{Source: src, synced: ist.XDS.Synced}
	}
	srv, err := admin.New(admin.Config{
		Admin: lns[0], Metrics: lns[1], Readiness: lns[2],
		Source: src, Flows: flows, Gatherer: reg, Logger: logger,
	})
	if err != nil {
		return err
	}
	for uid, path := range o.pods {
		z.AddPod(uid, path)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 5)
	start := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	if ist != nil {
		start("xDS client", ist.XDS.Run)
	} else {
		start("local config", func(ctx context.Context) error {
			return localconfig.Watch(ctx, o.localConfig, func(snap state.Snapshot) {
				if err := store.Replace(snap); err != nil {
					logger.Warn("local config rejected by the state store; keeping the last good one", "err", err)
				}
			}, logger)
		})
	}
	start("admin server", srv.Run)
	if procs := gomaxprocs.Apply(o.procs, logger); procs != nil {
		start("gomaxprocs", procs.Run)
	}
	if o.netnsDir != "" {
		start("netns dir", func(ctx context.Context) error { return watchNetnsDir(ctx, o.netnsDir, z, logger) })
	}
	if o.cniSocket != "" {
		cni, err := cniserver.New(cniserver.Config{SocketPath: o.cniSocket, StateDir: o.cniStateDir, Pods: z, Logger: logger})
		if err != nil {
			return fmt.Errorf("--cni-socket: %w", err)
		}
		start("CNI server", cni.Run)
	}

	source := "local-config " + o.localConfig
	if ist != nil {
		source = "xds " + o.xdsAddress + ", ca " + o.caAddress
	}
	logger.Info("ztunnel started", "node", o.node, "trust_domain", td.String(), "config", source,
		"admin", lns[0].Addr().String(), "metrics", lns[1].Addr().String(), "ready", lns[2].Addr().String())
	zerr := z.Run(ctx) // returns once every pod is unenrolled
	cancel()
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	if zerr != nil {
		return zerr
	}
	if o.removeCapture {
		logger.Info("ztunnel drained: every pod's capture rules are removed; exiting")
	} else {
		logger.Info("ztunnel drained: the pods' capture rules stay for the next ztunnel; exiting")
	}
	return nil
}

// listen opens a listener, explaining the usual failures.
func listen(flagName, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	hint := "check the address"
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		hint = "another process uses the port: stop it, or choose another address with " + flagName
	case errors.Is(err, syscall.EACCES):
		hint = "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another with " + flagName
	}
	return nil, fmt.Errorf("%s %s: %w; %s", flagName, addr, err, hint)
}

// Linux capability numbers ztunnel needs: setns(2) into pod namespaces
// (CAP_SYS_ADMIN), and SO_MARK and nftables/iptables rules (CAP_NET_ADMIN).
const (
	capNetAdmin = 12
	capSysAdmin = 21
)

// checkPrivileges fails unless the process may enter pod network namespaces
// and install capture rules.
func checkPrivileges() error {
	caps, err := effectiveCaps()
	if err != nil {
		return fmt.Errorf("checking privileges: %w", err)
	}
	var missing []string
	if caps&(1<<capNetAdmin) == 0 {
		missing = append(missing, "CAP_NET_ADMIN")
	}
	if caps&(1<<capSysAdmin) == 0 {
		missing = append(missing, "CAP_SYS_ADMIN")
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("not privileged: missing %s, needed to enter pod network namespaces and install capture rules; run ztunnel as root (e.g. with sudo) or grant it CAP_NET_ADMIN and CAP_SYS_ADMIN",
		strings.Join(missing, " and "))
}

// effectiveCaps reads the CapEff mask of /proc/self/status.
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("/proc/self/status has no CapEff line")
}

// rootFileName is where a generated CA's root is written, next to the
// local config, so clients and tests can trust the mesh's certificates.
const rootFileName = "ztunnel-ca-root.pem"

// loadCA loads the CA of --ca-cert/--ca-key, or generates a self-signed one
// and writes its root next to the local config.
func loadCA(o options, td spiffeid.TrustDomain, logger *slog.Logger) (*ca.Authority, error) {
	if o.caCert != "" {
		a, err := ca.LoadFiles(o.caCert, o.caKey, o.caRoot, td, ca.Options{})
		if err != nil {
			return nil, fmt.Errorf("loading the CA from --ca-cert %s and --ca-key %s: %w", o.caCert, o.caKey, err)
		}
		logger.Info("CA loaded", "cert", o.caCert, "subject", a.Certificate().Subject.String(), "expires", a.Certificate().NotAfter)
		return a, nil
	}
	a, err := ca.NewSelfSigned(td, ca.Options{})
	if err != nil {
		return nil, err
	}
	path := filepath.Join(filepath.Dir(o.localConfig), rootFileName)
	if err := os.WriteFile(path, a.RootsPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("writing the generated CA root: %w; make %s writable, or pass --ca-cert and --ca-key", err, filepath.Dir(path))
	}
	logger.Info("no --ca-cert/--ca-key: generated a self-signed CA for this run; its root certificate is in the file below",
		"trust_domain", td.String(), "root", path)
	return a, nil
}

// scanNetnsDir lists dir's named network namespaces as pod uid → path. A
// name is the pod's uid, URL-escaped when it has slashes
// (cluster1%2F%2Fv1%2FPod%2Fshop%2Ffrontend-1).
func scanNetnsDir(dir string) (map[string]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	pods := make(map[string]string, len(entries))
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		uid, err := url.PathUnescape(e.Name())
		if err != nil {
			uid = e.Name()
		}
		pods[uid] = filepath.Join(dir, e.Name())
	}
	return pods, nil
}

// netnsRescan is how often --netns-dir is scanned again.
const netnsRescan = 5 * time.Second

// watchNetnsDir registers the namespaces of dir with z and keeps them in
// step with the directory until ctx ends.
func watchNetnsDir(ctx context.Context, dir string, z *ztunnel.Ztunnel, logger *slog.Logger) error {
	known := map[string]string{}
	t := time.NewTicker(netnsRescan)
	defer t.Stop()
	for {
		pods, err := scanNetnsDir(dir)
		if err != nil {
			logger.Warn("scanning --netns-dir failed; keeping the pods found before", "dir", dir, "err", err)
		} else {
			for uid, path := range pods {
				if known[uid] != path {
					logger.Info("pod network namespace found", "pod", uid, "netns", path)
					z.AddPod(uid, path)
				}
			}
			for uid := range known {
				if _, ok := pods[uid]; !ok {
					logger.Info("pod network namespace gone", "pod", uid)
					z.RemovePod(uid)
				}
			}
			known = pods
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
