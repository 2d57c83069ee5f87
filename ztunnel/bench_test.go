package ztunnel

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/cputime"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// BenchmarkPodToPod moves 1 MiB per op from a pod on node 1 to a pod on
// node 2 over the topology's real node link: through both nodes' ztunnels
// over HBONE (h2) or HBONE/3 (quic), or with both pods out of the mesh
// (plain); on a clean link and with 1 % of the packets leaving each node on
// the link dropped at random (dropOnLink). The TCP paths run under three of
// the kernel's congestion controls, set in the pods' namespaces (where
// ztunnel's tunnel sockets live): reno, the algorithm quic-go's connections
// use; cubic, Linux's default; and bbr, which does not take random loss
// for congestion. h2-cubic-tunnel-bbr keeps the pods on cubic and gives
// ztunnel's tunnels bbr (Config.TunnelCongestion,
// --tunnel-congestion-control). cpu-s/GB is the whole test process's
// user+system CPU per GB moved: both ztunnels (in process) and the two
// apps; srtt-µs, cwnd-KiB and lost-% what the sending ztunnel's transport
// measured of the path (reportPath). Run as root:
// go test -run '^$' -bench PodToPod ./ztunnel/
func BenchmarkPodToPod(b *testing.B) {
	for _, loss := range []string{"clean", "loss1pct"} {
		for _, path := range []string{"plain-reno", "plain-cubic", "plain-bbr", "h2-reno", "h2-cubic", "h2-bbr", "h2-cubic-tunnel-bbr", "quic"} {
			mode, cc, _ := strings.Cut(path, "-")
			cc, tunnelCC, _ := strings.Cut(cc, "-tunnel-")
			b.Run(loss+"/"+path, func(b *testing.B) { benchPodToPod(b, mode, cc, tunnelCC, loss == "loss1pct") })
		}
	}
}

// benchPodToPod runs one path: mode plain, h2 or quic; tcpCC the pods'
// congestion control ("": the machine's), tunnelCC the tunnels' ("": the
// pods').
func benchPodToPod(b *testing.B, mode, tcpCC, tunnelCC string, lossy bool) {
	m := newMesh(b, func(c *Config) { c.TunnelCongestion = tunnelCC })
	client, server := m.topo.Pod(1, 1), m.topo.Pod(2, 1)
	if tcpCC != "" {
		for _, p := range []*testenv.Pod{client, server} {
			setCongestionControl(b, p, tcpCC)
		}
	}
	switch mode {
	case "plain":
		for _, p := range []*testenv.Pod{client, server} {
			m.setWorkload(b, p, func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_NONE })
		}
		waitFor(b, "capture removed", func() bool { return !captured(b, client) && !captured(b, server) })
	case "quic":
		m.setTransport(b, server, workloadapi.TunnelTransport_QUIC)
	}
	if lossy {
		for _, n := range m.topo.Nodes[:2] {
			dropOnLink(b, n)
		}
	}
	sink, err := server.Listen("0.0.0.0:9000")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := sink.Accept()
		if err != nil {
			got <- -1
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		got <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, server.Addr(9000))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	cpu0 := cpuTime(b)
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	n := <-got
	b.StopTimer()
	b.ReportMetric((cpuTime(b)-cpu0).Seconds()/(float64(n)/1e9), "cpu-s/GB")
	if mode != "plain" {
		reportPath(b, m.zt[0], client, cmp.Or(tunnelCC, tcpCC, "reno")) // quic-go's is reno
	}
	c.Close()
	if n != int64(b.N)*int64(len(buf)) {
		b.Fatalf("sink got %d bytes, want %d", n, int64(b.N)*int64(len(buf)))
	}
	if mode != "plain" {
		want := map[string]string{"h2": "hbone", "quic": "hbone3"}[mode]
		findFlow(b, m.logs[1], map[string]any{"reporter": "destination", "transport": want})
	}
}

// reportPath reports what the sending ztunnel's transport measured of the
// path of pod's one tunnel connection: smoothed RTT, congestion window and
// the share of packets lost (QUIC) or segments retransmitted (TCP), the
// figures that explain a throughput. The tunnel must have run under the
// congestion control cc.
func reportPath(b *testing.B, z *Ztunnel, pod *testenv.Pod, cc string) {
	for _, pd := range z.Debug().Pods {
		if pd.IP != pod.IP.String() || len(pd.Tunnels) != 1 || pd.Tunnels[0].Path == nil {
			continue
		}
		p := pd.Tunnels[0].Path
		if p.Congestion != cc {
			b.Errorf("pod %s's tunnel ran under %q congestion control, want %q", pod.Name, p.Congestion, cc)
		}
		b.ReportMetric(float64(p.SmoothedRTT.Microseconds()), "srtt-µs")
		b.ReportMetric(float64(p.CongestionWindow)/1024, "cwnd-KiB")
		b.ReportMetric(100*float64(p.Lost)/float64(max(p.Sent, 1)), "lost-%")
		return
	}
	b.Errorf("no path measurements for pod %s's tunnel: %+v", pod.Name, z.Debug().Pods)
}

// setCongestionControl makes cc the TCP congestion control of the sockets
// opened in pod's namespace from now on; a kernel without it skips the run.
func setCongestionControl(b *testing.B, pod *testenv.Pod, cc string) {
	b.Helper()
	if err := pod.Sysctl("net.ipv4.tcp_congestion_control", cc); err != nil {
		b.Skipf("TCP congestion control %s in pod %s: %v", cc, pod.Name, err)
	}
}

// dropOnLink drops 1 % of the packets arriving at n from the link, at
// random, one wire-sized packet at a time as a lossy network would: tc
// netem would be the usual tool, but this machine's kernel has no
// sch_netem, so nftables' numgen random drops the same share in n's
// prerouting. Segmentation offloads are turned off on n's link interface,
// so what n sends crosses the link as wire-sized packets (it is called for
// both nodes): with them TCP's segments and QUIC's GSO batches would cross
// the veth whole, up to 64 KiB each, and one drop would take dozens of
// packets at once. Both settings go with the topology.
func dropOnLink(b *testing.B, n *testenv.Node) {
	b.Helper()
	off := n.Command(context.Background(), "ethtool", "-K", n.LinkIf, "tso", "off", "gso", "off", "tx-udp-segmentation", "off", "gro", "off")
	if out, err := off.CombinedOutput(); err != nil {
		b.Fatalf("offloads off on node %d: %v: %s", n.Index, err, out)
	}
	cmd := n.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(fmt.Sprintf(`table inet benchloss {
	chain ingress {
		type filter hook prerouting priority -500; policy accept;
		iifname %q numgen random mod 100 0 drop
	}
}
`, n.LinkIf))
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("1 %% loss on node %d: %v: %s", n.Index, err, out)
	}
}

// cpuTime is this process's CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	d, err := cputime.Self()
	if err != nil {
		b.Fatal(err)
	}
	return d
}
