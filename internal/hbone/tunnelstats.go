package hbone

import (
	"cmp"
	"fmt"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// TunnelStats describes one pooled tunnel connection and the network path
// under it, as its transport measures it: the kernel's TCP_INFO for HBONE
// over TCP, quic-go's recovery state for HBONE/3. Operators read it in
// /debug/connections to tell a slow peer from a lossy path.
type TunnelStats struct {
	Transport string `json:"transport"` // "hbone" (HTTP/2 over TCP) or "hbone3" (HTTP/3 over QUIC)
	Source    string `json:"source"`    // the client identity presented
	Peer      string `json:"peer"`      // the server identity required
	Remote    string `json:"remote"`    // the server address
	Streams   int    `json:"streams"`   // open or reserved
	// Path holds the transport's measurements; nil while the connection
	// is still being set up or when the socket cannot report them.
	Path *PathStats `json:"path,omitempty"`
}

// PathStats is what a transport knows of its path. In JSON the round-trip
// times are whole microseconds: srttUs, minRttUs.
type PathStats struct {
	// Congestion names the congestion control: the socket's
	// (TCP_CONGESTION, from the namespace's net.ipv4.tcp_congestion_control)
	// or quic-go's, which is always NewReno ("reno").
	Congestion          string
	SmoothedRTT, MinRTT time.Duration
	// CongestionWindow is the sender's congestion window in bytes.
	CongestionWindow uint64
	// Sent counts the packets (QUIC) or segments (TCP) sent, Lost those
	// declared lost (QUIC) or retransmitted (TCP).
	Sent, Lost uint64
}

// MarshalJSON writes the durations in microseconds.
func (p PathStats) MarshalJSON() ([]byte, error) {
	return fmt.Appendf(nil, `{"congestion":%q,"srttUs":%d,"minRttUs":%d,"cwndBytes":%d,"sent":%d,"lost":%d}`,
		p.Congestion, p.SmoothedRTT.Microseconds(), p.MinRTT.Microseconds(), p.CongestionWindow, p.Sent, p.Lost), nil
}

// SortTunnels orders tunnel stats by peer, remote address, source, then
// transport.
func SortTunnels(ts []TunnelStats) {
	slices.SortFunc(ts, func(a, b TunnelStats) int {
		return cmp.Or(cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.Remote, b.Remote), cmp.Compare(a.Source, b.Source), cmp.Compare(a.Transport, b.Transport))
	})
}

// Tunnels describes the pooled connections, in no order: callers merge
// both transports' and sort once (SortTunnels).
func (cl *Client) Tunnels() []TunnelStats {
	cl.mu.Lock()
	var out []TunnelStats
	var conns []*conn
	for key, list := range cl.pool {
		for _, pc := range list {
			ts := TunnelStats{Transport: "hbone", Source: key.src.String(), Peer: key.dst.String(), Remote: key.addr.String(), Streams: pc.pending}
			var c *conn
			if pc.c != nil {
				c = pc.c
				c.mu.Lock()
				ts.Streams = c.active
				c.mu.Unlock()
			}
			out = append(out, ts)
			conns = append(conns, c)
		}
	}
	cl.mu.Unlock()
	for i, c := range conns {
		if c != nil && c.batch != nil && c.batch.raw != nil {
			out[i].Path = tcpPathStats(c.batch.raw.rc)
		}
	}
	return out
}

// tcpPathStats reads the socket's TCP_INFO; nil when it cannot.
func tcpPathStats(rc syscall.RawConn) *PathStats {
	var info *unix.TCPInfo
	var cc string
	var err error
	if cerr := rc.Control(func(fd uintptr) {
		if info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			cc, err = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
		}
	}); cerr != nil || err != nil {
		return nil
	}
	return &PathStats{
		Congestion:       cc,
		SmoothedRTT:      time.Duration(info.Rtt) * time.Microsecond,
		MinRTT:           time.Duration(info.Min_rtt) * time.Microsecond,
		CongestionWindow: uint64(info.Snd_cwnd) * uint64(info.Snd_mss),
		Sent:             uint64(info.Segs_out),
		Lost:             uint64(info.Total_retrans),
	}
}
