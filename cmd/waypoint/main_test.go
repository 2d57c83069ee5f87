package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/logtest"
)

func TestParseFlags_RequiresGatewayConfigAndCA(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--local-config", "x", "--ca-cert", "c", "--ca-key", "k"}, "--gateway"},
		{[]string{"--gateway", "shop", "--local-config", "x", "--ca-cert", "c", "--ca-key", "k"}, "NAMESPACE/NAME"},
		{[]string{"--gateway", "shop/waypoint", "--ca-cert", "c", "--ca-key", "k"}, "--local-config"},
		{[]string{"--gateway", "shop/waypoint", "--local-config", "x"}, "--ca-cert"},
		{[]string{"--gateway", "shop/waypoint", "--local-config", "x", "--ca-cert", "c", "--ca-key", "k", "--flow-log-flush-interval", "-1s"}, "--flow-log-flush-interval"},
		{[]string{"--gateway", "shop/waypoint", "--local-config", "x", "--ca-cert", "c", "--ca-key", "k", "--gomaxprocs", "many"}, "--gomaxprocs"},
		{[]string{"--gateway", "shop/waypoint", "--local-config", "x", "--ca-cert", "c", "--ca-key", "k", "--tunnel-congestion-control", "warp"}, `--tunnel-congestion-control: TCP congestion control "warp"`},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error mentioning %s", tc.args, err, tc.want)
		}
	}
	o, err := parseFlags([]string{"--gateway", "shop/waypoint", "--local-config", "x", "--ca-cert", "c", "--ca-key", "k"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.gatewayNS != "shop" || o.gatewayName != "waypoint" || o.namespace != "shop" || o.serviceAccount != "waypoint" {
		t.Fatalf("got %+v; want the Gateway's namespace and name as the identity's defaults", o)
	}
}

// TestRun_ServesReadinessAndConfigDumpAndDrains runs the binary's wiring on
// loopback with a local config and CA files.
func TestRun_ServesReadinessAndConfigDumpAndDrains(t *testing.T) {
	dir := t.TempDir()
	authority, err := ca.NewSelfSigned(spiffeid.RequireTrustDomainFromString("cluster.local"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := authority.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := write("mesh.yaml", []byte(`
services:
- {name: server, namespace: shop, hostname: server.shop.svc.cluster.local, addresses: ["10.96.0.10"], ports: [{service_port: 80, target_port: 8080}]}
routes:
- service_key: shop/server.shop.svc.cluster.local
  port: 80
  matches: [{rule: 0}]
  rules: [{route: shop/server, backends: [{destination: {service: shop/server.shop.svc.cluster.local, port: 80}, weight: 1}]}]
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: deny-admin, namespace: shop}
  spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}
resilience:
- service_key: shop/server.shop.svc.cluster.local
  local_policy: {rate_limit: {requests_per_unit: 100, unit: 1s}}
`))
	o, err := parseFlags([]string{"--gateway", "shop/waypoint", "--local-config", cfg,
		"--ca-cert", write("ca.pem", certPEM), "--ca-key", write("ca-key.pem", keyPEM),
		"--hbone-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--ready-addr", "127.0.0.1:0",
		"--drain-timeout", "1s", "--tunnel-congestion-control", "reno"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logtest.Buffer{}
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, o, logger, io.Discard) }()

	var started map[string]any
	deadline := time.Now().Add(20 * time.Second)
	for started == nil {
		if time.Now().After(deadline) {
			t.Fatalf("no start log; logs:\n%s", logs.String())
		}
		sc := bufio.NewScanner(strings.NewReader(logs.String()))
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == "waypoint started" {
				started = m
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(url string) (int, string) {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	ready := "http://" + started["ready"].(string) + "/healthz/ready"
	for {
		if code, _ := get(ready); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	code, body := get("http://" + started["admin"].(string) + "/config_dump")
	if code != 200 || !strings.Contains(body, `"deny-admin"`) || !strings.Contains(body, `"serviceKey": "shop/server.shop.svc.cluster.local"`) ||
		!strings.Contains(body, `"requestsPerUnit": 100`) {
		t.Fatalf("config_dump: %d\n%s", code, body)
	}
	if code, body := get("http://" + started["metrics"].(string) + "/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("metrics: %d", code)
	}
	// No request has gone upstream yet: no tunnel is pooled.
	if code, body := get("http://" + started["admin"].(string) + "/debug/connections"); code != 200 || !strings.Contains(body, `"tunnels": []`) {
		t.Fatalf("debug/connections: %d\n%s", code, body)
	}
	// The HBONE listener's sockets run --tunnel-congestion-control.
	hb, err := net.DialTimeout("tcp", started["hbone"].(string), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(hb.LocalAddr().String())
	out, err := exec.Command("ss", "-Htin", "state", "established", "( dport = :"+port+" )").CombinedOutput()
	hb.Close()
	if err != nil || !strings.Contains(string(out), " reno ") {
		t.Errorf("the HBONE listener accepted a socket not on reno (ss: %v):\n%s", err, out)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10s of shutdown")
	}
}
