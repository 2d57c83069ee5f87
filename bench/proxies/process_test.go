package proxies

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The test binary doubles as the child process: with PROXIES_HELPER set it
// acts as a tiny "proxy" instead of running tests.
func TestMain(m *testing.M) {
	switch os.Getenv("PROXIES_HELPER") {
	case "":
		goleak.VerifyTestMain(m)
	case "listen": // spawn a grandchild, burn a little CPU, listen on $ADDR
		// Everything the test checks happens before listening: Start
		// returns as soon as the address accepts.
		if os.Getenv("GRANDCHILD") != "" {
			child := exec.Command("sleep", "300")
			child.Start() // same process group
			os.WriteFile(os.Getenv("GRANDCHILD"), fmt.Appendf(nil, "%d", child.Process.Pid), 0o644)
		}
		for deadline := time.Now().Add(100 * time.Millisecond); time.Now().Before(deadline); {
		}
		ln, err := net.Listen("tcp", os.Getenv("ADDR"))
		if err != nil {
			fmt.Println("helper:", err)
			os.Exit(3)
		}
		defer ln.Close()
		fmt.Println("helper: listening")
		select {}
	case "exit":
		fmt.Println("helper: cannot load config: bad things")
		os.Exit(1)
	case "silent":
		select {}
	case "env":
		fmt.Println("helper: greeting", os.Getenv("HELPER_GREETING"))
		os.Exit(1)
	}
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

func helperProc(t *testing.T, mode string, env ...string) Proc {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PROXIES_HELPER", mode)
	t.Setenv("ADDR", addr)
	for i := 0; i+1 < len(env); i += 2 {
		t.Setenv(env[i], env[i+1])
	}
	return Proc{
		Name:  "helper-" + mode,
		Argv:  []string{exe, "-test.run=^$"},
		Files: []File{{filepath.Join(dir, "conf", "helper.conf"), "x = 1\n"}},
		Ready: addr,
		Log:   filepath.Join(dir, "logs", "helper.out"),
	}
}

func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	// A zombie still answers kill(0); treat it as dead.
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(data), ") Z ")
}

func TestStart_WaitsForListenerAndStopKillsWholeGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "grandchild.pid")
	p := helperProc(t, "listen", "GRANDCHILD", pidFile)
	r, err := Start(t.Context(), p, 10*time.Second)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer r.Stop()
	if _, err := os.Stat(p.Files[0].Path); err != nil {
		t.Errorf("config file not written: %v", err)
	}
	c, err := net.Dial("tcp", p.Ready)
	if err != nil {
		t.Fatalf("not listening after Start: %v", err)
	}
	c.Close()
	cpu, err := r.CPU()
	if err != nil || cpu <= 0 {
		t.Errorf("CPU = %v, %v; want > 0 after a busy loop", cpu, err)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var gc int
	fmt.Sscan(string(data), &gc)
	if !alive(gc) {
		t.Fatalf("grandchild %d not running", gc)
	}
	r.Stop()
	r.Stop() // idempotent
	if exited, _ := r.Exited(); !exited {
		t.Error("process still running after Stop")
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(gc) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(gc) {
		syscall.Kill(gc, syscall.SIGKILL)
		t.Error("grandchild survived Stop: process group not killed")
	}
}

func TestStart_EarlyExitReportsLogTail(t *testing.T) {
	_, err := Start(t.Context(), helperProc(t, "exit"), 10*time.Second)
	if err == nil {
		t.Fatal("Start of a process that exits succeeded")
	}
	if !strings.Contains(err.Error(), "exited before listening") || !strings.Contains(err.Error(), "bad things") {
		t.Errorf("error lacks cause or log tail: %v", err)
	}
}

func TestStart_ReadinessTimeoutStopsProcess(t *testing.T) {
	start := time.Now()
	_, err := Start(t.Context(), helperProc(t, "silent"), 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "not listening") {
		t.Fatalf("err = %v, want a readiness timeout", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("took %v", time.Since(start))
	}
}

func TestStart_CancelledContextKillsProcess(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	r, err := Start(ctx, helperProc(t, "listen"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	cancel()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("process outlived its context")
	}
	_, werr := r.Exited()
	if werr == nil {
		t.Error("killed process reported a clean exit")
	}
}

func TestStart_MissingExecutable(t *testing.T) {
	p := helperProc(t, "exit")
	p.Argv = []string{"/nonexistent/stunnel9"}
	_, err := Start(t.Context(), p, time.Second)
	if !errors.Is(err, os.ErrNotExist) && (err == nil || !strings.Contains(err.Error(), "README")) {
		t.Errorf("err = %v", err)
	}
}

func TestStart_ReadinessGoesThroughProcDial(t *testing.T) {
	p := helperProc(t, "listen")
	var dials atomic.Int32
	p.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	r, err := Start(t.Context(), p, 10*time.Second)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer r.Stop()
	if dials.Load() == 0 {
		t.Error("Start waited for readiness without Proc.Dial")
	}
}

func TestStart_ProcEnvReachesTheProcess(t *testing.T) {
	p := helperProc(t, "env")
	p.Env = []string{"HELPER_GREETING=from-proc-env"}
	_, err := Start(t.Context(), p, 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "greeting from-proc-env") {
		t.Errorf("err = %v, want the log tail with the greeting from Proc.Env", err)
	}
}
