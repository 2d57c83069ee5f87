// Package kubetest runs a real Kubernetes control plane for tests: etcd
// (Debian's etcd-server), kube-apiserver and, on request,
// kube-controller-manager and kube-scheduler, all built from source by
// hack/build-k8s.sh, with kubectl to drive them.
//
// Everything listens on 127.0.0.1 only, on ports that were free at start-up,
// and lives in a temporary directory: a self-signed CA and the apiserver's
// serving certificate for 127.0.0.1, the service-account key pair, a static
// token file with one admin token (group system:masters), the kubeconfig,
// etcd's data and one log file per process. The apiserver advertises
// 127.0.0.1 and allocates services from 10.96.0.0/16; since the endpoint
// reconciler refuses a loopback address it runs with
// --endpoint-reconciler-type=none, so default/kubernetes has no endpoints.
//
// There are no nodes: the scheduler leaves pods Pending.
//
//	c := kubetest.Start(t, kubetest.Options{ControllerManager: true})
//	out, err := c.Kubectl("get", "ns", "-o", "json")
//
// Start registers Stop with t.Cleanup; Stop terminates each process group
// (SIGTERM, then SIGKILL) and removes the directory. If the test failed, the
// tail of every log is written to the test log first.
//
// When the binaries are not built yet, Start skips the test with the command
// to run, unless CI=true, in which case it builds them (about 12 minutes the
// first time). When etcd is missing it skips, or under CI fails.
package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/controlplane"
)

// Version is the Kubernetes version hack/build-k8s.sh builds.
const Version = controlplane.Version

// ServiceCIDR is the apiserver's --service-cluster-ip-range.
const ServiceCIDR = controlplane.ServiceCIDR

// Timeouts.
const (
	readyTimeout   = 90 * time.Second // apiserver /readyz
	kubectlTimeout = 2 * time.Minute  // one kubectl invocation
	stopGrace      = 10 * time.Second // SIGTERM before SIGKILL
)

// Options says which optional components to run.
type Options struct {
	ControllerManager bool // kube-controller-manager, all controllers
	Scheduler         bool // kube-scheduler

	// ClusterCIDR, if set, makes the controller-manager allocate each Node a
	// pod CIDR from it (--allocate-node-cidrs --cluster-cidr).
	ClusterCIDR string

	// Extra flags appended to each component's command line.
	APIServerArgs, ControllerManagerArgs, SchedulerArgs []string
}

// Cluster is a running control plane. Its fields are read-only.
type Cluster struct {
	Dir        string // temporary directory holding certs, logs and data
	Kubeconfig string // path of an admin kubeconfig
	Server     string // https://127.0.0.1:<port>
	CAData     []byte // PEM of the CA that signed the serving certificate
	Token      string // bearer token of the admin user (group system:masters)
	BinDir     string // where kube-apiserver, kubectl, ... live

	t     testing.TB
	procs []*controlplane.Proc // in start order
	once  sync.Once
}

// Start starts a control plane and waits until the apiserver is ready. It
// skips or fails t when it cannot; see the package comment.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	binDir := findBinaries(t)
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kubetest: etcd not found (%v); run: hack/install-deps.sh test", err)
		}
		t.Skipf("kubetest: etcd not found (%v); run: hack/install-deps.sh test (Debian package etcd-server)", err)
	}
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	c := &Cluster{Dir: dir, BinDir: binDir, t: t}
	t.Cleanup(c.Stop)
	start := time.Now()
	if err := c.start(etcd, opts); err != nil {
		t.Fatal(err) // Stop, run by Cleanup, logs the tails of the logs

	}
	t.Logf("kubetest: control plane %s up in %v (dir %s)", c.Server, time.Since(start).Round(time.Millisecond), dir)
	return c
}

func (c *Cluster) start(etcdBin string, opts Options) error {
	p, err := controlplane.WritePKI(c.Dir, 24*time.Hour)
	if err != nil {
		return err
	}
	c.CAData = p.CAPEM
	ports, err := controlplane.FreePorts(6)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort, cmPort, schedPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	c.Server = "https://127.0.0.1:" + strconv.Itoa(apiPort)

	if c.Token, err = controlplane.NewToken(); err != nil {
		return err
	}
	tokenFile := filepath.Join(c.Dir, "tokens.csv")
	if err := controlplane.WriteTokenFile(tokenFile, c.Token, "kubetest-admin"); err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, controlplane.KubeconfigYAML("kubetest", c.Server, c.CAData, c.Token), 0o600); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	if err := c.run("etcd", etcdBin, controlplane.EtcdArgs(controlplane.Etcd{
		Name:      "kubetest",
		DataDir:   filepath.Join(c.Dir, "etcd"),
		ClientURL: etcdURL,
		PeerURL:   "http://127.0.0.1:" + strconv.Itoa(etcdPeer),
	})...); err != nil {
		return err
	}
	if err := c.run("kube-apiserver", filepath.Join(c.BinDir, "kube-apiserver"), controlplane.APIServerArgs(controlplane.APIServer{
		EtcdURL:     etcdURL,
		BindAddress: "127.0.0.1",
		Port:        apiPort,
		CertDir:     filepath.Join(c.Dir, "apiserver-certs"),
		PKI:         p,
		TokenFile:   tokenFile,
		ExtraArgs:   opts.APIServerArgs,
	})...); err != nil {
		return err
	}
	if err := c.waitReady(); err != nil {
		return err
	}
	if opts.ControllerManager {
		if err := c.run("kube-controller-manager", filepath.Join(c.BinDir, "kube-controller-manager"), controlplane.ControllerManagerArgs(controlplane.ControllerManager{
			Kubeconfig:  c.Kubeconfig,
			Port:        cmPort,
			CertDir:     filepath.Join(c.Dir, "controller-manager-certs"),
			PKI:         p,
			ClusterCIDR: opts.ClusterCIDR,
			ExtraArgs:   opts.ControllerManagerArgs,
		})...); err != nil {
			return err
		}
	}
	if opts.Scheduler {
		if err := c.run("kube-scheduler", filepath.Join(c.BinDir, "kube-scheduler"), controlplane.SchedulerArgs(controlplane.Scheduler{
			Kubeconfig: c.Kubeconfig,
			Port:       schedPort,
			CertDir:    filepath.Join(c.Dir, "scheduler-certs"),
			ExtraArgs:  opts.SchedulerArgs,
		})...); err != nil {
			return err
		}
	}
	return nil
}

// run starts one component and records it for Stop.
func (c *Cluster) run(name, bin string, args ...string) error {
	p, err := controlplane.StartProc(c.Dir, name, controlplane.ProcOptions{}, bin, args...)
	if err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	return nil
}

// Pids returns the process ids (each also a process-group id) of the
// running components, in start order.
func (c *Cluster) Pids() []int {
	pids := make([]int, len(c.procs))
	for i, p := range c.procs {
		pids[i] = p.Pid()
	}
	return pids
}

// HTTPClient returns a client that trusts the cluster's CA and sends the
// admin token.
func (c *Cluster) HTTPClient() *http.Client { return controlplane.HTTPClient(c.CAData, c.Token) }

// waitReady polls /readyz until it answers 200, the apiserver or etcd exits,
// or readyTimeout passes.
func (c *Cluster) waitReady() error {
	hc := c.HTTPClient()
	hc.Timeout = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	return controlplane.WaitReady(ctx, hc, c.Server, func() error {
		for _, p := range c.procs {
			if p.Exited() {
				return fmt.Errorf("kubetest: %s exited before the apiserver was ready: %v", p.Name, p.Err())
			}
		}
		return nil
	})
}

// Kubectl runs the built kubectl against the cluster and returns its
// standard output. On failure the error includes standard error.
func (c *Cluster) Kubectl(args ...string) ([]byte, error) {
	return c.kubectl(nil, args...)
}

func (c *Cluster) kubectl(stdin io.Reader, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), kubectlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "kubectl"),
		append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("kubetest: kubectl %s: %w: %s",
			strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// ApplyYAML runs kubectl apply with the given manifests on standard input.
func (c *Cluster) ApplyYAML(manifests string) error {
	_, err := c.kubectl(strings.NewReader(manifests), "apply", "-f", "-")
	return err
}

// ApplyFile runs kubectl apply -f path (a file or a directory).
func (c *Cluster) ApplyFile(path string) error {
	_, err := c.kubectl(nil, "apply", "-f", path)
	return err
}

// WaitEstablished waits up to a minute until the named CRDs (e.g.
// "crd/gateways.gateway.networking.k8s.io") are Established. kubectl wait
// fails outright on a CRD whose status has no conditions yet, so it is
// retried until the deadline.
func (c *Cluster) WaitEstablished(crds ...string) error {
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := c.kubectl(nil, append([]string{"wait", "--for=condition=Established", "--timeout=10s"}, crds...)...)
		if err == nil || time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("kubetest: CRDs not established: %w: %s", err, out)
			}
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Stop stops the components in reverse start order and removes Dir. If the
// test has failed, it logs the tail of each log first. It is safe to call
// more than once; Start registers it with t.Cleanup.
func (c *Cluster) Stop() {
	c.once.Do(func() {
		if c.t.Failed() {
			c.dumpLogs()
		}
		for i := len(c.procs) - 1; i >= 0; i-- {
			c.procs[i].Stop(stopGrace)
		}
		if err := os.RemoveAll(c.Dir); err != nil {
			c.t.Errorf("kubetest: remove %s: %v", c.Dir, err)
		}
	})
}

// dumpLogs writes the tail of each component's log to the test log.
func (c *Cluster) dumpLogs() {
	for _, p := range c.procs {
		c.t.Logf("kubetest: ---- %s log (tail) ----\n%s", p.Name, p.Tail(8<<10))
	}
}

// findBinaries returns the directory holding the built control plane,
// running hack/build-k8s.sh. Before building from scratch it skips the test
// unless CI=true.
func findBinaries(t testing.TB) string {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	if os.Getenv("CI") != "true" {
		if missing := controlplane.MissingBinaries(); len(missing) > 0 {
			t.Skipf("kubetest: Kubernetes %s binaries not built (%s); run: %s (about 12 minutes the first time)",
				Version, strings.Join(missing, ", "), filepath.Join(root, "hack", "build-k8s.sh"))
		}
	}
	dir, err := controlplane.FindBinaries(root, nil)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return dir
}
