package nodeagent

// The agent's side of the kubelet API (package kubeletapi): running
// containers as exec and port-forward targets, exec probes.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/nodeagent/images"
	"github.com/ambientmesh/ambient/nodeagent/kubeletapi"
)

// listenInNode listens inside the node's network namespace.
func (a *Agent) listenInNode(network, addr string) (net.Listener, error) {
	if a.cfg.NodeNetns == "" {
		return net.Listen(network, addr)
	}
	return netns.ListenTCP(a.cfg.NodeNetns, addr)
}

// execTarget is a running container as exec, exec probes and
// port-forward see it: what its process was started with.
type execTarget struct {
	image  string
	netns  string // the pod's network namespace; "": the agent's
	mounts []bindMount
	env    []string
	dir    string
}

// setExec publishes (t non-nil) or withdraws a running container.
func (w *podWorker) setExec(name string, t *execTarget) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t == nil {
		delete(w.execs, name)
		return
	}
	if w.execs == nil {
		w.execs = map[string]*execTarget{}
	}
	w.execs[name] = t
}

func (w *podWorker) execFor(name string) *execTarget {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.execs[name]
}

// podNetns is the network namespace of the pod's running containers.
func (w *podWorker) podNetns() (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, t := range w.execs {
		return t.netns, true
	}
	return "", false
}

// maxProbeOutput bounds what an exec probe's output keeps.
const maxProbeOutput = 10 << 10

// probeExec runs the exec probes of a container.
func (w *podWorker) probeExec(name string) func(context.Context, []string) (int, []byte, error) {
	return func(ctx context.Context, cmd []string) (int, []byte, error) {
		out := &cappedBuffer{max: maxProbeOutput}
		code, err := w.a.execIn(ctx, w, name, cmd, kubeletapi.Stdio{Out: out, Err: out})
		return code, out.buf.Bytes(), err
	}
}

// cappedBuffer keeps the first max bytes written to it.
type cappedBuffer struct {
	mu  sync.Mutex // guards buf: stdout and stderr write concurrently
	buf bytes.Buffer
	max int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// execIn runs cmd in a running container of w's pod, as the container
// was started (see runInPod), until it exits, ctx ends or the pod goes.
// A command the image table does not allow for the container's image is
// exit code 126 (127 for a tool missing on the host), the reason written
// to stderr, as a shell reports it.
func (a *Agent) execIn(ctx context.Context, w *podWorker, name string, cmd []string, s kubeletapi.Stdio) (int, error) {
	t := w.execFor(name)
	if t == nil {
		p := w.current()
		return 0, fmt.Errorf("container %q of pod %s/%s is not running: %w", name, p.Namespace, p.Name, kubeletapi.ErrBadRequest)
	}
	argv, err := a.cfg.Images.ResolveExec(t.image, cmd)
	if err != nil {
		code := 127
		if errors.Is(err, images.ErrCommandNotInImage) || errors.Is(err, images.ErrNotInTable) {
			code = 126
		}
		msg := "nodeagent: exec: " + err.Error() + "\n"
		if s.Err != nil {
			_, _ = io.WriteString(s.Err, msg)
		} else if s.Out != nil {
			_, _ = io.WriteString(s.Out, msg)
		}
		return code, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go cancelWhenGone(ctx, cancel, w.done)
	info, err := runInPod(ctx, t.netns, t.mounts, argv, t.env, t.dir, s.In, s.Out, s.Err)
	if err != nil {
		return 0, fmt.Errorf("exec in container %q: %w", name, err)
	}
	return int(info.code), nil
}

// cancelWhenGone cancels ctx when gone closes.
func cancelWhenGone(ctx context.Context, cancel context.CancelFunc, gone <-chan struct{}) {
	select {
	case <-gone:
		cancel()
	case <-ctx.Done():
	}
}

// workerFor finds the pod's worker by name.
func (a *Agent) workerFor(namespace, name string) (*podWorker, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var found *podWorker
	for _, w := range a.workers {
		p := w.current()
		if p.Namespace != namespace || p.Name != name {
			continue
		}
		select {
		case <-w.done:
			continue
		default:
		}
		if found == nil || p.DeletionTimestamp == nil {
			found = w
		}
	}
	if found == nil {
		return nil, fmt.Errorf("pod %s/%s is not running on node %s: %w", namespace, name, a.cfg.NodeName, kubeletapi.ErrNotFound)
	}
	return found, nil
}

// kubeletRuntime is the agent as package kubeletapi sees it.
type kubeletRuntime struct{ a *Agent }

func (r kubeletRuntime) container(namespace, pod, container string) (*podWorker, error) {
	w, err := r.a.workerFor(namespace, pod)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, c := range w.current().Spec.Containers {
		if c.Name == container {
			return w, nil
		}
		names = append(names, c.Name)
	}
	return nil, fmt.Errorf("container %q is not in pod %s/%s (its containers: %s): %w", container, namespace, pod, strings.Join(names, ", "), kubeletapi.ErrNotFound)
}

func (r kubeletRuntime) LogFile(namespace, pod, container string) (kubeletapi.LogFile, error) {
	w, err := r.container(namespace, pod, container)
	if err != nil {
		return kubeletapi.LogFile{}, err
	}
	return kubeletapi.LogFile{Path: filepath.Join(w.dir, container+".log"), Gone: w.done}, nil
}

func (r kubeletRuntime) Exec(ctx context.Context, namespace, pod, container string, cmd []string, s kubeletapi.Stdio) (int, error) {
	w, err := r.container(namespace, pod, container)
	if err != nil {
		return 0, err
	}
	return r.a.execIn(ctx, w, container, cmd, s)
}

// portDialTimeout bounds a port-forward's dial inside the pod.
const portDialTimeout = 10 * time.Second

func (r kubeletRuntime) PortForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error {
	w, err := r.a.workerFor(namespace, pod)
	if err != nil {
		return err
	}
	ns, ok := w.podNetns()
	if !ok {
		return fmt.Errorf("pod %s/%s has no running container: %w", namespace, pod, kubeletapi.ErrBadRequest)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	dctx, cancel := context.WithTimeout(ctx, portDialTimeout)
	var conn net.Conn
	if ns == "" {
		var d net.Dialer
		conn, err = d.DialContext(dctx, "tcp", addr)
	} else {
		conn, err = netns.DialTCP(dctx, ns, addr)
	}
	cancel()
	if err != nil {
		return fmt.Errorf("dial %s in the pod's network namespace: %w", addr, err)
	}
	return proxyPort(ctx, conn, stream, w.done)
}

// proxyPort copies between a forwarded stream and the pod's port until
// the port's side ends (after the stream's end was passed on as a
// half-close), ctx ends or the pod goes.
func proxyPort(ctx context.Context, conn net.Conn, stream io.ReadWriteCloser, gone <-chan struct{}) error {
	defer conn.Close()
	go copyToPort(conn, stream)
	down := make(chan error, 1)
	go copyFromPort(stream, conn, down)
	select {
	case err := <-down:
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("port-forward: %w", err)
		}
		return nil
	case <-ctx.Done():
	case <-gone:
	}
	conn.Close()
	<-down
	return nil
}

// copyToPort copies what the client sends to the pod's port, then
// half-closes it; it ends when the stream does.
func copyToPort(conn net.Conn, stream io.Reader) {
	_, _ = io.Copy(conn, stream)
	if tc, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}

// copyFromPort copies what the pod's port sends to the client.
func copyFromPort(stream io.Writer, conn net.Conn, done chan<- error) {
	_, err := io.Copy(stream, conn)
	done <- err
}
