package controlplane

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Proc is one control-plane process, run in its own process group (its pid
// is the group id) with its output going to a log file.
type Proc struct {
	Name string
	Log  string // path of the combined stdout/stderr log

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has been reaped
	err  error         // result of Wait; valid once done is closed
}

// ProcOptions tune StartProc.
type ProcOptions struct {
	// Detached leaves the process running when its parent dies (a
	// long-running cluster), in a session of its own; otherwise the kernel
	// kills it with the parent (PR_SET_PDEATHSIG), as a test wants.
	Detached bool
	// Dir is the working directory; default the log's directory.
	Dir string
}

// StartProc starts bin with args in a new process group, logging to
// dir/<name>.log (the command line is its first line), and reaps it in
// the background.
func StartProc(dir, name string, opts ProcOptions, bin string, args ...string) (*Proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %s log: %w", name, err)
	}
	defer f.Close() // the child holds its own descriptor
	fmt.Fprintf(f, "# %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	if opts.Dir != "" {
		cmd.Dir = opts.Dir
	}
	cmd.Stdout, cmd.Stderr = f, f
	if opts.Detached {
		// A session of its own (hence a process group whose id is its
		// pid), away from the terminal's hangups.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("controlplane: start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, Log: logPath, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

// wait reaps the process; run as its own goroutine.
func (p *Proc) wait() {
	p.err = p.cmd.Wait()
	close(p.done)
}

// Pid returns the process id, which is also its process group id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is the process's exit error; valid once Exited.
func (p *Proc) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Done is closed when the process has been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM to the process group, and SIGKILL after grace. It
// returns once the process has been reaped; then it signals the group once
// more with SIGKILL so that no descendant outlives it.
func (p *Proc) Stop(grace time.Duration) {
	pgid := p.Pid()
	if !p.Exited() {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL) // stragglers in the group, if any
}

// Tail returns the last n bytes of the process's log.
func (p *Proc) Tail(n int64) string { return TailFile(p.Log, n) }

// TailFile returns the last n bytes of a file, or the error reading it.
func TailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	off := max(st.Size()-n, 0)
	buf := make([]byte, st.Size()-off)
	_, _ = f.ReadAt(buf, off)
	return string(buf)
}

// GroupGone reports whether no process is left in process group pgid.
func GroupGone(pgid int) bool {
	return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

// FreePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago. They are held open together so that no two are the same.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("controlplane: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
