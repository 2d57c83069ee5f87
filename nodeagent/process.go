package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// process is one run of a container: a process-group leader started in
// the pod's network namespace and a private mount namespace of its own.
type process struct {
	cmd    *exec.Cmd
	rec    procRecord
	start  time.Time
	exited chan error // cmd.Wait's result
}

// bindMount is a file or directory of the node mounted at a path inside a
// container's mount namespace.
type bindMount struct {
	Source, Target string
}

// startProcess starts argv with env in the network namespace at nsPath
// (in place when empty) and a new mount namespace holding mounts, stdout
// and stderr appended to logPath. The child gets its own process group
// (so the container's descendants are signalled together) and SIGKILL
// when the agent dies: an agent that comes back cleans up and starts its
// pods anew, and a node agent that is gone means a node that is gone.
//
// Namespaces are per thread: startProcess forks the child from a locked
// OS thread (see forkInNamespaces) that enters the pod's network
// namespace, unshares its mount namespace, makes every mount private (so
// nothing propagates back to the node) and bind-mounts mounts, starts the
// child and then switches back to the agent's namespaces. The mount
// namespace dies with the container's last process: nothing to record or
// clean up.
func startProcess(nsPath string, mounts []bindMount, argv, env []string, dir, logPath string) (*process, error) {
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
	started := make(chan error, 1)
	go forkInNamespaces(nsPath, mounts, cmd, started)
	if err := <-started; err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, exited: make(chan error, 1), start: time.Now()}
	pid := cmd.Process.Pid
	p.rec = procRecord{PID: pid, StartTime: procStartTime(pid)}
	go func() { p.exited <- cmd.Wait() }()
	return p, nil
}

// forkInNamespaces is the goroutine that starts a container (see
// startProcess) on its own locked OS thread, reporting Start's error on
// started.
//
// The thread is switched back afterwards, never destroyed: Pdeathsig
// fires when the thread that forked a child exits, and a runtime thread
// may have forked other children (the agent's, or a test's control
// plane). Only when switching back fails does the goroutine exit locked,
// so that the runtime drops the thread rather than reuse it in the wrong
// namespaces, as internal/netns does. Unsharing the mount namespace also
// gives the thread its own working directory, which is restored;
// os.Chdir is not used by the agent.
func forkInNamespaces(nsPath string, mounts []bindMount, cmd *exec.Cmd, started chan<- error) {
	runtime.LockOSThread()
	restored := false
	defer func() {
		if restored {
			runtime.UnlockOSThread()
		}
	}()
	var origNet, origMnt, cwd int = -1, -1, -1
	defer func() {
		for _, fd := range []int{origNet, origMnt, cwd} {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	var err error
	if origNet, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		if origMnt, err = unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			cwd, err = unix.Open(".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		}
	}
	if err != nil {
		restored = true // never left
		started <- fmt.Errorf("agent namespaces: %w", err)
		return
	}
	inNet, inMnt, err := enterNamespaces(nsPath, mounts)
	if err == nil {
		err = cmd.Start()
	}
	started <- err
	restored = true
	if inMnt { // setns needs the thread's own fs, which unshare gave it
		restored = unix.Setns(origMnt, unix.CLONE_NEWNS) == nil && unix.Fchdir(cwd) == nil
	}
	if inNet && restored {
		restored = unix.Setns(origNet, unix.CLONE_NEWNET) == nil
	}
}

// enterNamespaces moves the calling (locked) thread into the network
// namespace at nsPath and a new private mount namespace with mounts; it
// reports which namespaces it left, even on error.
func enterNamespaces(nsPath string, mounts []bindMount) (inNet, inMnt bool, err error) {
	if nsPath != "" {
		fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return false, false, fmt.Errorf("network namespace: %w", err)
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			return false, false, fmt.Errorf("network namespace %s: setns: %w", nsPath, err)
		}
		inNet = true
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return inNet, false, fmt.Errorf("mount namespace: unshare: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return inNet, true, fmt.Errorf("mount namespace: making / private: %w", err)
	}
	for _, m := range mounts {
		if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND, ""); err != nil {
			return inNet, true, fmt.Errorf("mount namespace: bind %s on %s: %w", m.Source, m.Target, err)
		}
	}
	return inNet, true, nil
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
	err := <-p.exited
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

// execWaitDelay bounds how long a finished exec waits for its output to
// drain (a descendant may hold the pipes) before they are closed.
const execWaitDelay = 2 * time.Second

// runInPod runs argv as startProcess runs a container (the pod's network
// namespace, a new mount namespace with mounts, env, dir, its own process
// group, SIGKILL if the agent dies) but with the given stdio, until it
// exits or ctx ends, when its process group is SIGKILLed. It is how
// `kubectl exec` and exec probes run commands in a container.
func runInPod(ctx context.Context, nsPath string, mounts []bindMount, argv, env []string, dir string, stdin io.Reader, stdout, stderr io.Writer) (exitInfo, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = execWaitDelay
	started := make(chan error, 1)
	go forkInNamespaces(nsPath, mounts, cmd, started)
	if err := <-started; err != nil {
		return exitInfo{}, err
	}
	p := &process{cmd: cmd, exited: make(chan error, 1), start: time.Now(), rec: procRecord{PID: cmd.Process.Pid}}
	go func() {
		err := cmd.Wait()
		if errors.Is(err, exec.ErrWaitDelay) { // exited 0, output cut off
			err = nil
		}
		p.exited <- err
	}()
	stop := context.AfterFunc(ctx, func() { p.signal(syscall.SIGKILL) })
	defer stop()
	return p.wait(), nil
}
