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
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
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
)

// Version is the Kubernetes version hack/build-k8s.sh builds.
const Version = "v1.37.2"

// ServiceCIDR is the apiserver's --service-cluster-ip-range.
const ServiceCIDR = "10.96.0.0/16"

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
	procs []*proc // in start order
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
	p, err := writePKI(c.Dir)
	if err != nil {
		return err
	}
	c.CAData = p.caPEM
	ports, err := freePorts(6)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort, cmPort, schedPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	c.Server = "https://127.0.0.1:" + strconv.Itoa(apiPort)

	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return fmt.Errorf("kubetest: token: %w", err)
	}
	c.Token = hex.EncodeToString(tok)
	tokenFile := filepath.Join(c.Dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(c.Token+`,kubetest-admin,kubetest-admin,"system:masters"`+"\n"), 0o600); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, c.kubeconfigYAML(), 0o600); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	if err := c.run("etcd", etcdBin,
		"--name=kubetest",
		"--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		"--logger=zap",
		"--log-level=warn",
	); err != nil {
		return err
	}

	if err := c.run("kube-apiserver", filepath.Join(c.BinDir, "kube-apiserver"), append([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The endpoint reconciler refuses a loopback advertise address; with
		// none, the default/kubernetes Service simply has no endpoints.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(c.Dir, "apiserver-certs"),
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servKey,
		"--client-ca-file=" + p.caCert,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--allow-privileged=true",
		// Published in kube-system/extension-apiserver-authentication;
		// without it the other components log an error every few seconds.
		"--requestheader-client-ca-file=" + p.caCert,
		"--requestheader-allowed-names=kubetest-front-proxy",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--profiling=false",
	}, opts.APIServerArgs...)...); err != nil {
		return err
	}
	if err := c.waitReady(); err != nil {
		return err
	}

	if opts.ControllerManager {
		args := []string{
			"--kubeconfig=" + c.Kubeconfig,
			"--authentication-kubeconfig=" + c.Kubeconfig,
			"--authorization-kubeconfig=" + c.Kubeconfig,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(cmPort),
			"--cert-dir=" + filepath.Join(c.Dir, "controller-manager-certs"),
			"--controllers=*",
			"--leader-elect=false",
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + p.saKey,
			"--root-ca-file=" + p.caCert,
			"--cluster-signing-cert-file=" + p.caCert,
			"--cluster-signing-key-file=" + p.caKey,
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--profiling=false",
		}
		if opts.ClusterCIDR != "" {
			args = append(args, "--allocate-node-cidrs=true", "--cluster-cidr="+opts.ClusterCIDR)
		}
		args = append(args, opts.ControllerManagerArgs...)
		if err := c.run("kube-controller-manager", filepath.Join(c.BinDir, "kube-controller-manager"), args...); err != nil {
			return err
		}
	}
	if opts.Scheduler {
		if err := c.run("kube-scheduler", filepath.Join(c.BinDir, "kube-scheduler"), append([]string{
			"--kubeconfig=" + c.Kubeconfig,
			"--authentication-kubeconfig=" + c.Kubeconfig,
			"--authorization-kubeconfig=" + c.Kubeconfig,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(schedPort),
			"--cert-dir=" + filepath.Join(c.Dir, "scheduler-certs"),
			"--leader-elect=false",
			"--profiling=false",
		}, opts.SchedulerArgs...)...); err != nil {
			return err
		}
	}
	return nil
}

// run starts one component and records it for Stop.
func (c *Cluster) run(name, bin string, args ...string) error {
	p, err := startProc(c.Dir, name, bin, args...)
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
func (c *Cluster) HTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAData)
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &bearer{token: c.Token, next: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		}},
	}
}

// bearer adds an Authorization header to each request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// waitReady polls /readyz until it answers 200, the apiserver or etcd exits,
// or readyTimeout passes.
func (c *Cluster) waitReady() error {
	hc := c.HTTPClient()
	hc.Timeout = 2 * time.Second
	deadline := time.Now().Add(readyTimeout)
	var last string
	for time.Now().Before(deadline) {
		for _, p := range c.procs {
			if p.exited() {
				return fmt.Errorf("kubetest: %s exited before the apiserver was ready: %v", p.name, p.err)
			}
		}
		resp, err := hc.Get(c.Server + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, body)
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("kubetest: apiserver %s not ready after %v: %s", c.Server, readyTimeout, last)
}

func (c *Cluster) kubeconfigYAML() []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: kubetest-admin
  user:
    token: %s
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: kubetest-admin
current-context: kubetest
`, c.Server, base64.StdEncoding.EncodeToString(c.CAData), c.Token))
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

// Stop stops the components in reverse start order and removes Dir. If the
// test has failed, it logs the tail of each log first. It is safe to call
// more than once; Start registers it with t.Cleanup.
func (c *Cluster) Stop() {
	c.once.Do(func() {
		if c.t.Failed() {
			c.dumpLogs()
		}
		for i := len(c.procs) - 1; i >= 0; i-- {
			c.procs[i].stop(stopGrace)
		}
		if err := os.RemoveAll(c.Dir); err != nil {
			c.t.Errorf("kubetest: remove %s: %v", c.Dir, err)
		}
	})
}

// dumpLogs writes the tail of each component's log to the test log.
func (c *Cluster) dumpLogs() {
	for _, p := range c.procs {
		c.t.Logf("kubetest: ---- %s log (tail) ----\n%s", p.name, p.tail(8<<10))
	}
}

// findBinaries returns the directory holding the built control plane,
// running hack/build-k8s.sh. Before building from scratch it skips the test
// unless CI=true.
func findBinaries(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("kubetest: find the repository root with go list -m: %v", err)
	}
	root := strings.TrimSpace(string(out))
	script := filepath.Join(root, "hack", "build-k8s.sh")
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("kubetest: %v (is %s the ambient repository?)", err, root)
	}
	if os.Getenv("CI") != "true" {
		if missing := missingBinaries(); len(missing) > 0 {
			t.Skipf("kubetest: Kubernetes %s binaries not built (%s); run: %s (about 12 minutes the first time)",
				Version, strings.Join(missing, ", "), script)
		}
	}
	cmd := exec.Command(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("kubetest: %s failed: %v\n%s", script, err, stderr.String())
	}
	dir := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(dir, '\n'); i >= 0 {
		dir = dir[i+1:]
	}
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("kubetest: %s printed %q but: %v", script, dir, err)
		}
	}
	return dir
}

var binaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"}

// missingBinaries lists the binaries not yet in hack/build-k8s.sh's cache.
func missingBinaries() []string {
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return binaries
		}
		cache = filepath.Join(home, ".cache")
	}
	var missing []string
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(cache, "ambient", "k8s", Version, b)); err != nil {
			missing = append(missing, b)
		}
	}
	return missing
}
