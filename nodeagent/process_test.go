package nodeagent

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/ambientmesh/ambient/internal/testenv"
)

// TestStartProcess_MountsResolvConfPrivately runs a container that prints
// its /etc/resolv.conf: it sees the bind-mounted file, the node's stays.
func TestStartProcess_MountsResolvConfPrivately(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "resolv.conf")
	want := "nameserver 10.96.0.10\nsearch ns.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if err := os.WriteFile(src, []byte(want), 0o644); err != nil {
		t.Fatal(err)
	}
	host, _ := os.ReadFile("/etc/resolv.conf")
	cat, err := exec.LookPath("cat")
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "c.log")
	p, err := startProcess("", []bindMount{{Source: src, Target: "/etc/resolv.conf"}}, []string{cat, "/etc/resolv.conf"}, nil, dir, log)
	if err != nil {
		t.Fatal(err)
	}
	if info := p.wait(); info.code != 0 {
		t.Fatalf("cat exited %d", info.code)
	}
	if got, _ := os.ReadFile(log); string(got) != want {
		t.Errorf("container's /etc/resolv.conf = %q, want %q", got, want)
	}
	if now, _ := os.ReadFile("/etc/resolv.conf"); string(now) != string(host) {
		t.Errorf("the node's /etc/resolv.conf changed to %q", now)
	}
}

// TestStartProcess_LeavesOtherChildrenAlive: Pdeathsig fires when the
// thread that forked a child exits, so starting containers must never
// end a runtime thread. An earlier version destroyed the thread it forked
// from, which SIGKILLed whatever else that thread had started (in the
// node agent's tests, the kube-controller-manager).
func TestStartProcess_LeavesOtherChildrenAlive(t *testing.T) {
	testenv.RequireRoot(t)
	// Before each container, a child with Pdeathsig forked from the
	// caller's thread: the one the container's goroutine most likely runs on.
	var others []*exec.Cmd
	t.Cleanup(func() {
		for _, c := range others {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	dir := t.TempDir()
	for range 30 {
		runtime.LockOSThread()
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		err := cmd.Start()
		runtime.UnlockOSThread()
		if err != nil {
			t.Fatal(err)
		}
		others = append(others, cmd)
		p, err := startProcess("", nil, []string{"/bin/true"}, nil, dir, filepath.Join(dir, "c.log"))
		if err != nil {
			t.Fatal(err)
		}
		p.wait()
	}
	for _, c := range others {
		if err := syscall.Kill(c.Process.Pid, 0); errors.Is(err, syscall.ESRCH) {
			t.Fatalf("process %d (Pdeathsig) was killed by starting containers", c.Process.Pid)
		}
		var ws syscall.WaitStatus
		if pid, _ := syscall.Wait4(c.Process.Pid, &ws, syscall.WNOHANG, nil); pid == c.Process.Pid {
			t.Fatalf("process %d (Pdeathsig) ended: %v", c.Process.Pid, ws)
		}
	}
}
