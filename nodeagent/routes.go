package nodeagent

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Peer routes (Config.PeerRoutes): the node's namespace gets a route to
// every other Node's pod CIDR via that Node's InternalIP, the "host-gw"
// model, so pods reach pods on other nodes over the node link whatever
// CIDRs the controller-manager allocated. The routes carry protocol
// routeProto; the agent replaces them on every Node change and removes
// them when it stops.

// routeProto marks the agent's routes (`ip route show proto 169`).
const routeProto = "169"

// peerRoute is one route to another node's pods.
type peerRoute struct {
	CIDR netip.Prefix
	Via  netip.Addr
}

// desiredRoutes returns the routes to every other node's pod CIDRs of the
// same family as its InternalIP, sorted.
func desiredRoutes(nodes []*v1.Node, self string) []peerRoute {
	var out []peerRoute
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		var ip netip.Addr
		for _, a := range n.Status.Addresses {
			if a.Type == v1.NodeInternalIP {
				if p, err := netip.ParseAddr(a.Address); err == nil {
					ip = p
					break
				}
			}
		}
		if !ip.IsValid() {
			continue
		}
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		for _, c := range cidrs {
			p, err := netip.ParsePrefix(c)
			if err != nil || p.Addr().Is4() != ip.Is4() {
				continue
			}
			out = append(out, peerRoute{CIDR: p.Masked(), Via: ip})
		}
	}
	slices.SortFunc(out, func(a, b peerRoute) int { return strings.Compare(a.CIDR.String(), b.CIDR.String()) })
	return out
}

// startPeerRoutes registers the Node informer (before the factory starts)
// and returns the loop that keeps the peer routes in sync with the Nodes
// until ctx ends, then removes them.
func (a *Agent) startPeerRoutes(factory informers.SharedInformerFactory) (func(ctx context.Context), error) {
	lister := factory.Core().V1().Nodes().Lister()
	inf := factory.Core().V1().Nodes().Informer()
	kick := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke,
	}); err != nil {
		return nil, fmt.Errorf("nodeagent: node informer: %w", err)
	}
	return func(ctx context.Context) { a.syncPeerRoutes(ctx, inf, lister, kick, poke) }, nil
}

// syncPeerRoutes is the peer-route loop.
func (a *Agent) syncPeerRoutes(ctx context.Context, inf cache.SharedIndexInformer, lister corelisters.NodeLister, kick <-chan struct{}, poke func(any)) {
	var applied []peerRoute
	for {
		select {
		case <-ctx.Done():
			if len(applied) > 0 {
				if err := a.ipRoute("flush", "proto", routeProto); err != nil {
					a.log.Warn("peer routes: removing", "err", err)
				}
			}
			return
		case <-kick:
		}
		if !inf.HasSynced() {
			time.AfterFunc(100*time.Millisecond, func() { poke(nil) })
			continue
		}
		nodes, err := lister.List(labels.Everything())
		if err != nil {
			continue
		}
		want := desiredRoutes(nodes, a.cfg.NodeName)
		if slices.Equal(want, applied) {
			continue
		}
		var errs []string
		for _, r := range want {
			if err := a.ipRoute("replace", r.CIDR.String(), "via", r.Via.String(), "proto", routeProto); err != nil {
				errs = append(errs, err.Error())
			}
		}
		for _, r := range applied {
			if !slices.Contains(want, r) {
				if err := a.ipRoute("del", r.CIDR.String(), "via", r.Via.String(), "proto", routeProto); err != nil {
					errs = append(errs, err.Error())
				}
			}
		}
		if len(errs) > 0 {
			a.log.Warn("peer routes", "errors", errs)
			time.AfterFunc(2*time.Second, func() { poke(nil) })
		} else {
			a.log.Info("peer routes", "routes", want)
		}
		applied = want
	}
}

// ipRoute runs `ip route ARGS` in the node's namespace.
func (a *Agent) ipRoute(args ...string) error {
	argv := append([]string{"route"}, args...)
	var out []byte
	err := inNode(a.cfg.NodeNetns, func() error {
		var err error
		out, err = exec.Command("ip", argv...).CombinedOutput()
		return err
	})
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
