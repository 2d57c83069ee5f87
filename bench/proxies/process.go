package proxies

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Running is a started Proc. Its process leads its own process group, so
// Stop also reaches the workers it forks (nginx).
type Running struct {
	Proc Proc
	cmd  *exec.Cmd
	log  *os.File

	done    chan struct{} // closed when the process has been waited for
	waitErr error         // set before done is closed

	stopOnce sync.Once
}

// Start writes p's files, launches it and waits until p.Ready accepts a TCP
// connection, the process exits, readyTimeout passes or ctx is done. On any
// failure the process is stopped and the error carries the tail of its logs.
// The process is also killed if ctx is cancelled, and (via PR_SET_PDEATHSIG)
// if this process dies.
func Start(ctx context.Context, p Proc, readyTimeout time.Duration) (*Running, error) {
	for _, f := range p.Files {
		if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
			return nil, fmt.Errorf("proxies: %s: %w", p.Name, err)
		}
		if err := os.WriteFile(f.Path, []byte(f.Data), 0o600); err != nil {
			return nil, fmt.Errorf("proxies: %s: %w", p.Name, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(p.Log), 0o755); err != nil {
		return nil, fmt.Errorf("proxies: %s: %w", p.Name, err)
	}
	if _, err := exec.LookPath(p.Argv[0]); err != nil {
		return nil, fmt.Errorf("proxies: %s: %w (install it: see bench/README.md)", p.Name, err)
	}
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("proxies: %s: %w", p.Name, err)
	}
	cmd := exec.CommandContext(ctx, p.Argv[0], p.Argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if len(p.Env) > 0 {
		cmd.Env = append(os.Environ(), p.Env...)
	}
	cmd.Dir = filepath.Dir(p.Log)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("proxies: start %s: %w", p.Name, err)
	}
	r := &Running{Proc: p, cmd: cmd, log: logf, done: make(chan struct{})}
	go r.waitProc()
	if err := r.waitReady(ctx, readyTimeout); err != nil {
		r.Stop()
		return nil, fmt.Errorf("%w\n%s", err, r.LogTail(15))
	}
	return r, nil
}

func (r *Running) waitProc() {
	r.waitErr = r.cmd.Wait()
	r.log.Close()
	close(r.done)
}

func (r *Running) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := r.dialReady(ctx)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-r.done:
			return fmt.Errorf("proxies: %s exited before listening on %s: %v", r.Proc.Name, r.Proc.Ready, r.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("proxies: %s: %w", r.Proc.Name, ctx.Err())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("proxies: %s not listening on %s after %v: %v", r.Proc.Name, r.Proc.Ready, timeout, err)
		}
	}
}

func (r *Running) dialReady(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if r.Proc.Dial != nil {
		return r.Proc.Dial(ctx, r.Proc.Ready)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", r.Proc.Ready)
}

// Pid is the process id, which is also its process group id.
func (r *Running) Pid() int { return r.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (r *Running) Exited() (bool, error) {
	select {
	case <-r.done:
		return true, r.waitErr
	default:
		return false, nil
	}
}

// Stop ends the whole process group: SIGTERM, then SIGKILL after a grace
// period, and waits for the process. It is safe to call more than once.
func (r *Running) Stop() {
	r.stopOnce.Do(func() {
		pid := r.Pid()
		killGroup(pid, syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(3 * time.Second):
		}
		// Whatever is left of the group (nginx workers, a hung leader).
		killGroup(pid, syscall.SIGKILL)
		<-r.done
	})
}

func killGroup(pgid int, sig syscall.Signal) error {
	err := syscall.Kill(-pgid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// CPU is the user+system CPU time used so far by every live process in the
// group (for nginx: master and workers; threads are included).
func (r *Running) CPU() (time.Duration, error) { return GroupCPU(r.Pid()) }

// LogTail returns the last n lines of the process's logs, each file headed
// by its path.
func (r *Running) LogTail(n int) string {
	var b strings.Builder
	for _, path := range append([]string{r.Proc.Log}, r.Proc.ExtraLogs...) {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "==> %s <==\n", path)
		for _, l := range TailLines(data, n) {
			fmt.Fprintf(&b, "%s\n", l)
		}
	}
	return b.String()
}

// TailLines returns the last n non-empty lines of data.
func TailLines(data []byte, n int) []string {
	var out []string
	for _, l := range bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n")) {
		if len(bytes.TrimSpace(l)) > 0 {
			out = append(out, string(l))
		}
	}
	return out[max(0, len(out)-n):]
}
