package ztunnels

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/ambientmesh/ambient/internal/netns"
)

// Target is one ztunnel: the node it runs on and, on a real cluster, its pod.
type Target struct {
	Node      string
	Namespace string // the pod's namespace; empty for the local dialer
	Pod       string
}

// Name is how messages and the REPORTER column name the target.
func (t Target) Name() string { return t.Node }

// Dialer connects to a ztunnel's admin port.
type Dialer interface {
	// Targets lists the ztunnels to reach, sorted by node.
	Targets(ctx context.Context) ([]Target, error)
	// Dial opens a connection to t's admin port.
	Dial(ctx context.Context, t Target) (net.Conn, error)
	// Close releases what the dialer holds.
	Close() error
}

// Netns reaches the ztunnels of the local cluster by entering each node's
// network namespace (hostNetwork ztunnel pods live there).
type Netns struct {
	State *ClusterState
}

// Targets lists the state file's nodes.
func (d *Netns) Targets(context.Context) ([]Target, error) {
	out := make([]Target, 0, len(d.State.Nodes))
	for _, n := range d.State.Nodes {
		out = append(out, Target{Node: n.Name})
	}
	return out, nil
}

// Dial connects to the admin address inside t's node namespace.
func (d *Netns) Dial(ctx context.Context, t Target) (net.Conn, error) {
	addr := d.State.ZtunnelAdminAddr
	if addr == "" {
		addr = DefaultAdminAddr
	}
	for _, n := range d.State.Nodes {
		if n.Name == t.Node {
			c, err := netns.DialTCP(ctx, n.Netns, addr)
			if errors.Is(err, os.ErrPermission) {
				return nil, fmt.Errorf("entering the network namespace %s of node %s: %w; the local cluster's nodes need root: run ambientctl with sudo", n.Netns, n.Name, err)
			}
			if err != nil {
				return nil, fmt.Errorf("connecting to %s in the network namespace %s of node %s: %w", addr, n.Netns, n.Name, err)
			}
			return c, nil
		}
	}
	return nil, fmt.Errorf("node %s is not in the local cluster's state file", t.Node)
}

// Close does nothing.
func (d *Netns) Close() error { return nil }
