// Package probe runs a container's readiness and liveness probes:
// httpGet and tcpSocket from the node's network namespace to the pod's
// IP, as a kubelet's run from the host, and exec probes through
// Prober.Exec, which runs the command in the container as `kubectl exec`
// does (exit code 0 is success; the command is killed when the probe's
// timeoutSeconds pass). grpc probes are not supported and count as
// failing, with the reason in the event.
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambientmesh/ambient/internal/netns"
)

// Kind is a probe's purpose.
type Kind int

// Probe kinds.
const (
	Readiness Kind = iota
	Liveness
)

// Event reports a probe's verdict change for one run of a container.
type Event struct {
	Container string
	Gen       int // the run, as given in Prober
	Kind      Kind
	OK        bool
	Msg       string // the last failure
}

// Prober is one probe of one container run.
type Prober struct {
	Kind      Kind
	Probe     *v1.Probe
	Container *v1.Container // for named ports
	Host      string        // pod IP
	NodeNetns string        // where probes dial from; "" for in place
	Gen       int
	Out       chan<- Event // verdict changes
	// Exec runs an exec probe's command in the container until it exits
	// or ctx ends (when it must kill it), returning its exit code and
	// output; nil: exec probes fail saying so.
	Exec func(ctx context.Context, cmd []string) (code int, output []byte, err error)
}

// Run probes until ctx ends, sending each change of verdict to p.Out.
// Readiness starts false, liveness true. It is meant to be its own
// goroutine.
func Run(ctx context.Context, p Prober) {
	pr := p.Probe
	period := secs(pr.PeriodSeconds, 10)
	timeout := secs(pr.TimeoutSeconds, 1)
	succ, fail := int(pr.SuccessThreshold), int(pr.FailureThreshold)
	if succ < 1 {
		succ = 1
	}
	if fail < 1 {
		fail = 3
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(secs(pr.InitialDelaySeconds, 0)):
	}
	state := p.Kind == Liveness
	var nOK, nFail int
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		err := p.once(ctx, timeout)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			nOK, nFail = nOK+1, 0
		} else {
			nOK, nFail = 0, nFail+1
		}
		next := state
		if nOK >= succ {
			next = true
		} else if nFail >= fail {
			next = false
		}
		if next != state {
			state = next
			msg := ""
			if err != nil {
				msg = err.Error()
			}
			select {
			case p.Out <- Event{Container: p.Container.Name, Gen: p.Gen, Kind: p.Kind, OK: state, Msg: msg}:
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func secs(s int32, def int) time.Duration {
	if s <= 0 {
		return time.Duration(def) * time.Second
	}
	return time.Duration(s) * time.Second
}

func (p Prober) dial(ctx context.Context, addr string) (net.Conn, error) {
	if p.NodeNetns == "" {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	return netns.DialTCP(ctx, p.NodeNetns, addr)
}

// once runs the probe one time.
func (p Prober) once(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case p.Probe.HTTPGet != nil:
		g := p.Probe.HTTPGet
		port, err := resolvePort(g.Port, p.Container)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = p.Host
		}
		scheme := strings.ToLower(string(g.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		path := g.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		url := scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port)) + path
		tr := &http.Transport{
			DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return p.dial(ctx, addr) },
			DisableKeepAlives: true,
		}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		req.Header.Set("User-Agent", "kube-probe/nodeagent")
		resp, err := (&http.Client{Transport: tr, Timeout: timeout}).Do(req)
		if err != nil {
			return fmt.Errorf("probe %s: %w", url, err)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("probe %s: HTTP %d", url, resp.StatusCode)
		}
		return nil
	case p.Probe.Exec != nil:
		return p.exec(ctx, timeout)
	case p.Probe.TCPSocket != nil:
		port, err := resolvePort(p.Probe.TCPSocket.Port, p.Container)
		if err != nil {
			return err
		}
		host := p.Probe.TCPSocket.Host
		if host == "" {
			host = p.Host
		}
		c, err := p.dial(ctx, net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return fmt.Errorf("probe tcp %s:%d: %w", host, port, err)
		}
		return c.Close()
	}
	return fmt.Errorf("probe type not supported by the node agent (httpGet, tcpSocket and exec are)")
}

// maxExecOutput is how much of an exec probe's output a failure message
// quotes.
const maxExecOutput = 1 << 10

// exec runs an exec probe (ctx already carries the timeout).
func (p Prober) exec(ctx context.Context, timeout time.Duration) error {
	cmd := p.Probe.Exec.Command
	if p.Exec == nil {
		return fmt.Errorf("probe exec %q: no exec runner for this container", cmd)
	}
	if len(cmd) == 0 {
		return errors.New("probe exec: empty command")
	}
	code, out, err := p.Exec(ctx, cmd)
	if ctx.Err() != nil {
		return fmt.Errorf("probe exec %q: timed out after %v", cmd, timeout)
	}
	if err != nil {
		return fmt.Errorf("probe exec %q: %w", cmd, err)
	}
	if code != 0 {
		if len(out) > maxExecOutput {
			out = out[:maxExecOutput]
		}
		return fmt.Errorf("probe exec %q: exit code %d: %s", cmd, code, strings.TrimSpace(string(out)))
	}
	return nil
}

// resolvePort resolves a numeric or named container port.
func resolvePort(p intstr.IntOrString, c *v1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("probe port %q: no such named port", p.StrVal)
}
