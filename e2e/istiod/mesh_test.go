package istiod

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/ztunnel/admin"
)

// waitTimeout bounds every wait for a condition.
const waitTimeout = 30 * time.Second

// binDir holds the binaries built once per test run (see binaries).
var (
	binDir    string
	buildOnce sync.Once
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "e2e-istiod-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// binaries builds cmd/ztunnel and cmd/istiod-lite once and returns their
// paths.
func binaries(t *testing.T) (ztunnel, istiod string) {
	t.Helper()
	buildOnce.Do(func() {
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			buildErr = fmt.Errorf("go list -m: %w", err)
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/ztunnel", "./cmd/istiod-lite")
		cmd.Dir = strings.TrimSpace(string(root))
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "ztunnel"), filepath.Join(binDir, "istiod-lite")
}

// proc is a process the test started, in its own process group.
type proc struct {
	name     string
	cmd      *exec.Cmd
	log      string
	done     chan struct{}
	stopOnce sync.Once
}

// startProc runs bin with args, inside ns unless ns is nil (root namespace),
// logging to a file; Cleanup stops its process group (SIGTERM, then SIGKILL)
// and, if the test failed, writes the log's tail to the test log.
func startProc(t *testing.T, name string, ns *testenv.NS, bin string, args ...string) *proc {
	t.Helper()
	var cmd *exec.Cmd
	if ns != nil {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proc{name: name, cmd: cmd, log: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s log (tail):\n%s", name, tail(p.log, 40))
		}
	})
	return p
}

// stop sends SIGTERM to the process group, SIGKILL after 10 s, and waits.
func (p *proc) stop() {
	p.stopOnce.Do(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
}

// kill sends SIGKILL to the process group and waits for the process.
func (p *proc) kill() {
	p.stopOnce.Do(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waitFor polls cond every 20 ms until it holds, failing t after waitTimeout.
// cond returns a description of what it saw, for the failure message.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last seen: %s", waitTimeout, what, seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePort returns a TCP port free on host right now.
func freePort(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func httpGet(client *http.Client, url string) (int, string) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, string(b)
}

// Pods of the mesh: shop/<name> is topology pod (node, index).
type podSpec struct {
	name, sa, app string
	node, index   int
}

var (
	alice  = podSpec{"alice", "alice", "alice", 1, 1}
	bob    = podSpec{"bob", "bob", "bob", 1, 2}
	server = podSpec{"server", "server", "server", 2, 1}
	late   = podSpec{"late", "late", "late", 2, 2} // created by the tests
)

func (p podSpec) uid() string { return "Kubernetes//Pod/shop/" + p.name }
func (p podSpec) id() string  { return "spiffe://cluster.local/ns/shop/sa/" + p.sa }

// clusterYAML is everything but the app pods: the namespaces, the ztunnel
// ServiceAccount with one ztunnel pod per node (the objects its tokens are
// bound to), the nodes, the apps' ServiceAccounts and a Service.
const clusterYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: ztunnel, namespace: istio-system}
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node-1, namespace: istio-system, labels: {app: ztunnel}}
spec:
  nodeName: node-1
  serviceAccountName: ztunnel
  hostNetwork: true
  containers: [{name: ztunnel, image: ztunnel}]
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node-2, namespace: istio-system, labels: {app: ztunnel}}
spec:
  nodeName: node-2
  serviceAccountName: ztunnel
  hostNetwork: true
  containers: [{name: ztunnel, image: ztunnel}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: alice, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bob, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: late, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: shop}
spec:
  selector: {app: server}
  ports: [{name: tcp-echo, port: 80, targetPort: 8080}]
`

// allowAliceYAML is the Istio documentation's ALLOW-by-principal policy.
const allowAliceYAML = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-alice, namespace: shop}
spec:
  selector:
    matchLabels: {app: server}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/alice"]
`

// mesh is one test's world.
type mesh struct {
	t       *testing.T
	topo    *testenv.Topology
	kube    *kubetest.Cluster
	ztBin   string
	istBin  string
	dir     string
	rootPEM string // --root-cert-out
	xdsAddr string // HostIP:port, fixed across restarts
	monAddr string
	rdyAddr string
	istiod  *proc
	zt      []*ztunnel
}

type ztunnel struct {
	node    *testenv.Node
	proc    *proc
	flowLog string
	args    []string     // the binary's flags, reused by a restart
	http    *http.Client // dials inside the node's namespace
}

// newMesh builds the topology (2 nodes × 2 pods, host link), the control
// plane and the cluster objects, starts istiod-lite and waits until it is
// ready, with an echo app on :8080 in every pod. Ztunnels are not started.
func newMesh(t *testing.T) *mesh {
	t.Helper()
	testenv.RequireRoot(t)
	ztBin, istBin := binaries(t)
	m := &mesh{t: t, ztBin: ztBin, istBin: istBin, dir: t.TempDir()}
	m.topo = testenv.NewTopology(t, testenv.Spec{Nodes: 2, PodsPerNode: 2, HostLink: true})
	m.kube = kubetest.Start(t, kubetest.Options{})
	for _, crd := range []string{"security.istio.io_authorizationpolicies.yaml", "security.istio.io_peerauthentications.yaml"} {
		if err := m.kube.ApplyFile(filepath.Join("..", "..", "manifests", "crds", crd)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.kube.ApplyYAML(clusterYAML); err != nil {
		t.Fatal(err)
	}
	for _, p := range []podSpec{alice, bob, server} {
		m.createPod(p)
	}
	for _, n := range m.topo.Nodes {
		for _, p := range n.Pods {
			startEcho(t, p)
		}
	}
	m.rootPEM = filepath.Join(m.dir, "root-cert.pem")
	m.xdsAddr = net.JoinHostPort(m.topo.Host.IP.String(), freePort(t, m.topo.Host.IP.String()))
	m.monAddr = "127.0.0.1:" + freePort(t, "127.0.0.1")
	m.rdyAddr = "127.0.0.1:" + freePort(t, "127.0.0.1")
	m.startIstiod()
	return m
}

func (m *mesh) kubectl(args ...string) string {
	m.t.Helper()
	out, err := m.kube.Kubectl(args...)
	if err != nil {
		m.t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func (m *mesh) pod(p podSpec) *testenv.Pod { return m.topo.Pod(p.node, p.index) }

// createPod creates shop/<p.name> bound to its node and reports it Running
// and Ready at its topology IP through the status subresource (no kubelet
// runs).
func (m *mesh) createPod(p podSpec) {
	m.t.Helper()
	if err := m.kube.ApplyYAML(fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: shop, labels: {app: %s}}
spec:
  nodeName: node-%d
  serviceAccountName: %s
  containers: [{name: app, image: app, ports: [{containerPort: 8080}]}]
`, p.name, p.app, p.node, p.sa)); err != nil {
		m.t.Fatal(err)
	}
	ip := m.pod(p).IP.String()
	m.kubectl("patch", "pod", p.name, "-n", "shop", "--subresource=status", "--type=merge", "-p",
		fmt.Sprintf(`{"status":{"phase":"Running","podIP":%q,"podIPs":[{"ip":%q}],"conditions":[{"type":"Ready","status":"True"}]}}`, ip, ip))
}

// startIstiod runs the istiod-lite binary in the root namespace, listening
// for the nodes on the host link, and waits for /ready.
func (m *mesh) startIstiod() {
	m.t.Helper()
	m.istiod = startProc(m.t, fmt.Sprintf("istiod-lite-%d", time.Now().UnixNano()), nil, m.istBin,
		"--kubeconfig", m.kube.Kubeconfig, "--namespace", "istio-system",
		"--grpc-addr", m.xdsAddr, "--monitoring-addr", m.monAddr, "--ready-addr", m.rdyAddr,
		"--tls-san", m.topo.Host.IP.String(), "--root-cert-out", m.rootPEM)
	client := &http.Client{Timeout: 2 * time.Second}
	waitFor(m.t, "istiod-lite /ready 200", func() (bool, string) {
		if m.istiod.exited() {
			m.t.Fatalf("istiod-lite exited:\n%s", tail(m.istiod.log, 40))
		}
		code, body := httpGet(client, "http://"+m.rdyAddr+"/ready")
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
}

// startZtunnels runs one ztunnel binary per node, inside the node's
// namespace, with istiod-lite as its only source of config and
// certificates, every pod of the node registered by its uid, and waits
// until each is ready.
func (m *mesh) startZtunnels() {
	m.t.Helper()
	for _, n := range m.topo.Nodes {
		node := fmt.Sprintf("node-%d", n.Index)
		tokenFile := filepath.Join(m.dir, node+".token")
		tok := m.kubectl("create", "token", "ztunnel", "-n", "istio-system", "--audience", "istio-ca", "--duration", "1h",
			"--bound-object-kind", "Pod", "--bound-object-name", "ztunnel-"+node)
		if err := os.WriteFile(tokenFile, []byte(tok+"\n"), 0o600); err != nil {
			m.t.Fatal(err)
		}
		z := &ztunnel{node: n, flowLog: filepath.Join(m.dir, node+"-flows.log")}
		z.args = []string{"--node", node, "--xds-address", m.xdsAddr, "--ca-root-file", m.rootPEM,
			"--token-file", tokenFile, "--flow-log", z.flowLog, "--log-level", "debug",
			"--admin-addr", "127.0.0.1:15000", "--metrics-addr", "127.0.0.1:15020", "--ready-addr", "127.0.0.1:15021"}
		for _, p := range []podSpec{alice, bob, server, late} {
			if p.node == n.Index {
				z.args = append(z.args, "--pod", p.uid()+"="+m.pod(p).Path)
			}
		}
		z.http = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return n.Dial(ctx, addr) },
		}}
		m.startZtunnel(z)
		m.zt = append(m.zt, z)
	}
	for _, z := range m.zt {
		m.waitReady(m.t, z)
	}
}

// startZtunnel starts z's binary with z.args; it does not wait.
func (m *mesh) startZtunnel(z *ztunnel) {
	m.t.Helper()
	z.proc = startProc(m.t, "ztunnel-"+fmt.Sprintf("node-%d", z.node.Index), &z.node.NS, m.ztBin, z.args...)
}

// waitReady waits until z's binary answers /healthz/ready with 200.
func (m *mesh) waitReady(t *testing.T, z *ztunnel) {
	t.Helper()
	waitFor(t, z.proc.name+" /healthz/ready 200", func() (bool, string) {
		if z.proc.exited() {
			t.Fatalf("%s exited:\n%s", z.proc.name, tail(z.proc.log, 40))
		}
		code, body := z.get("127.0.0.1:15021", "/healthz/ready")
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
}

func (z *ztunnel) get(addr, path string) (int, string) { return httpGet(z.http, "http://"+addr+path) }

// dump fetches the ztunnel's /config_dump from its admin port.
func (z *ztunnel) dump(t *testing.T) admin.Dump {
	t.Helper()
	code, body := z.get("127.0.0.1:15000", "/config_dump")
	if code != http.StatusOK {
		t.Fatalf("%s /config_dump: %d %s", z.proc.name, code, body)
	}
	var d admin.Dump
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("%s /config_dump: %v", z.proc.name, err)
	}
	return d
}

// metric returns the value of the sample line starting with name (with its
// labels, exactly as exposed), or -1 if absent.
func (z *ztunnel) metric(name string) float64 {
	_, body := z.get("127.0.0.1:15020", "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// flows parses the ztunnel's flow log.
func (z *ztunnel) flows(t *testing.T) []map[string]any {
	t.Helper()
	f, err := os.Open(z.flowLog)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			continue // a line being written
		}
		out = append(out, rec)
	}
	return out
}

// findFlow waits for a flow record of z matching every key of want.
func (z *ztunnel) findFlow(t *testing.T, want map[string]any) map[string]any {
	t.Helper()
	return z.findFlowSince(t, 0, want)
}

// findFlowSince waits for a flow record of z, after the first `since`,
// matching every key of want.
func (z *ztunnel) findFlowSince(t *testing.T, since int, want map[string]any) map[string]any {
	t.Helper()
	var found map[string]any
	waitFor(t, fmt.Sprintf("%s flow %v", z.proc.name, want), func() (bool, string) {
		recs := z.flows(t)
		for _, f := range recs[min(since, len(recs)):] {
			if flowMatches(f, want) {
				found = f
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d records, last %v", len(recs), recs[max(0, len(recs)-1):])
	})
	return found
}

// flowMatches reports whether f has every key of want with its value.
func flowMatches(f, want map[string]any) bool {
	for k, v := range want {
		if f[k] != v {
			return false
		}
	}
	return true
}

// startEcho runs a plain TCP echo app on :8080 inside pod p.
func startEcho(t *testing.T, p *testenv.Pod) { p.ServeTCP(t, "0.0.0.0:8080", testenv.Echo) }

// dial connects from pod `from` to addr as an app would: no mark, so the
// pod's capture rules send it through its node's ztunnel.
func (m *mesh) dial(from podSpec, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return m.pod(from).Dial(ctx, addr)
}

// echo writes a message on c and reads it back.
func echo(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// roundTrip opens a new connection from `from` to addr and checks an echo.
func (m *mesh) roundTrip(from podSpec, addr string) error {
	c, err := m.dial(from, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c, fmt.Sprintf("hello from %s at %s", from.name, time.Now().Format(time.RFC3339Nano)))
}

// rootCerts parses the root istiod-lite wrote.
func (m *mesh) rootCerts() []*x509.Certificate {
	m.t.Helper()
	b, err := os.ReadFile(m.rootPEM)
	if err != nil {
		m.t.Fatal(err)
	}
	return parsePEM(m.t, b)
}

func parsePEM(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// checkCertFromIstiod checks that z holds an Available certificate for id
// whose chain ends in istiod-lite's root and verifies against it.
func (m *mesh) checkCertFromIstiod(t *testing.T, z *ztunnel, id string) {
	t.Helper()
	roots := m.rootCerts()
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	var cert *admin.Certificate
	waitFor(t, z.proc.name+" certificate for "+id, func() (bool, string) {
		d := z.dump(t)
		for i := range d.Certificates {
			if d.Certificates[i].Identity == id && d.Certificates[i].State == "Available" {
				cert = &d.Certificates[i]
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", d.Certificates)
	})
	var chain []*x509.Certificate
	for _, c := range cert.CertChain {
		chain = append(chain, parsePEM(t, []byte(c.PEM))...)
	}
	if len(chain) < 2 {
		t.Fatalf("%s: chain for %s has %d certificates, want leaf … root", z.proc.name, id, len(chain))
	}
	if last := chain[len(chain)-1]; !slices.ContainsFunc(roots, func(r *x509.Certificate) bool { return bytes.Equal(r.Raw, last.Raw) }) {
		t.Errorf("%s: chain of %s ends in %q, not istiod-lite's root", z.proc.name, id, last.Subject)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("%s: certificate of %s does not verify against istiod-lite's root: %v", z.proc.name, id, err)
	}
	if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id {
		t.Errorf("%s: leaf URIs %v, want exactly %s", z.proc.name, chain[0].URIs, id)
	}
}

// meshState is what a config dump says about the mesh, as sorted keys.
type meshState struct {
	Workloads []string // uid
	Services  []string // namespace/hostname
	Policies  []string // namespace/name
	// Bindings are "uid policy" for every policy name a workload carries,
	// Endpoints "namespace/hostname uid" for every service endpoint.
	Bindings, Endpoints []string
}

// stateOf summarises d. Duplicates are kept, so that comparing with a set
// catches them.
func stateOf(d admin.Dump) meshState {
	var s meshState
	for _, w := range d.Workloads {
		s.Workloads = append(s.Workloads, w.UID)
		for _, p := range w.AuthorizationPolicies {
			s.Bindings = append(s.Bindings, w.UID+" "+p)
		}
	}
	for _, sv := range d.Services {
		s.Services = append(s.Services, sv.Namespace+"/"+sv.Hostname)
		for _, ep := range sv.Endpoints {
			s.Endpoints = append(s.Endpoints, sv.Namespace+"/"+sv.Hostname+" "+ep.WorkloadUID)
		}
	}
	for _, p := range d.Policies {
		s.Policies = append(s.Policies, p.Namespace+"/"+p.Name)
	}
	slices.Sort(s.Workloads)
	slices.Sort(s.Services)
	slices.Sort(s.Policies)
	slices.Sort(s.Bindings)
	slices.Sort(s.Endpoints)
	return s
}

func (s meshState) String() string {
	return fmt.Sprintf("workloads %q services %q policies %q bindings %q endpoints %q",
		s.Workloads, s.Services, s.Policies, s.Bindings, s.Endpoints)
}

func (s meshState) equal(o meshState) bool {
	return slices.Equal(s.Workloads, o.Workloads) && slices.Equal(s.Services, o.Services) && slices.Equal(s.Policies, o.Policies) &&
		slices.Equal(s.Bindings, o.Bindings) && slices.Equal(s.Endpoints, o.Endpoints)
}

// waitState waits until every ztunnel's dump shows exactly want.
func (m *mesh) waitState(t *testing.T, want meshState) {
	t.Helper()
	for _, z := range m.zt {
		waitFor(t, fmt.Sprintf("%s config %v", z.proc.name, want), func() (bool, string) {
			got := stateOf(z.dump(t))
			return got.equal(want), got.String()
		})
	}
}

func uids(ps ...podSpec) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.uid())
	}
	slices.Sort(out)
	return out
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
