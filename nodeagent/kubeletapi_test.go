package nodeagent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambientmesh/ambient/nodeagent/images"
	"github.com/ambientmesh/ambient/nodeagent/kubeletapi"
)

// kubectlTimeout bounds one kubectl run.
const kubectlTimeout = 30 * time.Second

const kubeletNS = "kubelet-test"

// kubectl runs the cluster's kubectl and returns stdout, stderr and the
// exit code (-1: it could not run).
func (c *cluster) kubectl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), kubectlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.kc.BinDir, "kubectl"), append([]string{"--kubeconfig=" + c.kc.Kubeconfig, "-n", kubeletNS}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("kubectl %q: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// kubectlBackground is a long-running kubectl (logs -f, port-forward)
// whose stdout is read line by line; it is killed when the test ends.
type kubectlBackground struct {
	lines  chan string
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex // guards stderr
	stderr bytes.Buffer
}

func (c *cluster) kubectlStart(t *testing.T, args ...string) *kubectlBackground {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	cmd := exec.CommandContext(ctx, filepath.Join(c.kc.BinDir, "kubectl"), append([]string{"--kubeconfig=" + c.kc.Kubeconfig, "-n", kubeletNS}, args...)...)
	k := &kubectlBackground{lines: make(chan string, 100), cancel: cancel, done: make(chan struct{})}
	cmd.Stderr = lockedWriter{&k.mu, &k.stderr}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer close(k.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case k.lines <- sc.Text():
			default: // nobody reads that far
			}
		}
		_ = cmd.Wait()
		close(k.lines)
	}()
	t.Cleanup(k.stop)
	return k
}

func (k *kubectlBackground) stop() {
	k.cancel()
	<-k.done
}

func (k *kubectlBackground) errOutput() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stderr.String()
}

// waitLine reads lines until one matches re.
func (k *kubectlBackground) waitLine(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case l, ok := <-k.lines:
			if !ok {
				t.Fatalf("kubectl ended before printing a line matching %s; stderr: %s", re, k.errOutput())
			}
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-timeout:
			t.Fatalf("no line matching %s after %v; stderr: %s", re, waitTimeout, k.errOutput())
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// curlImage is the built-in table's client image.
func curlImage(t *testing.T) images.Entry {
	for _, e := range images.Default {
		if e.Image == "ambient/curl:*" {
			return e
		}
	}
	t.Fatal("the default image table has no ambient/curl entry")
	return images.Entry{}
}

// createPod creates a pod in kubeletNS, retrying until the namespace's
// default ServiceAccount exists.
func (c *cluster) createPod(t *testing.T, ctx context.Context, pod *v1.Pod) *v1.Pod {
	t.Helper()
	var created *v1.Pod
	waitFor(t, "pod "+pod.Name+" created", func() (bool, string) {
		var err error
		created, err = c.client.CoreV1().Pods(kubeletNS).Create(ctx, pod, metav1.CreateOptions{})
		return err == nil, fmt.Sprint(err)
	})
	return created
}

func (c *cluster) waitPod(t *testing.T, ctx context.Context, name string, cond func(*v1.Pod) bool) *v1.Pod {
	t.Helper()
	var p *v1.Pod
	waitFor(t, name+" ready", func() (bool, string) {
		var err error
		p, err = c.client.CoreV1().Pods(kubeletNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return cond(p), fmt.Sprintf("phase=%s %+v", p.Status.Phase, p.Status.ContainerStatuses)
	})
	return p
}

func TestKubeletAPI_KubectlLogsExecPortForward(t *testing.T) {
	c := newClusterWith(t, clusterOptions{kubeletAPI: true, images: []images.Entry{curlImage(t)}})
	c.requireHostRoute(t)
	ctx := context.Background()
	if _, err := c.client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kubeletNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	trigger := filepath.Join(t.TempDir(), "trigger")
	// toolbox (node 1): ambient/curl running sh, which logs three lines,
	// a fourth once the trigger file exists, then sleeps.
	box := testContainer()
	box.Name, box.Image = "box", "ambient/curl:latest"
	box.Command = []string{"sh", "-c", fmt.Sprintf(`echo one; echo two; echo three; while [ ! -e %s ]; do sleep 0.1; done; echo later; exec sleep 3600`, trigger)}
	grace := int64(1)
	c.createPod(t, ctx, &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "toolbox"},
		Spec: v1.PodSpec{NodeName: "node-1", TerminationGracePeriodSeconds: &grace, Containers: []v1.Container{box}}})
	// web (node 2): testapp serving HTTP.
	web := testContainer("--listen=:8080")
	web.ReadinessProbe = &v1.Probe{ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}
	c.createPod(t, ctx, &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: v1.PodSpec{NodeName: "node-2", TerminationGracePeriodSeconds: &grace, Containers: []v1.Container{web}}})
	boxPod := c.waitPod(t, ctx, "toolbox", podReady)
	webPod := c.waitPod(t, ctx, "web", podReady)

	t.Run("NodeReportsItsKubeletPort", func(t *testing.T) {
		n, err := c.client.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := n.Status.DaemonEndpoints.KubeletEndpoint.Port; got != 10250 {
			t.Errorf("daemonEndpoints.kubeletEndpoint.port = %d, want 10250", got)
		}
	})

	t.Run("Logs", func(t *testing.T) {
		waitFor(t, "the first three lines", func() (bool, string) {
			out, errOut, code := c.kubectl(t, "logs", "toolbox")
			return code == 0 && out == "one\ntwo\nthree\n", fmt.Sprintf("%d %q %q", code, out, errOut)
		})
		if out, errOut, code := c.kubectl(t, "logs", "--tail=1", "toolbox"); code != 0 || out != "three\n" {
			t.Errorf("logs --tail=1: %d %q %q", code, out, errOut)
		}
		if _, errOut, code := c.kubectl(t, "logs", "--previous", "toolbox"); code == 0 || !strings.Contains(errOut, "keeps one log per container") {
			t.Errorf("logs --previous: %d %q", code, errOut)
		}
		f := c.kubectlStart(t, "logs", "-f", "toolbox")
		f.waitLine(t, regexp.MustCompile(`^three$`))
		if err := os.WriteFile(trigger, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		f.waitLine(t, regexp.MustCompile(`^later$`))
		f.stop()
	})

	t.Run("ExecSeesTheContainerEnvAndResolvConf", func(t *testing.T) {
		out, errOut, code := c.kubectl(t, "exec", "toolbox", "--", "sh", "-c", "echo $POD_NAME; cat /etc/resolv.conf")
		if code != 0 || !strings.HasPrefix(out, "toolbox\n") || !strings.Contains(out, "nameserver "+clusterDNS) ||
			!strings.Contains(out, "search "+kubeletNS+".svc.cluster.local") {
			t.Errorf("exec: %d stdout %q stderr %q", code, out, errOut)
		}
		// Exit codes and stdin pass through.
		cmd := exec.Command(filepath.Join(c.kc.BinDir, "kubectl"), "--kubeconfig="+c.kc.Kubeconfig, "-n", kubeletNS,
			"exec", "-i", "toolbox", "--", "sh", "-c", "cat; exit 3")
		cmd.Stdin = strings.NewReader("from stdin\n")
		var stdout bytes.Buffer
		cmd.Stdout = &stdout
		cmd.WaitDelay = kubectlTimeout
		err := runWithTimeout(cmd, kubectlTimeout)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 || stdout.String() != "from stdin\n" {
			t.Errorf("exec -i cat; exit 3: %v, stdout %q", err, stdout.String())
		}
	})

	t.Run("ExecOfAProgramTheImageLacksFails", func(t *testing.T) {
		_, errOut, code := c.kubectl(t, "exec", "toolbox", "--", "ls", "/")
		if code != 126 || !strings.Contains(errOut, `command "ls" is not provided by the image`) || !strings.Contains(errOut, images.Doc) {
			t.Errorf("exec ls: exit %d, stderr %q; want 126 naming the image table", code, errOut)
		}
	})

	t.Run("ExecCurlReachesAnotherPodFromThePodNamespace", func(t *testing.T) {
		out, errOut, code := c.kubectl(t, "exec", "toolbox", "--", "curl", "-sS", "--max-time", "5", "http://"+net.JoinHostPort(webPod.Status.PodIP, "8080")+"/")
		if code != 0 || !strings.Contains(out, `"pod":"web"`) {
			t.Fatalf("exec curl: %d %q %q", code, out, errOut)
		}
		// The caller is the toolbox pod's own IP: the command ran in its
		// network namespace.
		if !strings.Contains(out, `"remote":"`+boxPod.Status.PodIP+`:`) {
			t.Errorf("web saw the call from elsewhere than %s: %s", boxPod.Status.PodIP, out)
		}
	})

	t.Run("PortForwardCarriesHTTP", func(t *testing.T) {
		pf := c.kubectlStart(t, "port-forward", "pod/web", ":8080")
		m := pf.waitLine(t, regexp.MustCompile(`^Forwarding from 127\.0\.0\.1:(\d+) -> 8080$`))
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		body := get(t, hc, "http://127.0.0.1:"+m[1]+"/")
		if !strings.Contains(body, `"pod":"web"`) {
			t.Errorf("through port-forward: %s", body)
		}
		// The app saw the connection come from the pod's own loopback.
		if !strings.Contains(body, `"remote":"127.0.0.1:`) {
			t.Errorf("port-forward did not dial the pod's loopback: %s", body)
		}
		pf.stop()

		bad := c.kubectlStart(t, "port-forward", "pod/web", ":9")
		m = bad.waitLine(t, regexp.MustCompile(`^Forwarding from 127\.0\.0\.1:(\d+) -> 9$`))
		// Each request is a new stream pair. The refusal comes back so fast
		// that kubectl may see its data stream reset before it reads the
		// error stream ("Error creating forwarding stream"), so a request
		// is sent again until kubectl reports the refusal itself.
		waitFor(t, "kubectl to report the refused port", func() (bool, string) {
			if resp, err := hc.Get("http://127.0.0.1:" + m[1] + "/"); err == nil {
				resp.Body.Close()
				t.Fatalf("a request to a closed port got %s", resp.Status)
			}
			e := bad.errOutput()
			return strings.Contains(e, "error forwarding port 9") && strings.Contains(e, "connection refused"), e
		})
		bad.stop()
	})

	t.Run("ExecReadinessProbeWaitsForTheFile", func(t *testing.T) {
		dir := t.TempDir()
		probed, ready := filepath.Join(dir, "probed"), filepath.Join(dir, "ready")
		ctr := testContainer()
		ctr.Name, ctr.Image = "gated", "ambient/curl:latest"
		ctr.Command = []string{"sh", "-c", "exec sleep 3600"}
		ctr.ReadinessProbe = &v1.Probe{ProbeHandler: v1.ProbeHandler{Exec: &v1.ExecAction{
			Command: []string{"sh", "-c", fmt.Sprintf("echo >> %s; cat %s", probed, ready)}}},
			PeriodSeconds: 1, TimeoutSeconds: 5}
		c.createPod(t, ctx, &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "gated"},
			Spec: v1.PodSpec{NodeName: "node-2", TerminationGracePeriodSeconds: &grace, Containers: []v1.Container{ctr}}})
		waitFor(t, "two failed probes", func() (bool, string) {
			b, err := os.ReadFile(probed)
			return err == nil && bytes.Count(b, []byte("\n")) >= 2, fmt.Sprint(err)
		})
		p, err := c.client.CoreV1().Pods(kubeletNS).Get(ctx, "gated", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase != v1.PodRunning || podReady(p) {
			t.Fatalf("before the file exists: phase %s ready %v, want Running and not ready", p.Status.Phase, podReady(p))
		}
		if err := os.WriteFile(ready, []byte("ok\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c.waitPod(t, ctx, "gated", podReady)
	})

	t.Run("ClientCertificatesOfAnotherCAAreRefused", func(t *testing.T) {
		addr := net.JoinHostPort(c.topo.Nodes[0].IP.String(), "10250")
		clusterCA := loadCA(t, filepath.Join(c.kc.Dir, "ca.crt"), filepath.Join(c.kc.Dir, "ca.key"))
		other := newTestCA(t)
		apiserver, err := tls.LoadX509KeyPair(filepath.Join(c.kc.Dir, "apiserver-kubelet-client.crt"), filepath.Join(c.kc.Dir, "apiserver-kubelet-client.key"))
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			cert *tls.Certificate
			path string
			want int // 0: the handshake fails
		}{
			{"another CA's master", ptrTo(mintClient(t, other, kubeletapi.KubeletClientCN, "system:masters")), "", 0},
			{"no certificate", nil, "", 0},
			{"a node of the cluster CA", ptrTo(mintClient(t, clusterCA, "system:node:node-2", "system:nodes")), "", http.StatusForbidden},
			{"the apiserver", &apiserver, "", http.StatusOK},
			// (the apiserver checks container names before it asks)
			{"the apiserver, for an unknown container", &apiserver, "/containerLogs/" + kubeletNS + "/toolbox/nope", http.StatusNotFound},
		} {
			cfg := &tls.Config{InsecureSkipVerify: true} // the serving certificate is self-signed
			if tc.cert != nil {
				cfg.Certificates = []tls.Certificate{*tc.cert}
			}
			hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
			path := tc.path
			if path == "" {
				path = "/containerLogs/" + kubeletNS + "/toolbox/box"
			}
			resp, err := hc.Get("https://" + addr + path)
			switch {
			case tc.want == 0 && err == nil:
				resp.Body.Close()
				t.Errorf("%s: %s, want the handshake refused", tc.name, resp.Status)
			case tc.want != 0 && err != nil:
				t.Errorf("%s: %v, want %d", tc.name, err, tc.want)
			case tc.want != 0:
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Errorf("%s: %s %q, want %d", tc.name, resp.Status, body, tc.want)
				}
				if tc.want == http.StatusNotFound && !strings.Contains(string(body), `container "nope" is not in pod kubelet-test/toolbox (its containers: box)`) {
					t.Errorf("%s: %q, want a message naming the pod's containers", tc.name, body)
				}
			}
		}
	})

	for _, name := range []string{"toolbox", "web", "gated"} {
		c.deleteAndWaitIn(t, ctx, kubeletNS, name)
	}
}

// requireHostRoute fails early when this namespace reaches the nodes'
// addresses by another link than the topology's host link (a local
// cluster, localcluster/, holds the same addresses): the apiserver would
// call another node's port 10250.
func (c *cluster) requireHostRoute(t *testing.T) {
	t.Helper()
	ip := c.topo.Nodes[0].IP.String()
	out, err := exec.Command("ip", "route", "get", ip).CombinedOutput()
	if err != nil {
		t.Fatalf("ip route get %s: %v: %s", ip, err, out)
	}
	if f := strings.Fields(string(out)); !slices.Contains(f, c.topo.Host.Iface) {
		t.Fatalf("this network namespace reaches %s by %q, not by the test's host link %s: another cluster "+
			"(localcluster) holds 172.30.0.0/24 here; stop it, or run the test in a namespace of its own "+
			"(unshare -n sh -c 'ip link set lo up && go test ...')", ip, strings.TrimSpace(string(out)), c.topo.Host.Iface)
	}
}

func (c *cluster) deleteAndWaitIn(t *testing.T, ctx context.Context, ns, name string) {
	t.Helper()
	err := c.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !strings.Contains(err.Error(), "not found") {
		t.Fatal(err)
	}
	waitFor(t, name+" gone", func() (bool, string) {
		_, err := c.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return err != nil && strings.Contains(err.Error(), "not found"), fmt.Sprint(err)
	})
}

func runWithTimeout(cmd *exec.Cmd, d time.Duration) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		_ = cmd.Process.Kill()
		return fmt.Errorf("%s: timed out after %v: %w", cmd.Path, d, <-done)
	}
}

func ptrTo[T any](v T) *T { return &v }

type testCA struct {
	cert *x509.Certificate
	key  any
}

func newTestCA(t *testing.T) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not-the-cluster-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return testCA{cert: cert, key: key}
}

func loadCA(t *testing.T, certFile, keyFile string) testCA {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(certFile)
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: cert, key: pair.PrivateKey}
}

func mintClient(t *testing.T, ca testCA, cn string, orgs ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
