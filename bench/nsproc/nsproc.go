// Package nsproc runs the processes of a benchmark inside the network
// namespaces of an internal/testenv topology (nodes and pods): it builds
// the mesh's binaries with the go tool, points a bench/proxies process
// into a namespace (`ip netns exec`, which keeps the pid, so the process
// still leads its own process group and its CPU and memory can be read
// from /proc), and waits for an HTTP readiness endpoint that only answers
// inside a namespace.
package nsproc

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/ambientmesh/ambient/bench/proxies"
	"github.com/ambientmesh/ambient/internal/testenv"
)

// InNS makes p run inside ns and checks its readiness from there.
func InNS(p proxies.Proc, ns testenv.NS) proxies.Proc {
	p.Argv = append([]string{"ip", "netns", "exec", ns.Name}, p.Argv...)
	p.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := ns.Dial(ctx, addr)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	return p
}

// GoBuild builds the main package pkg, relative to the root of the module
// the working directory is in (e.g. "./cmd/waypoint"), into the file out.
func GoBuild(pkg, out string) error {
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return fmt.Errorf("nsproc: finding the module root (go list -m): %w", err)
	}
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = strings.TrimSpace(string(root))
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nsproc: go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// WaitHTTPOK polls url from inside ns until it answers 200 OK. It gives up
// when timeout passes, ctx is done or, if non-nil, exited reports that the
// process behind url has ended.
func WaitHTTPOK(ctx context.Context, ns testenv.NS, url string, timeout time.Duration, exited func() bool) error {
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return ns.Dial(ctx, addr) },
		DisableKeepAlives: true,
	}}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("nsproc: %s: %w", url, err)
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		switch {
		case exited != nil && exited():
			return fmt.Errorf("nsproc: the process behind %s in %s exited before it was ready (last: %s)", url, ns.Name, last)
		case ctx.Err() != nil:
			return fmt.Errorf("nsproc: waiting for %s in %s: %w", url, ns.Name, ctx.Err())
		case time.Now().After(deadline):
			return fmt.Errorf("nsproc: %s in %s not ready after %v (last: %s)", url, ns.Name, timeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
