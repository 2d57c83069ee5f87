package controlplane

import (
	"fmt"
	"io"
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
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// istiod is the istiod-lite process.
type istiod struct {
	cmd                     *exec.Cmd
	pid                     int
	grpc, monitoring, ready string
	rootCert, log           string
	started                 time.Time
	exited                  chan struct{}
}

// buildIstiod builds cmd/istiod-lite, or returns $BENCH_ISTIOD_LITE if set.
func buildIstiod(b *testing.B) string {
	b.Helper()
	if bin := os.Getenv("BENCH_ISTIOD_LITE"); bin != "" {
		return bin
	}
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		b.Fatal(err)
	}
	bin := filepath.Join(b.TempDir(), "istiod-lite")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/istiod-lite")
	cmd.Dir = strings.TrimSpace(string(root))
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build istiod-lite: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startIstiod runs bin against kubeconfig on free loopback ports; Cleanup
// stops it with SIGTERM.
func startIstiod(b *testing.B, bin, kubeconfig string, env []string) *istiod {
	b.Helper()
	dir := b.TempDir()
	in := &istiod{
		grpc: freeAddr(b), monitoring: freeAddr(b), ready: freeAddr(b),
		rootCert: filepath.Join(dir, "root-cert.pem"), log: filepath.Join(dir, "istiod-lite.log"),
		exited: make(chan struct{}),
	}
	logf, err := os.Create(in.log)
	if err != nil {
		b.Fatal(err)
	}
	in.cmd = exec.Command(bin,
		"--kubeconfig", kubeconfig, "--namespace", "istio-system",
		"--grpc-addr", in.grpc, "--monitoring-addr", in.monitoring, "--ready-addr", in.ready,
		"--tls-san", "127.0.0.1", "--root-cert-out", in.rootCert, "--log-level", "warn")
	in.cmd.Env = append(os.Environ(), env...)
	in.cmd.Stdout, in.cmd.Stderr = logf, logf
	in.started = time.Now()
	if err := in.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	logf.Close()
	in.pid = in.cmd.Process.Pid
	go func() { in.cmd.Wait(); close(in.exited) }()
	b.Cleanup(func() {
		in.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-in.exited:
		case <-time.After(10 * time.Second):
			in.cmd.Process.Kill()
			<-in.exited
		}
		if b.Failed() {
			out, _ := os.ReadFile(in.log)
			b.Logf("istiod-lite log:\n%s", tail(out, 8<<10))
		}
	})
	return in
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// waitReady polls /ready every 5 ms and returns the time from process
// start to the first 200.
func (in *istiod) waitReady(b *testing.B, timeout time.Duration) time.Duration {
	b.Helper()
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := hc.Get("http://" + in.ready + "/ready")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(in.started)
			}
		}
		select {
		case <-in.exited:
			b.Fatalf("istiod-lite exited: %v", in.cmd.ProcessState)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("istiod-lite not ready after %v (last: %v)", timeout, err)
		}
	}
}

// cpu returns the process's user+system CPU time so far.
func (in *istiod) cpu(b *testing.B) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", in.pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the parenthesised command: state is field 3, utime 14,
	// stime 15.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// memKiB returns VmRSS and VmHWM (peak RSS) in KiB.
func (in *istiod) memKiB(b *testing.B) (rss, hwm int64) {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	return rss, hwm
}

// metric returns the sum of the samples of one metric family on /metrics.
func (in *istiod) metric(b *testing.B, name string) float64 {
	b.Helper()
	resp, err := http.Get("http://" + in.monitoring + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}
