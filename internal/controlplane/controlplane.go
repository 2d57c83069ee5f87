// Package controlplane holds what it takes to run a Kubernetes control
// plane from the binaries hack/build-k8s.sh builds, shared by the test
// harness (internal/kubetest) and the long-running local cluster
// (localcluster): the PKI (WritePKI), the component command lines
// (EtcdArgs, APIServerArgs, ControllerManagerArgs, SchedulerArgs), the
// admin token file and kubeconfig, processes in their own process groups
// with a log file each (StartProc), the /readyz wait, and finding or
// building the binaries (FindBinaries).
//
// It starts nothing by itself and knows nothing of tests or namespaces.
package controlplane

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
	"time"
)

// Version is the Kubernetes version hack/build-k8s.sh builds.
const Version = "v1.37.2"

// ServiceCIDR is the default --service-cluster-ip-range.
const ServiceCIDR = "10.96.0.0/16"

// Binaries are the programs hack/build-k8s.sh builds.
var Binaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"}

// Etcd describes etcd's listeners.
type Etcd struct {
	Name              string
	DataDir           string
	ClientURL         string // http://127.0.0.1:<port>
	PeerURL           string
	ExtraArgs         []string
	LogLevel          string // default warn
	UnsafeNoFsync     bool   // for throw-away clusters
	QuotaBackendBytes int64  // 0: etcd's default
}

// EtcdArgs is etcd's command line.
func EtcdArgs(e Etcd) []string {
	lvl := e.LogLevel
	if lvl == "" {
		lvl = "warn"
	}
	args := []string{
		"--name=" + e.Name,
		"--data-dir=" + e.DataDir,
		"--listen-client-urls=" + e.ClientURL,
		"--advertise-client-urls=" + e.ClientURL,
		"--listen-peer-urls=" + e.PeerURL,
		"--initial-advertise-peer-urls=" + e.PeerURL,
		"--initial-cluster=" + e.Name + "=" + e.PeerURL,
		"--logger=zap",
		"--log-level=" + lvl,
	}
	if e.UnsafeNoFsync {
		args = append(args, "--unsafe-no-fsync")
	}
	if e.QuotaBackendBytes > 0 {
		args = append(args, "--quota-backend-bytes="+strconv.FormatInt(e.QuotaBackendBytes, 10))
	}
	return append(args, e.ExtraArgs...)
}

// APIServer describes kube-apiserver's settings.
type APIServer struct {
	EtcdURL       string
	BindAddress   string // 127.0.0.1, or an address of the host link
	AdvertiseAddr string // default BindAddress
	Port          int
	CertDir       string
	PKI           *PKI
	TokenFile     string
	ServiceCIDR   string // default ServiceCIDR
	ExtraArgs     []string
}

// APIServerArgs is kube-apiserver's command line. With a loopback
// advertise address the endpoint reconciler is turned off (it refuses
// one), so default/kubernetes then has no endpoints.
func APIServerArgs(a APIServer) []string {
	adv := a.AdvertiseAddr
	if adv == "" {
		adv = a.BindAddress
	}
	svc := a.ServiceCIDR
	if svc == "" {
		svc = ServiceCIDR
	}
	args := []string{
		"--etcd-servers=" + a.EtcdURL,
		"--bind-address=" + a.BindAddress,
		"--advertise-address=" + adv,
	}
	if strings.HasPrefix(adv, "127.") {
		args = append(args, "--endpoint-reconciler-type=none")
	}
	args = append(args,
		"--secure-port="+strconv.Itoa(a.Port),
		"--cert-dir="+a.CertDir,
		"--tls-cert-file="+a.PKI.ServingCert,
		"--tls-private-key-file="+a.PKI.ServingKey,
		"--client-ca-file="+a.PKI.CACert,
		"--token-auth-file="+a.TokenFile,
		"--authorization-mode=RBAC",
		"--service-account-key-file="+a.PKI.SAPub,
		"--service-account-signing-key-file="+a.PKI.SAKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+svc,
		"--allow-privileged=true",
		// Nodes are reached (logs, exec, port-forward) at their InternalIP:
		// resolving a node's name would send a DNS query off the machine.
		"--kubelet-preferred-address-types=InternalIP",
		// The identity kubelets (the node agent's kubelet API) require.
		"--kubelet-client-certificate="+a.PKI.KubeletClientCert,
		"--kubelet-client-key="+a.PKI.KubeletClientKey,
		// Published in kube-system/extension-apiserver-authentication;
		// without it the other components log an error every few seconds.
		"--requestheader-client-ca-file="+a.PKI.CACert,
		"--requestheader-allowed-names=ambient-front-proxy",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--profiling=false",
	)
	return append(args, a.ExtraArgs...)
}

// ControllerManager describes kube-controller-manager's settings.
type ControllerManager struct {
	Kubeconfig  string
	Port        int
	CertDir     string
	PKI         *PKI
	ServiceCIDR string // default ServiceCIDR
	// ClusterCIDR, if set, makes it allocate each Node a pod CIDR from it
	// (--allocate-node-cidrs --cluster-cidr).
	ClusterCIDR string
	ExtraArgs   []string
}

// ControllerManagerArgs is kube-controller-manager's command line: every
// controller, no leader election, on 127.0.0.1.
func ControllerManagerArgs(c ControllerManager) []string {
	svc := c.ServiceCIDR
	if svc == "" {
		svc = ServiceCIDR
	}
	args := []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--authentication-kubeconfig=" + c.Kubeconfig,
		"--authorization-kubeconfig=" + c.Kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.Port),
		"--cert-dir=" + c.CertDir,
		"--controllers=*",
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + c.PKI.SAKey,
		"--root-ca-file=" + c.PKI.CACert,
		"--cluster-signing-cert-file=" + c.PKI.CACert,
		"--cluster-signing-key-file=" + c.PKI.CAKey,
		"--service-cluster-ip-range=" + svc,
		"--profiling=false",
	}
	if c.ClusterCIDR != "" {
		args = append(args, "--allocate-node-cidrs=true", "--cluster-cidr="+c.ClusterCIDR)
	}
	return append(args, c.ExtraArgs...)
}

// Scheduler describes kube-scheduler's settings.
type Scheduler struct {
	Kubeconfig string
	Port       int
	CertDir    string
	ExtraArgs  []string
}

// SchedulerArgs is kube-scheduler's command line.
func SchedulerArgs(s Scheduler) []string {
	return append([]string{
		"--kubeconfig=" + s.Kubeconfig,
		"--authentication-kubeconfig=" + s.Kubeconfig,
		"--authorization-kubeconfig=" + s.Kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(s.Port),
		"--cert-dir=" + s.CertDir,
		"--leader-elect=false",
		"--profiling=false",
	}, s.ExtraArgs...)
}

// NewToken returns a random admin bearer token.
func NewToken() (string, error) {
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return "", fmt.Errorf("controlplane: token: %w", err)
	}
	return hex.EncodeToString(tok), nil
}

// WriteTokenFile writes a static token file with one admin user (group
// system:masters).
func WriteTokenFile(path, token, user string) error {
	line := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n", token, user, user)
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	return nil
}

// KubeconfigYAML is an admin kubeconfig with one cluster, user and context,
// all called name.
func KubeconfigYAML(name, server string, caPEM []byte, token string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: %[2]s
    certificate-authority-data: %[3]s
users:
- name: %[1]s-admin
  user:
    token: %[4]s
contexts:
- name: %[1]s
  context:
    cluster: %[1]s
    user: %[1]s-admin
current-context: %[1]s
`, name, server, base64.StdEncoding.EncodeToString(caPEM), token))
}

// HTTPClient returns a client that trusts caPEM and sends the bearer token.
func HTTPClient(caPEM []byte, token string) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &bearer{token: token, next: &http.Transport{
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

// WaitReady polls server's /readyz until it answers 200, check returns an
// error (say, a component exited), or ctx ends.
func WaitReady(ctx context.Context, hc *http.Client, server string, check func() error) error {
	var last string
	for {
		if check != nil {
			if err := check(); err != nil {
				return err
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		resp, err := hc.Do(req)
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
		select {
		case <-ctx.Done():
			return fmt.Errorf("controlplane: apiserver %s not ready: %s (%w)", server, last, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// RepoRoot returns the module root of the current directory (go list -m).
func RepoRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("controlplane: find the repository root with go list -m: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// CacheDir is where hack/build-k8s.sh leaves the binaries.
func CacheDir() string {
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "ambient", "k8s", Version)
}

// MissingBinaries lists the Binaries not yet in hack/build-k8s.sh's cache.
func MissingBinaries() []string {
	dir := CacheDir()
	var missing []string
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(dir, b)); dir == "" || err != nil {
			missing = append(missing, b)
		}
	}
	return missing
}

// FindBinaries runs repoRoot/hack/build-k8s.sh (which builds what is
// missing, its progress going to progress) and returns the directory it
// prints.
func FindBinaries(repoRoot string, progress io.Writer) (string, error) {
	script := filepath.Join(repoRoot, "hack", "build-k8s.sh")
	if _, err := os.Stat(script); err != nil {
		return "", fmt.Errorf("controlplane: %w (is %s the ambient repository?)", err, repoRoot)
	}
	cmd := exec.Command(script)
	var stderr bytes.Buffer
	if progress != nil {
		cmd.Stderr = io.MultiWriter(&stderr, progress)
	} else {
		cmd.Stderr = &stderr
	}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("controlplane: %s failed: %v\n%s", script, err, stderr.String())
	}
	dir := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(dir, '\n'); i >= 0 {
		dir = dir[i+1:]
	}
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("controlplane: %s printed %q but: %w", script, dir, err)
		}
	}
	return dir, nil
}

// Unwrap returns the transport under the bearer token.
func (b *bearer) Unwrap() http.RoundTripper { return b.next }
