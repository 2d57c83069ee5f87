// Package ztunnel is the per-node tunnel: one process serving every
// enrolled pod of its node with the pod's own IP and identity.
//
// For each enrolled pod (its Workload is on this node with tunnel protocol
// HBONE, and the pod's network namespace is known through AddPod), ztunnel
// installs the in-pod capture rules (internal/redirect) and opens four
// sockets inside the pod's namespace:
//
//	15001/tcp  outbound: the pod's captured TCP; routed by ztunnel/outbound
//	           and carried over HBONE as the pod's identity (or passed through)
//	15001/udp  outbound UDP, only with Config.CaptureUDP (see UDP below)
//	15006/tcp  inbound plaintext: refused when a STRICT policy applies
//	15008/tcp  inbound HBONE (HTTP/2): peer verified, L4 policy
//	           (internal/authz) evaluated, then connected to the app inside
//	           the pod
//	15008/udp  inbound HBONE/3 (HTTP/3 on QUIC, internal/hbone3): the same
//	           verification, policy, dial, flow records, drain and policy
//	           re-checks as 15008/tcp. Opened for every pod, whatever its
//	           transport: a change needs no new socket.
//
// # Tunnel transport
//
// An outbound tunnel uses the transport its peer asks for in
// Workload.tunnel_transport (the destination pod's, or the waypoint pod's):
// HTTP/2 by default, QUIC when it says QUIC. A QUIC dial gets half the
// connect timeout; if it fails before the peer answered the CONNECT (UDP
// blocked, handshake timeout, reset), the tunnel is dialed over HTTP/2 in
// the time left, and the address is remembered (QUICRetryAfter, 5 minutes
// by default, at most 4096 addresses) so that tunnels to it go straight to
// HTTP/2 until then. An answer from the peer (400, 401, 503) is final on
// either transport: it is never retried over the other. Flow records name
// the transport that carried each connection, on both ends: "hbone"
// (HTTP/2) or "hbone3" (HTTP/3); so does the metric
// ambient_tunnel_connections_total{reporter,transport}, and
// ambient_tunnel_quic_fallbacks_total counts the fallbacks.
//
// ztunnel's own sockets, TCP and UDP, carry mark 0x539 and so bypass
// capture (UDP is captured only with Config.CaptureUDP, below). A policy
// change closes open inbound connections it no longer allows, over either
// transport. Every connection ends in one flow record and Istio's TCP
// metrics.
//
// # UDP (Config.CaptureUDP, --capture-udp; off by default)
//
// With CaptureUDP the pods' capture rules also steer their outbound UDP,
// DNS to port 53 excepted, to 15001/udp (internal/redirect), where a
// transparent socket (internal/udpcapture) reads each datagram with its
// original destination. One read loop per pod feeds a flow table keyed by
// (app address, original destination), at most 4096 flows per pod. A new
// flow is planned like a TCP connection (outbound.PlanUDP), except that
// it never goes through a waypoint: waypoints proxy TCP only, as Istio's
// do, so UDP is tunnelled straight to the endpoint's ztunnel, which
// enforces the destination's L4 policies (an L7 policy on the waypoint
// does not apply to UDP). The tunnel is CONNECT-UDP (RFC 9298) as the
// source pod's identity over the peer's transport: HTTP/3 datagrams when
// it asks for QUIC, with the same fallback to HTTP/2 and the same memory
// of failed QUIC addresses as TCP, else capsules on an HTTP/2 stream. A
// destination outside the mesh, or in it but not enrolled, is reached
// from a marked socket in the pod's namespace (passthrough). Replies go
// back to the app from a reply socket bound to the original destination,
// one per destination, shared by its flows and closed with the last.
// Datagrams that arrive while a flow's tunnel is dialed wait in a bounded
// queue (256); beyond it they are dropped, as UDP may be. A flow that
// cannot be opened (refused by policy, no route, a failed dial) stays in
// the table for 5 s dropping the app's datagrams, so a chatty app is not
// re-dialled and recorded once per datagram.
//
// The destination's ztunnel accepts connect-udp streams on both HBONE
// servers with the same checks as TCP: the :authority must be the pod,
// and the pod's L4 AuthorizationPolicies are evaluated with the UDP port
// as the port. Ports in AuthorizationPolicy are protocol-agnostic, as in
// Istio: a rule for port 53 matches TCP and UDP alike. A DENY refuses the
// stream (401) and is recorded with the policy's name. An allowed flow is
// delivered to the app from a socket bound transparently to the tunnel
// peer's IP, that is the source pod's address, on an ephemeral port (the
// app's own source port is not carried: like the TCP path, only the
// source IP is preserved); the app's replies come back to that socket by
// the pod's UDP capture rules, which is why a node without CaptureUDP
// refuses UDP tunnels (503) rather than let replies leave in plaintext.
//
// A UDP flow has no end of its own: it ends on either side once no
// datagram crossed it either way for UDPIdleTimeout (60 s by default),
// checked by one self-rearming timer per flow, never a timer per datagram.
// Each flow ends in one flow record per side, with "protocol": "udp",
// the bytes each way and the transport; an idle end is not an error. UDP
// flows are counted in ambient_udp_* metrics with Istio's TCP labels
// (internal/telemetry), never in Istio's TCP metrics. A policy change closes
// open inbound UDP flows it no longer allows, like TCP connections.
package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/certs"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/quicfallback"
	"github.com/ambientmesh/ambient/internal/redirect"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/ztunnel/outbound"
)

// Config configures a ztunnel.
type Config struct {
	// Node is this node's name; only workloads with Workload.node == Node
	// are served.
	Node string
	// Network is the network of this node's pods ("" by default).
	Network string
	// TrustDomain is the mesh's trust domain (cluster.local by default).
	TrustDomain spiffeid.TrustDomain
	// Store is the mesh state, fed by xDS or --local-config. Required.
	Store *state.Store
	// Certs provides each pod identity's certificate. Required.
	Certs *certs.Manager
	// FlowLog receives one record per connection; nil discards.
	FlowLog *telemetry.FlowLog
	// Metrics receives Istio's TCP metrics; nil discards.
	Metrics *telemetry.Metrics
	// Logger defaults to discarding.
	Logger *slog.Logger
	// DrainTimeout bounds how long open connections may finish on shutdown.
	DrainTimeout time.Duration
	// RemoveCaptureOnExit removes every pod's capture rules when Run ends.
	// By default they stay: while no ztunnel runs, a captured pod's
	// connections are refused (its rules lead to listeners that are gone)
	// rather than carried in plaintext past its policies, and the next
	// ztunnel takes over the pods (fail closed, as in Istio, where a ztunnel
	// restart leaves the in-pod rules in place). A pod leaving the mesh
	// always has its rules removed, also when it left while no ztunnel ran.
	RemoveCaptureOnExit bool
	// ConnectTimeout bounds dialing a destination, a QUIC attempt and its
	// HTTP/2 fallback included. Default 5 s.
	ConnectTimeout time.Duration
	// QUICRetryAfter is how long tunnels to an address go straight to
	// HTTP/2 after QUIC to it failed. Default quicfallback.DefaultRetryAfter.
	QUICRetryAfter time.Duration
	// Clock times QUICRetryAfter; default time.Now.
	Clock func() time.Time
	// CaptureUDP carries the pods' UDP through the mesh (see the package
	// comment): their outbound UDP is captured and tunnelled with
	// CONNECT-UDP, and inbound UDP tunnels are accepted. Off by default:
	// without it UDP is neither captured nor accepted through tunnels.
	// Every node of the mesh should agree: a destination node without it
	// refuses UDP tunnels (503).
	CaptureUDP bool
	// UDPIdleTimeout ends a UDP flow, on either side, once no datagram
	// crossed it either way for this long. Default DefaultUDPIdleTimeout.
	UDPIdleTimeout time.Duration
	// TunnelCongestion is the TCP congestion control of the HBONE (HTTP/2)
	// tunnels, both the ones the pods dial and the ones their 15008
	// accepts, e.g. "bbr", which keeps a lossy node link busy where the
	// loss-based defaults back off (docs/benchmarks.md); the apps' own
	// sockets keep the node's default. "" leaves the tunnels on it too.
	TunnelCongestion string
}

// Ztunnel serves the enrolled pods of one node.
type Ztunnel struct {
	cfg      Config
	log      *slog.Logger
	rand     *lockedRand
	quicDown *quicfallback.Failures // tunnel addresses where QUIC failed lately

	mu       sync.Mutex           // guards the fields below
	netns    map[string]string    // pod key (uid or namespace/name) → netns path (from AddPod)
	pods     map[string]*podProxy // running proxies by pod uid
	changed  chan struct{}        // signalled on AddPod/RemovePod
	released map[string]bool      // pod keys not enrolled whose rules were removed

	draining atomic.Bool // Run is stopping: pods are served until their connections drain
	ready    bool        // config received and every enrolled pod serving
}

// New checks cfg and returns a Ztunnel; Run starts it.
func New(cfg Config) (*Ztunnel, error) {
	if cfg.Store == nil || cfg.Certs == nil {
		return nil, errors.New("ztunnel: Store and Certs are required")
	}
	if cfg.Node == "" {
		return nil, errors.New("ztunnel: Node is required")
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = outbound.DefaultTrustDomain
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if cfg.QUICRetryAfter == 0 {
		cfg.QUICRetryAfter = quicfallback.DefaultRetryAfter
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if cfg.TunnelCongestion != "" {
		if err := netns.CheckCongestionControl(cfg.TunnelCongestion); err != nil {
			return nil, fmt.Errorf("ztunnel: tunnel %w", err)
		}
	}
	return &Ztunnel{
		cfg:      cfg,
		log:      cfg.Logger,
		rand:     &lockedRand{r: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))},
		quicDown: quicfallback.NewFailures(cfg.QUICRetryAfter, quicfallback.DefaultMaxRemembered, cfg.Clock),
		netns:    make(map[string]string),
		pods:     make(map[string]*podProxy),
		changed:  make(chan struct{}, 1),
		released: make(map[string]bool),
	}, nil
}

// AddPod tells ztunnel where a pod's network namespace is (from the CNI
// plugin, or a scan after restart). key is the pod's Workload uid or its
// "namespace/name". The pod is served once its Workload is on this node and
// enrolled.
func (z *Ztunnel) AddPod(key, nsPath string) {
	z.mu.Lock()
	z.netns[key] = nsPath
	z.mu.Unlock()
	z.kick()
}

// RemovePod forgets a pod (deleted), by the key AddPod was given: its
// proxy stops and its rules go.
func (z *Ztunnel) RemovePod(key string) {
	z.mu.Lock()
	delete(z.netns, key)
	delete(z.released, key)
	z.mu.Unlock()
	z.kick()
}

func (z *Ztunnel) kick() {
	select {
	case z.changed <- struct{}{}:
	default:
	}
}

// Run serves until ctx ends, reconciling the pod proxies with every state
// change, then drains (and removes every pod's rules with
// RemoveCaptureOnExit).
func (z *Ztunnel) Run(ctx context.Context) error {
	updates := z.cfg.Store.Subscribe(ctx)
	for {
		z.reconcile(ctx)
		select {
		case <-ctx.Done():
			z.draining.Store(true)
			z.stopAll(z.cfg.RemoveCaptureOnExit)
			return nil
		case <-updates:
		case <-z.changed:
		}
	}
}

// reconcile starts, updates and stops pod proxies to match the state.
func (z *Ztunnel) reconcile(ctx context.Context) {
	view := z.cfg.Store.Current()
	z.mu.Lock()
	want := make(map[string]*workloadapi.Workload)
	paths := make(map[string]string)
	var release []string // netns of known pods out of the mesh, rules to remove
	for _, w := range view.WorkloadsOnNode(z.cfg.Node) {
		if !state.Enrolled(w) {
			// It may have left the mesh while no ztunnel ran, keeping the
			// rules an earlier ztunnel installed: remove them, once.
			for _, key := range []string{w.GetUid(), w.GetNamespace() + "/" + w.GetName()} {
				if ns, ok := z.netns[key]; ok && !z.released[key] {
					z.released[key] = true
					release = append(release, ns)
				}
			}
			continue
		}
		ns, ok := z.netns[w.GetUid()]
		if !ok {
			ns, ok = z.netns[w.GetNamespace()+"/"+w.GetName()]
		}
		if ok {
			want[w.GetUid()], paths[w.GetUid()] = w, ns
			delete(z.released, w.GetUid())
			delete(z.released, w.GetNamespace()+"/"+w.GetName())
		}
	}
	var stop []*podProxy
	for uid, p := range z.pods {
		if _, ok := want[uid]; !ok {
			stop = append(stop, p)
			delete(z.pods, uid)
		}
	}
	var start []*podProxy
	for uid, w := range want {
		if p, ok := z.pods[uid]; ok {
			p.update(w)
			continue
		}
		p := newPodProxy(z, w, paths[uid])
		z.pods[uid] = p
		start = append(start, p)
	}
	z.ready = view.Version() > 0
	running := make([]*podProxy, 0, len(z.pods))
	for _, p := range z.pods {
		running = append(running, p)
	}
	z.mu.Unlock()

	for _, ns := range release {
		if err := redirect.Remove(ns); err != nil {
			z.log.Warn("removing capture rules of a pod out of the mesh", "netns", ns, "err", err)
		}
	}
	for _, p := range stop {
		p.stop(true)
	}
	for _, p := range start {
		if err := p.start(ctx); err != nil {
			z.log.Error("pod not served", "pod", p.uid, "err", err)
			z.mu.Lock()
			if z.pods[p.uid] == p {
				delete(z.pods, p.uid)
			}
			z.mu.Unlock()
			continue
		}
		z.log.Info("pod enrolled", "pod", p.uid, "identity", p.id.String())
	}
	for _, p := range running {
		p.enforce(view)
	}
}

// stopAll stops every pod proxy (on shutdown), removing their rules or
// leaving them for the next ztunnel.
func (z *Ztunnel) stopAll(removeCapture bool) {
	z.mu.Lock()
	pods := z.pods
	z.pods = make(map[string]*podProxy)
	z.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range pods {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(removeCapture) }()
	}
	wg.Wait()
}

// Draining reports whether ztunnel is stopping: it still serves its pods,
// new connections included, until their open connections end or the drain
// timeout passes. It is not Ready meanwhile.
func (z *Ztunnel) Draining() bool { return z.draining.Load() }

// Ready reports whether ztunnel has config and serves every enrolled pod.
func (z *Ztunnel) Ready() bool {
	if z.draining.Load() {
		return false
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if !z.ready {
		return false
	}
	for _, p := range z.pods {
		if !p.serving() {
			return false
		}
	}
	return true
}

// Pods lists the uids of the pods being served.
func (z *Ztunnel) Pods() []string {
	z.mu.Lock()
	defer z.mu.Unlock()
	uids := make([]string, 0, len(z.pods))
	for uid := range z.pods {
		uids = append(uids, uid)
	}
	return uids
}

// record writes a finished flow to the log and metrics (Istio's TCP
// metrics, or ours for UDP).
func (z *Ztunnel) record(f telemetry.Flow) {
	if z.cfg.Metrics != nil {
		z.cfg.Metrics.Closed(f)
	}
	if z.cfg.FlowLog != nil {
		if err := z.cfg.FlowLog.Record(f); err != nil {
			z.log.Warn("flow log write failed", "err", err)
		}
	}
}

func (z *Ztunnel) opened(f telemetry.Flow) {
	if z.cfg.Metrics != nil {
		z.cfg.Metrics.Opened(f)
	}
}

// quicFailed notes a QUIC tunnel dial to addr that falls back to HTTP/2,
// logging once per QUICRetryAfter per address (fresh).
func (z *Ztunnel) quicFailed(addr netip.AddrPort, err error, fresh bool) {
	if z.cfg.Metrics != nil {
		z.cfg.Metrics.QUICFallback()
	}
	if fresh {
		z.log.Info("QUIC tunnel failed; using HTTP/2 to this address for a while", "addr", addr, "for", z.cfg.QUICRetryAfter, "err", err)
	}
}

// lockedRand is a goroutine-safe state.Rand.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) IntN(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.IntN(n)
}

// peerOf describes a workload for telemetry.
func peerOf(w *workloadapi.Workload, id spiffeid.ID, addr net.Addr) telemetry.Peer {
	p := telemetry.Peer{}
	if w != nil {
		p.Workload, p.Namespace = w.GetName(), w.GetNamespace()
		p.App, p.Version = w.GetCanonicalName(), w.GetCanonicalRevision()
	}
	if !id.IsZero() {
		p.Identity = id.String()
	}
	if addr != nil {
		p.Addr = addr.String()
	}
	return p
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return fmt.Sprint(err)
}
