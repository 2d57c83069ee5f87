package nodeagent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// process is one run of a container: a process-group leader started in
// the pod's network namespace.
type process struct {
	cmd   *exec.Cmd
	rec   procRecord
	start time.Time
}

// startProcess starts argv with env in the namespace at nsPath (in place
// when empty), stdout and stderr appended to logPath. The child gets its
// own process group (so the container's descendants are signalled
// together) and SIGKILL when the agent dies: an agent that comes back
// cleans up and starts its pods anew, and a node agent that is gone means
// a node that is gone.
func startProcess(nsPath string, argv, env []string, dir, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A child inherits the network namespace of the thread that forks it.
	if err := inNode(nsPath, cmd.Start); err != nil {
		return nil, err
	}
	pid := cmd.Process.Pid
	return &process{
		cmd:   cmd,
		rec:   procRecord{PID: pid, StartTime: procStartTime(pid)},
		start: time.Now(),
	}, nil
}

// signal sends sig to the whole process group.
func (p *process) signal(sig syscall.Signal) {
	if err := syscall.Kill(-p.rec.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = p.cmd.Process.Signal(sig)
	}
}

// exitInfo is how a run ended.
type exitInfo struct {
	code   int32
	signal string
	at     time.Time
}

// wait reaps the process and SIGKILLs any descendant left in its group,
// as a container runtime would when the container's main process ends.
func (p *process) wait() exitInfo {
	err := p.cmd.Wait()
	_ = syscall.Kill(-p.rec.PID, syscall.SIGKILL)
	info := exitInfo{at: time.Now()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			info.code = 128 + int32(ws.Signal())
			info.signal = ws.Signal().String()
		} else {
			info.code = int32(ee.ExitCode())
		}
	default:
		info.code = 128
	}
	return info
}
