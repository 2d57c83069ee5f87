package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/internal/logtest"
)

func TestParseFlags_AcceptsTheControllersDeployment(t *testing.T) {
	// The args and env of istiod-lite/waypointctl's Deployment.
	t.Setenv("POD_NAME", "waypoint-5d8f-abcde")
	t.Setenv("POD_NAMESPACE", "shop")
	t.Setenv("NODE_NAME", "node-1")
	t.Setenv("SERVICE_ACCOUNT", "waypoint")
	t.Setenv("GOMEMLIMIT", "1073741824")
	o, err := parseFlags([]string{
		"--xds-address=istiod.istio-system.svc:15012",
		"--xds-server-name=istiod.istio-system.svc",
		"--ca-root-file=/var/run/secrets/istio/root-cert.pem",
		"--token-file=/var/run/secrets/tokens/istio-token",
		"--trust-domain=cluster.local",
		"--cluster-id=Kubernetes",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.gatewayNS != "shop" || o.gatewayName != "waypoint" || o.namespace != "shop" || o.serviceAccount != "waypoint" ||
		o.caAddress != "istiod.istio-system.svc:15012" || xdsNodeID(o) != "waypoint~shop/waypoint-5d8f-abcde" {
		t.Fatalf("options = %+v", o)
	}
}

func TestParseFlags_ConfigSourcesExclusive(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--gateway", "shop/waypoint", "--xds-address", "i:1", "--local-config", "x"}, "exclusive"},
		{[]string{"--gateway", "shop/waypoint", "--xds-address", "i:1", "--ca-cert", "c"}, "--ca-cert configures the in-process CA"},
		{[]string{"--gateway", "shop/waypoint", "--xds-address", "i:1", "--token-file", ""}, "--token-file is empty"},
		{[]string{"--gateway", "shop/waypoint", "--local-config", "x", "--ca-cert", "c", "--ca-key", "k", "--ca-address", "i:1"}, "--ca-address is for --xds-address"},
		{[]string{"--gateway", "shop/waypoint"}, "no config source"},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
	o, err := parseFlags([]string{"--gateway", "shop/waypoint", "--xds-address", "i:1", "--ca-address", "ca:2"}, io.Discard)
	if err != nil || o.caAddress != "ca:2" || o.tokenFile != "/var/run/secrets/tokens/istio-token" ||
		o.caRootFile != "/var/run/secrets/istio/root-cert.pem" || o.xdsServerName != "istiod.istio-system.svc" {
		t.Fatalf("options = %+v, %v", o, err)
	}
}

// clusterYAML is what the xDS test applies before istiod-lite starts: the
// shop namespace with the reviews Services, and the waypoint Gateway.
const clusterYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: shop}
spec: {selector: {app: reviews, version: v1}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec: {selector: {app: reviews, version: v2}, ports: [{name: http, port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
`

const resilienceYAML = `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-dr, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 10}}
    outlierDetection: {consecutive5xxErrors: 5}
---
apiVersion: policy.ambientmesh.io/v1alpha1
kind: LocalTrafficPolicy
metadata: {name: reviews-limits, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  rateLimit: {requestsPerUnit: 100, unit: second}
`

func httpRoute(v1, v2 int) string {
	return fmt.Sprintf(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: %d}
    - {name: reviews-v2, port: 9080, weight: %d}
`, v1, v2)
}

// TestWaypoint_ConfigAndCertificateFromIstiod runs the waypoint with
// --xds-address against a real istiod-lite process and apiserver: it gets
// its certificate for its own ServiceAccount, and the mesh, the HTTPRoute
// and the targetRefs AuthorizationPolicy applied with kubectl; a changed
// route and a deleted policy arrive live. Without any DestinationRule the
// (empty) resilience type does not hold readiness back; a DestinationRule
// and a LocalTrafficPolicy applied later arrive as the Service's policy.
func TestWaypoint_ConfigAndCertificateFromIstiod(t *testing.T) {
	kube := kubetest.Start(t, kubetest.Options{})
	crds, err := filepath.Glob(filepath.Join("..", "..", "manifests", "crds", "*.yaml"))
	if err != nil || len(crds) == 0 {
		t.Fatalf("CRDs: %v %v", crds, err)
	}
	for _, f := range crds {
		if err := kube.ApplyFile(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := kube.WaitEstablished("crd/httproutes.gateway.networking.k8s.io", "crd/gateways.gateway.networking.k8s.io",
		"crd/authorizationpolicies.security.istio.io", "crd/destinationrules.networking.istio.io",
		"crd/localtrafficpolicies.policy.ambientmesh.io"); err != nil {
		t.Fatal(err)
	}
	if err := kube.ApplyYAML(clusterYAML + "---" + httpRoute(90, 10)); err != nil {
		t.Fatal(err)
	}
	// The ServiceAccount istiod-lite's controller would create for the
	// Gateway; created now so the waypoint's token exists before
	// istiod-lite runs.
	if _, err := kube.Kubectl("create", "serviceaccount", "waypoint", "-n", "shop"); err != nil {
		t.Fatal(err)
	}
	tok, err := kube.Kubectl("create", "token", "waypoint", "-n", "shop", "--audience", "istio-ca", "--duration", "1h")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile, rootFile := filepath.Join(dir, "istio-token"), filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(tokenFile, tok, 0o600); err != nil {
		t.Fatal(err)
	}
	grpcAddr := "127.0.0.1:" + freePort(t)
	startIstiod(t, kube.Kubeconfig, grpcAddr, rootFile)
	pollUntil(t, "istiod-lite writes the root certificate", 30*time.Second, func() bool {
		b, err := os.ReadFile(rootFile)
		return err == nil && len(b) > 0
	})

	o, err := parseFlags([]string{"--gateway", "shop/waypoint", "--xds-address", grpcAddr,
		"--ca-root-file", rootFile, "--token-file", tokenFile, "--log-level", "debug",
		"--hbone-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:" + freePort(t),
		"--metrics-addr", "127.0.0.1:" + freePort(t), "--ready-addr", "127.0.0.1:" + freePort(t),
		"--drain-timeout", "1s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logtest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, o, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), io.Discard)
	}()
	defer func() {
		if t.Failed() {
			t.Logf("waypoint log:\n%s", tailString(logs.String(), 40))
		}
	}()

	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(addr, path string) (int, string) {
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor := func(what string, cond func() (bool, string)) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			ok, seen := cond()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30s; last seen: %s", what, seen)
			}
			select {
			case err := <-done:
				t.Fatalf("waypoint exited: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	waitFor("/healthz/ready 200", func() (bool, string) {
		code, body := get(o.readyAddr, "/healthz/ready")
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
	_, dump := get(o.adminAddr, "/config_dump")
	for _, want := range []string{
		`"serviceKey": "shop/reviews.shop.svc.cluster.local"`, // the HTTPRoute's table
		`"shop/reviews-v1.shop.svc.cluster.local"`,
		`"weight": 90`,
		`"name": "deny-admin"`, // the targetRefs policy
		`"hostname": "reviews.shop.svc.cluster.local"`, // the mesh
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("/config_dump lacks %s:\n%s", want, dump)
		}
	}
	_, metrics := get(o.metricsAddr, "/metrics")
	for _, want := range []string{
		`istio_agent_num_outgoing_requests{request_type="csr"} `,
		`istio_agent_num_failed_outgoing_requests{request_type="csr"} `,
		`istio_xds_message_total{url="type.googleapis.com/ambient.waypoint.v1.ServiceRoutes"}`,
		`istio_xds_message_total{url="type.googleapis.com/ambient.waypoint.v1.AuthorizationPolicy"}`,
		// No DestinationRule yet: the type's empty answer made it ready.
		`istio_xds_message_total{url="type.googleapis.com/ambient.waypoint.v1.ServiceResilience"}`,
		"istio_xds_connected 1",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(logs.String(), `"spiffe_id":"spiffe://cluster.local/ns/shop/sa/waypoint"`) {
		t.Errorf("no certificate log line for the waypoint's own identity")
	}

	// A changed route reaches the waypoint live.
	if err := kube.ApplyYAML(httpRoute(0, 100)); err != nil {
		t.Fatal(err)
	}
	waitFor("the changed route", func() (bool, string) {
		_, dump := get(o.adminAddr, "/config_dump")
		return strings.Contains(dump, `"weight": 100`) && !strings.Contains(dump, `"weight": 90`), dump
	})
	// And a deleted policy goes.
	if _, err := kube.Kubectl("delete", "authorizationpolicy", "deny-admin", "-n", "shop"); err != nil {
		t.Fatal(err)
	}
	waitFor("the policy removed", func() (bool, string) {
		_, dump := get(o.adminAddr, "/config_dump")
		return !strings.Contains(dump, `"deny-admin"`), dump
	})
	// A DestinationRule and a LocalTrafficPolicy arrive as the Service's
	// resilience policy.
	if err := kube.ApplyYAML(resilienceYAML); err != nil {
		t.Fatal(err)
	}
	waitFor("the resilience policy", func() (bool, string) {
		_, dump := get(o.adminAddr, "/config_dump")
		return strings.Contains(dump, `"shop/reviews-dr"`) && strings.Contains(dump, `"http2MaxRequests": 10`) &&
			strings.Contains(dump, `"requestsPerUnit": 100`), dump
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return within 15s of shutdown")
	}
}

// startIstiod builds and runs cmd/istiod-lite against kubeconfig, serving
// gRPC on grpcAddr and writing its root to rootFile.
func startIstiod(t *testing.T, kubeconfig, grpcAddr, rootFile string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "istiod-lite")
	build := exec.Command("go", "build", "-o", bin, "../istiod-lite")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build istiod-lite: %v\n%s", err, out)
	}
	logFile := filepath.Join(t.TempDir(), "istiod-lite.log")
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--kubeconfig", kubeconfig, "--namespace", "istio-system",
		"--grpc-addr", grpcAddr, "--monitoring-addr", "127.0.0.1:"+freePort(t), "--ready-addr", "127.0.0.1:"+freePort(t),
		"--root-cert-out", rootFile)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("istiod-lite log:\n%s", tailString(string(b), 40))
		}
	})
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestWaypoint_NotReadyWithoutIstiod: with istiod-lite unreachable the
// waypoint runs, answers /healthz/ready 503 and /config_dump 503, and stops
// cleanly.
func TestWaypoint_NotReadyWithoutIstiod(t *testing.T) {
	authority, err := ca.NewSelfSigned(spiffeid.RequireTrustDomainFromString("cluster.local"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, _, err := authority.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rootFile, tokenFile := filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "istio-token")
	if err := os.WriteFile(rootFile, rootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"--gateway", "shop/waypoint", "--xds-address", "127.0.0.1:" + freePort(t),
		"--ca-root-file", rootFile, "--token-file", tokenFile,
		"--hbone-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:" + freePort(t),
		"--metrics-addr", "127.0.0.1:" + freePort(t), "--ready-addr", "127.0.0.1:" + freePort(t)}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, o, slog.New(slog.DiscardHandler), io.Discard) }()
	client := &http.Client{Timeout: time.Second}
	code := func(addr, path string) int {
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	pollUntil(t, "/healthz/ready answers", 10*time.Second, func() bool { return code(o.readyAddr, "/healthz/ready") != 0 })
	for range 10 {
		if c := code(o.readyAddr, "/healthz/ready"); c != http.StatusServiceUnavailable {
			t.Fatalf("/healthz/ready without istiod-lite: %d, want 503", c)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c := code(o.adminAddr, "/config_dump"); c != http.StatusServiceUnavailable {
		t.Fatalf("/config_dump before the certificate: %d, want 503", c)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v, want nil on shutdown before the first certificate", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10s of shutdown")
	}
}

// pollUntil waits for cond, checking every 20ms, and fails the test after
// timeout.
func pollUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
