package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binary is the ztunnel command built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ztunnel-cmd-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "ztunnel")
	if out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput(); err != nil {
		// -race needs cgo; fall back to a plain build.
		if out2, err2 := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err2 != nil {
			fmt.Fprintf(os.Stderr, "building ztunnel: %v\n%s\n%s", err2, out, out2)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireRoot skips unless root; under CI=true not being root is a failure,
// so CI cannot silently skip the privileged tests.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (CI=true): run the suite as root")
	}
	t.Skip("needs root")
}

// startZtunnel starts cmd, the ztunnel binary; Wait's result arrives on
// exited. At the end of the test a process still running is killed, and if
// the test failed its stderr is logged.
func startZtunnel(t *testing.T, cmd *exec.Cmd) (exited <-chan error, stderr *bytes.Buffer) {
	t.Helper()
	stderr = new(bytes.Buffer)
	cmd.Stderr, cmd.Stdout = stderr, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("ztunnel stderr:\n%s", stderr.String())
		}
	})
	return done, stderr
}

// exitCode runs the binary to completion and returns its exit code and stderr.
func exitCode(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stderr.String()
	}
	t.Fatalf("running ztunnel: %v", err)
	return 0, ""
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestZtunnel_BadLocalConfigExitsWithAHint(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, path string
		want       []string
	}{
		{"missing file", filepath.Join(dir, "missing.yaml"), []string{"missing.yaml", "no such file", "point --local-config at a valid one"}},
		{"invalid IP", writeFile(t, dir, "bad.yaml", "workloads: [{uid: a, addresses: [\"10.0.0.300\"]}]\n"),
			[]string{"bad.yaml", `"10.0.0.300" is not an IP address`, "fix the file"}},
		{"unknown field", writeFile(t, dir, "typo.yaml", "workload: []\n"), []string{"typo.yaml", "workload", "fix the file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := exitCode(t, "--node", "node-1", "--local-config", tc.path,
				"--admin-addr", freePort(t), "--metrics-addr", freePort(t), "--ready-addr", freePort(t))
			if code != 1 {
				t.Errorf("exit code %d, want 1; stderr:\n%s", code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

func TestZtunnel_UsageErrorsExit2(t *testing.T) {
	cfg := writeFile(t, t.TempDir(), "mesh.yaml", "workloads: []\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no node", []string{"--local-config", cfg}, "--node is required"},
		{"no config source", []string{"--node", "n"}, "no config source: give --xds-address"},
		{"both config sources", []string{"--node", "n", "--local-config", cfg, "--xds-address", "istiod:15012"}, "--local-config and --xds-address are exclusive"},
		{"local CA cert with xds", []string{"--node", "n", "--xds-address", "istiod:15012", "--ca-cert", cfg, "--ca-key", cfg}, "--ca-cert configures the in-process CA of --local-config"},
		{"local CA root with xds", []string{"--node", "n", "--xds-address", "istiod:15012", "--ca-root", cfg}, "--ca-root configures the in-process CA"},
		{"xds flag with local config", []string{"--node", "n", "--local-config", cfg, "--token-file", cfg}, "--token-file is for --xds-address"},
		{"ca address with local config", []string{"--node", "n", "--local-config", cfg, "--ca-address", "ca:15012"}, "--ca-address is for --xds-address"},
		{"empty root file with xds", []string{"--node", "n", "--xds-address", "istiod:15012", "--ca-root-file", ""}, "--ca-root-file is empty"},
		{"cert without key", []string{"--node", "n", "--local-config", cfg, "--ca-cert", cfg}, "--ca-cert and --ca-key go together"},
		{"bad pod flag", []string{"--node", "n", "--local-config", cfg, "--pod", "nopath"}, "want UID=NETNS_PATH"},
		{"bad log level", []string{"--node", "n", "--local-config", cfg, "--log-level", "loud"}, "log-level"},
		{"bad gomaxprocs", []string{"--node", "n", "--local-config", cfg, "--gomaxprocs", "0"}, "want auto or a positive number"},
		{"zero drain timeout", []string{"--node", "n", "--local-config", cfg, "--drain-timeout", "0s"}, "--drain-timeout and --udp-idle-timeout must be positive"},
		{"negative UDP idle timeout", []string{"--node", "n", "--local-config", cfg, "--udp-idle-timeout", "-1s"}, "--drain-timeout and --udp-idle-timeout must be positive"},
		{"unknown tunnel congestion control", []string{"--node", "n", "--local-config", cfg, "--tunnel-congestion-control", "warp"}, `--tunnel-congestion-control: TCP congestion control "warp"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(binary, tc.args...)
			cmd.Env = append(os.Environ(), "NODE_NAME=")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Errorf("got %v, want exit code 2; stderr:\n%s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, stderr.String())
			}
		})
	}
}

func TestZtunnel_NotPrivilegedSaysToRunAsRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root: the privilege check passes")
	}
	cfg := writeFile(t, t.TempDir(), "mesh.yaml", "workloads: []\n")
	code, stderr := exitCode(t, "--node", "n", "--local-config", cfg,
		"--admin-addr", freePort(t), "--metrics-addr", freePort(t), "--ready-addr", freePort(t))
	if code != 1 || !strings.Contains(stderr, "run ztunnel as root") {
		t.Errorf("exit code %d, stderr:\n%s", code, stderr)
	}
}

func TestZtunnel_PortInUseNamesTheFlag(t *testing.T) {
	requireRoot(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg := writeFile(t, t.TempDir(), "mesh.yaml", "workloads: []\n")
	code, stderr := exitCode(t, "--node", "n", "--local-config", cfg,
		"--admin-addr", freePort(t), "--metrics-addr", busy.Addr().String(), "--ready-addr", freePort(t))
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	for _, w := range []string{"--metrics-addr", "address already in use", "choose another address"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}
}

// TestZtunnel_ZeroPodsBecomesReadyAndDrainsOnSIGTERM runs the real binary
// with an empty mesh: /healthz/ready turns 200 after the config loads, and
// SIGTERM ends the process with exit code 0 within a few seconds.
func TestZtunnel_ZeroPodsBecomesReadyAndDrainsOnSIGTERM(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	cfg := writeFile(t, dir, "mesh.yaml", "workloads: []\nservices: []\npolicies: []\n")
	readyAddr, adminAddr := freePort(t), freePort(t)
	cmd := exec.Command(binary, "--node", "node-1", "--local-config", cfg, "--log-level", "debug",
		"--admin-addr", adminAddr, "--metrics-addr", freePort(t), "--ready-addr", readyAddr)
	exited, stderr := startZtunnel(t, cmd)

	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get("http://" + readyAddr + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz/ready not 200 within 10s (last: %v)", err)
		}
		select {
		case err := <-exited:
			t.Fatalf("ztunnel exited early: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := os.Stat(filepath.Join(dir, rootFileName)); err != nil {
		t.Errorf("generated CA root not written next to the config: %v", err)
	}
	resp, err := client.Get("http://" + adminAddr + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/config_dump: %d", resp.StatusCode)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("after SIGTERM: %v, want exit code 0", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ztunnel still running 5s after SIGTERM")
	}
	if !strings.Contains(stderr.String(), "ztunnel drained") {
		t.Errorf("no drain log line:\n%s", stderr.String())
	}
}

func TestPodFlag(t *testing.T) {
	p := podFlag{}
	if err := p.Set("shop-b=/run/netns/b=1"); err != nil || p["shop-b"] != "/run/netns/b=1" {
		t.Errorf("Set with \"=\" in the path: %v, %v", err, p)
	}
	p = podFlag{}
	if err := p.Set("shop-a=/run/netns/a"); err != nil || p["shop-a"] != "/run/netns/a" {
		t.Errorf("Set: %v, %v", err, p)
	}
	if err := p.Set("shop-a=/run/netns/other"); err == nil {
		t.Error("same pod with another path: no error")
	}
	for _, bad := range []string{"", "=x", "x=", "noequals"} {
		if err := (podFlag{}).Set(bad); err == nil {
			t.Errorf("Set(%q): no error", bad)
		}
	}
}

func TestScanNetnsDir_UnescapesUIDs(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "cluster1%2F%2Fv1%2FPod%2Fshop%2Ffrontend-1", "")
	writeFile(t, dir, "plain-uid", "")
	writeFile(t, dir, ".hidden", "")
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := scanNetnsDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"cluster1//v1/Pod/shop/frontend-1": filepath.Join(dir, "cluster1%2F%2Fv1%2FPod%2Fshop%2Ffrontend-1"),
		"plain-uid":                        filepath.Join(dir, "plain-uid"),
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := scanNetnsDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing dir: no error")
	}
}
