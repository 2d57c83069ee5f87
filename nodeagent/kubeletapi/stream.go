package kubeletapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// Streaming timeouts, a kubelet's defaults.
const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = remotecommand.DefaultStreamCreationTimeout
)

// ErrTTY is returned for exec with a terminal, which the agent does not
// allocate.
var ErrTTY = errors.New("the node agent does not allocate terminals: run kubectl exec without -t/--tty")

func (s *Server) serveExec(w http.ResponseWriter, r *http.Request) {
	ns, pod, ctr := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		http.Error(w, "exec: the command query parameter is required", http.StatusBadRequest)
		return
	}
	// Unknown pods and containers get a plain 404 before any upgrade.
	if _, err := s.cfg.Runtime.LogFile(ns, pod, ctr); err != nil {
		httpError(w, err)
		return
	}
	s.log.Info("exec", "pod", ns+"/"+pod, "container", ctr, "command", cmd, "upgrade", upgrade(r))
	remotecommand.ServeExec(w, r, &executor{rt: s.cfg.Runtime, ns: ns}, pod, r.PathValue("uid"), ctr, cmd, opts,
		streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

// executor adapts Runtime.Exec to cri-streaming.
type executor struct {
	rt Runtime
	ns string
}

func (e *executor) ExecInContainer(ctx context.Context, pod, _, container string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	if tty {
		return ErrTTY
	}
	st := Stdio{In: in}
	if out != nil { // typed nils stay nil
		st.Out = out
	}
	if errw != nil {
		st.Err = errw
	}
	code, err := e.rt.Exec(ctx, e.ns, pod, container, cmd, st)
	if err != nil {
		return err
	}
	return exitError(code)
}

// exitError is what cri-streaming reports as a command's exit code: nil
// for 0.
func exitError(code int) error {
	if code == 0 {
		return nil
	}
	return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
}

func (s *Server) servePortForward(w http.ResponseWriter, r *http.Request) {
	ns, pod := r.PathValue("namespace"), r.PathValue("pod")
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.log.Info("port-forward", "pod", ns+"/"+pod, "upgrade", upgrade(r))
	portforward.ServePortForward(w, r, &forwarder{rt: s.cfg.Runtime, ns: ns, ctx: r.Context()}, pod, r.PathValue("uid"), opts,
		streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// forwarder adapts Runtime.PortForward to cri-streaming, which calls it
// without the request's context: ctx (the request's) ends the copies
// when the server stops.
type forwarder struct {
	rt  Runtime
	ns  string
	ctx context.Context
}

func (f *forwarder) PortForward(_ context.Context, pod, _ string, port int32, stream io.ReadWriteCloser) error {
	return f.rt.PortForward(f.ctx, f.ns, pod, port, stream)
}

// upgrade names the streaming protocol a request asks for, for the log.
func upgrade(r *http.Request) string {
	protos := r.Header.Values("X-Stream-Protocol-Version")
	if p := r.Header.Get("Sec-Websocket-Protocol"); p != "" {
		protos = append(protos, p)
	}
	return fmt.Sprintf("%s %q", r.Header.Get("Upgrade"), protos)
}
