package manifests_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/kubetest"
)

// The install and the sample are applied as users apply them (server-side)
// to a real apiserver, whose validation accepts
// every object; istiod-lite then runs under its own ServiceAccount's RBAC:
// it becomes ready, is elected (Lease), creates the CA Secret and the root
// ConfigMap, restores the ConfigMap after a restart, writes policy status
// and deploys a waypoint, with no request forbidden. The RBAC grants nothing more than
// that.
func TestCluster_InstallAppliesAndIstiodRunsUnderItsRBAC(t *testing.T) {
	bin := buildBinaries(t)
	// With the admission plugin that checks owner references (on in
	// OpenShift), so the waypoint controller's RBAC is tested against it.
	c := kubetest.Start(t, kubetest.Options{APIServerArgs: []string{"--enable-admission-plugins=OwnerReferencesPermissionEnforcement"}})

	for _, dir := range []string{installDir, shopDir, tracingDir} {
		abs, _ := filepath.Abs(dir)
		if out, err := c.Kubectl("apply", "-k", abs, "--server-side"); err != nil {
			t.Fatalf("apply -k %s: %v\n%s", dir, err, out)
		}
		// Applying again is accepted with no field conflicts (a server dry
		// run needs the namespace to exist, hence after the apply).
		if out, err := c.Kubectl("apply", "-k", abs, "--server-side", "--dry-run=server"); err != nil {
			t.Fatalf("re-apply dry run of %s: %v\n%s", dir, err, out)
		}
		// Every rendered object is stored.
		file := filepath.Join(t.TempDir(), "rendered.yaml")
		if err := os.WriteFile(file, render(t, dir).yaml, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := c.Kubectl("get", "-f", file, "-o", "name")
		if err != nil {
			t.Fatalf("get %s: %v", dir, err)
		}
		if got, want := len(strings.Fields(string(out))), len(render(t, dir).objs); got != want {
			t.Errorf("%s: %d objects stored, %d rendered:\n%s", dir, got, want, out)
		}
	}

	t.Run("RBACIsLeastPrivilege", func(t *testing.T) { checkRBAC(t, c) })
	t.Run("IstiodRunsUnderItsServiceAccount", func(t *testing.T) { runIstiod(t, c, bin) })
}

// checkRBAC asks the apiserver what each ServiceAccount may do.
func checkRBAC(t *testing.T, c *kubetest.Cluster) {
	istiod, ztunnel, cni := "system:serviceaccount:istio-system:istiod-lite", "system:serviceaccount:istio-system:ztunnel", "system:serviceaccount:istio-system:ambient-cni"
	for _, tc := range []struct {
		as   string
		args []string
		want bool
	}{
		{istiod, []string{"list", "pods", "-A"}, true},
		{istiod, []string{"watch", "endpointslices.discovery.k8s.io", "-A"}, true},
		{istiod, []string{"watch", "httproutes.gateway.networking.k8s.io", "-A"}, true},
		{istiod, []string{"list", "referencegrants.gateway.networking.k8s.io", "-A"}, true},
		{istiod, []string{"watch", "referencegrants.gateway.networking.k8s.io", "-A"}, true},
		{istiod, []string{"watch", "destinationrules.networking.istio.io", "-A"}, true},
		{istiod, []string{"list", "localtrafficpolicies.policy.ambientmesh.io", "-A"}, true},
		{istiod, []string{"patch", "authorizationpolicies.security.istio.io", "--subresource=status", "-n", "shop"}, true},
		{istiod, []string{"patch", "destinationrules.networking.istio.io", "--subresource=status", "-n", "shop"}, true},
		{istiod, []string{"patch", "localtrafficpolicies.policy.ambientmesh.io", "--subresource=status", "-n", "shop"}, true},
		{istiod, []string{"create", "tokenreviews.authentication.k8s.io"}, true},
		{istiod, []string{"get", "secret/cacerts", "-n", "istio-system"}, true},
		{istiod, []string{"update", "configmap/istio-ca-root-cert", "-n", "istio-system"}, true},
		// The root published in every namespace, for pods and waypoints.
		{istiod, []string{"update", "configmap/istio-ca-root-cert", "-n", "shop"}, true},
		{istiod, []string{"create", "configmaps", "-n", "shop"}, true},
		{istiod, []string{"patch", "httproutes.gateway.networking.k8s.io", "--subresource=status", "-n", "shop"}, true},
		// The waypoint controller (istiod-lite/waypointctl).
		{istiod, []string{"watch", "deployments.apps", "-A"}, true},
		{istiod, []string{"create", "deployments.apps", "-n", "shop"}, true},
		{istiod, []string{"patch", "deployments.apps", "-n", "shop"}, true},
		{istiod, []string{"patch", "services", "-n", "shop"}, true},
		{istiod, []string{"create", "serviceaccounts", "-n", "shop"}, true},
		{istiod, []string{"patch", "gateways.gateway.networking.k8s.io", "--subresource=status", "-n", "shop"}, true},
		{istiod, []string{"update", "gateways.gateway.networking.k8s.io", "--subresource=finalizers", "-n", "shop"}, true},
		{istiod, []string{"create", "gatewayclasses.gateway.networking.k8s.io"}, true},
		{istiod, []string{"patch", "gatewayclasses.gateway.networking.k8s.io", "--subresource=status"}, true},
		// The leader election (istiod-lite/leader).
		{istiod, []string{"get", "lease/istiod-lite-leader", "-n", "istio-system"}, true},
		{istiod, []string{"update", "lease/istiod-lite-leader", "-n", "istio-system"}, true},
		{istiod, []string{"create", "leases.coordination.k8s.io", "-n", "istio-system"}, true},

		{istiod, []string{"get", "pods", "-A"}, false},
		{istiod, []string{"patch", "destinationrules.networking.istio.io", "-n", "shop"}, false},
		{istiod, []string{"create", "localtrafficpolicies.policy.ambientmesh.io", "-n", "shop"}, false},
		{istiod, []string{"list", "secrets", "-n", "istio-system"}, false},
		{istiod, []string{"get", "secret/other", "-n", "istio-system"}, false},
		{istiod, []string{"get", "secret/cacerts", "-n", "shop"}, false},
		{istiod, []string{"update", "secret/istio-ca-secret", "-n", "istio-system"}, false},
		{istiod, []string{"update", "configmap/other", "-n", "istio-system"}, false},
		{istiod, []string{"get", "configmap/other", "-n", "shop"}, false},
		{istiod, []string{"delete", "configmap/istio-ca-root-cert", "-n", "shop"}, false},
		{istiod, []string{"patch", "httproutes.gateway.networking.k8s.io", "-n", "shop"}, false},
		{istiod, []string{"create", "referencegrants.gateway.networking.k8s.io", "-n", "shop"}, false},
		{istiod, []string{"get", "referencegrants.gateway.networking.k8s.io", "-n", "shop"}, false},
		{istiod, []string{"update", "authorizationpolicies.security.istio.io", "-n", "shop"}, false},
		{istiod, []string{"patch", "destinationrules.networking.istio.io", "-n", "shop"}, false},
		{istiod, []string{"patch", "localtrafficpolicies.policy.ambientmesh.io", "-n", "shop"}, false},
		{istiod, []string{"create", "pods", "-n", "shop"}, false},
		// It creates ServiceAccounts (waypoints') but may not mint their
		// tokens (TokenRequest).
		{istiod, []string{"create", "serviceaccounts", "--subresource=token", "-n", "shop"}, false},
		{istiod, []string{"get", "deployments.apps", "-n", "shop"}, false},
		{istiod, []string{"update", "deployments.apps", "-n", "shop"}, false},
		{istiod, []string{"delete", "deployments.apps", "-n", "shop"}, false},
		{istiod, []string{"delete", "services", "-n", "shop"}, false},
		{istiod, []string{"create", "statefulsets.apps", "-n", "shop"}, false},
		{istiod, []string{"patch", "gateways.gateway.networking.k8s.io", "-n", "shop"}, false},
		{istiod, []string{"update", "gatewayclasses.gateway.networking.k8s.io"}, false},
		{istiod, []string{"delete", "gatewayclasses.gateway.networking.k8s.io"}, false},
		{istiod, []string{"update", "lease/other", "-n", "istio-system"}, false},
		{istiod, []string{"create", "leases.coordination.k8s.io", "-n", "shop"}, false},
		{istiod, []string{"delete", "lease/istiod-lite-leader", "-n", "istio-system"}, false},

		{ztunnel, []string{"list", "pods", "-A"}, false},
		{ztunnel, []string{"get", "configmap/istio-ca-root-cert", "-n", "istio-system"}, false},
		{cni, []string{"list", "pods", "-A"}, false},
	} {
		out, err := c.Kubectl(append([]string{"auth", "can-i", "--as=" + tc.as}, tc.args...)...)
		got := strings.TrimSpace(string(out)) == "yes"
		if err != nil && strings.TrimSpace(string(out)) != "no" {
			t.Fatalf("can-i %v: %v", tc.args, err)
		}
		if got != tc.want {
			t.Errorf("%s can %s: %v, want %v", tc.as, strings.Join(tc.args, " "), got, tc.want)
		}
	}
}

// runIstiod runs istiod-lite with the Deployment's args, on free loopback
// ports, authenticated as its ServiceAccount.
func runIstiod(t *testing.T, c *kubetest.Cluster, bin string) {
	tok, err := c.Kubectl("create", "token", "istiod-lite", "-n", system, "--duration=1h")
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority-data: %s}}]
users: [{name: istiod-lite, user: {token: %q}}]
contexts: [{name: c, context: {cluster: c, user: istiod-lite}}]
current-context: c
`, c.Server, base64.StdEncoding.EncodeToString(c.CAData), strings.TrimSpace(string(tok))), 0o600); err != nil {
		t.Fatal(err)
	}
	args := deployment(t, render(t, installDir), system, "istiod-lite").Spec.Template.Spec.Containers[0].Args

	// First start: creates the self-signed root and publishes it.
	logs := startIstiod(t, bin, kubeconfig, args)
	if _, err := c.Kubectl("get", "secret", "istio-ca-secret", "-n", system); err != nil {
		t.Errorf("CA Secret not created: %v", err)
	}
	waitFor(t, "ConfigMap istio-ca-root-cert", func() bool {
		out, _ := c.Kubectl("get", "configmap", "istio-ca-root-cert", "-n", system, "-o", "jsonpath={.data.root-cert\\.pem}")
		return bytes.Contains(out, []byte("BEGIN CERTIFICATE"))
	})
	// Policy status (a patch of the status subresource).
	if err := c.ApplyYAML(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-frontend
  namespace: shop
spec:
  selector:
    matchLabels:
      app: reviews
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/frontend"]
`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "AuthorizationPolicy status ZtunnelAccepted", func() bool {
		out, _ := c.Kubectl("get", "authorizationpolicy", "allow-frontend", "-n", "shop", "-o", "jsonpath={.status.conditions[*].type}")
		return strings.Contains(string(out), "ZtunnelAccepted")
	})
	// A waypoint (the controller's creates, applies and status writes).
	if err := c.ApplyYAML(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: shop
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "GatewayClass istio-waypoint accepted", func() bool {
		out, _ := c.Kubectl("get", "gatewayclass", "istio-waypoint", "-o", `jsonpath={.status.conditions[?(@.type=="Accepted")].status}`)
		return string(out) == "True"
	})
	waitFor(t, "waypoint Deployment, Service and ServiceAccount", func() bool {
		_, err := c.Kubectl("get", "deployment/waypoint", "service/waypoint", "serviceaccount/waypoint", "-n", "shop")
		return err == nil
	})
	waitFor(t, "Gateway waypoint accepted with addresses", func() bool {
		out, _ := c.Kubectl("get", "gateway", "waypoint", "-n", "shop", "-o",
			`jsonpath={.status.conditions[?(@.type=="Accepted")].status} {.status.addresses[*].type}`)
		return string(out) == "True IPAddress Hostname"
	})
	logs.stop(t)

	// Second start: loads the existing root and restores a tampered
	// ConfigMap (get + update).
	if _, err := c.Kubectl("patch", "configmap", "istio-ca-root-cert", "-n", system, "--type=merge", "-p", `{"data":{"root-cert.pem":"tampered"}}`); err != nil {
		t.Fatal(err)
	}
	logs = startIstiod(t, bin, kubeconfig, args)
	waitFor(t, "ConfigMap istio-ca-root-cert restored", func() bool {
		out, _ := c.Kubectl("get", "configmap", "istio-ca-root-cert", "-n", system, "-o", "jsonpath={.data.root-cert\\.pem}")
		return bytes.Contains(out, []byte("BEGIN CERTIFICATE"))
	})
	logs.stop(t)
}

type istiodProc struct {
	cmd     *exec.Cmd
	log     string
	done    chan error
	stopped bool
}

// startIstiod starts istiod-lite and waits for GET /ready.
func startIstiod(t *testing.T, bin, kubeconfig string, manifestArgs []string) *istiodProc {
	t.Helper()
	addrs := map[string]string{}
	var args []string
	for _, a := range manifestArgs {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if slices.Contains([]string{"grpc-addr", "monitoring-addr", "ready-addr"}, name) {
			addrs[name] = freeAddr(t)
			a = "--" + name + "=" + addrs[name]
		}
		args = append(args, a)
	}
	if addrs["ready-addr"] == "" {
		t.Fatalf("istiod-lite args %v have no --ready-addr", manifestArgs)
	}
	args = append(args, "--kubeconfig="+kubeconfig)
	logFile, err := os.CreateTemp(t.TempDir(), "istiod-lite-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "istiod-lite"), args...)
	cmd.Env = append(os.Environ(), "POD_NAMESPACE="+system, "KUBECONFIG=")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &istiodProc{cmd: cmd, log: logFile.Name(), done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); logFile.Close() }()
	t.Cleanup(func() {
		if !p.stopped {
			cmd.Process.Kill()
			<-p.done
			p.checkLog(t)
		}
		if t.Failed() {
			t.Logf("istiod-lite log (tail):\n%s", p.tail())
		}
	})
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-p.done:
			t.Fatalf("istiod-lite exited before ready: %v\n%s", err, p.tail())
		default:
		}
		if resp, err := hc.Get("http://" + addrs["ready-addr"] + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("istiod-lite not ready after 60s:\n%s", p.tail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop sends SIGTERM, expects exit 0, and fails t if any request to the
// apiserver was forbidden.
func (p *istiodProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("istiod-lite exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("istiod-lite did not stop on SIGTERM")
	}
	p.stopped = true
	p.checkLog(t)
}

// checkLog fails t if any request of istiod-lite's was forbidden.
func (p *istiodProc) checkLog(t *testing.T) {
	t.Helper()
	b, _ := os.ReadFile(p.log)
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.Contains(strings.ToLower(line), "forbidden") {
			t.Errorf("istiod-lite was refused by RBAC: %s", line)
		}
	}
}

func (p *istiodProc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return string(b)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
