package telemetry

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Peer describes one end of a flow.
type Peer struct {
	Workload  string // workload (pod) name; empty outside the mesh
	Namespace string
	Identity  string // SPIFFE ID; empty when not verified
	App       string // app / canonical service label
	Version   string
	Addr      string // ip:port
	Service   string // destination only: service hostname, if addressed by VIP
}

// Flow is one connection as a proxy saw it.
type Flow struct {
	Start     time.Time
	Reporter  string // "source" or "destination"
	Src, Dst  Peer
	BytesSent int64 // from source to destination
	BytesRecv int64 // from destination to source
	Duration  time.Duration
	Decision  string // "allow" or "deny"
	Policy    string // namespace/name of the deciding policy, if any
	Security  string // "mutual_tls" or "none"
	Transport string // TransportHBONE, TransportHBONE3, "passthrough", "direct", "plaintext"
	// Protocol is the carried protocol when it is not TCP: ProtocolUDP for a
	// UDP flow (ztunnel's CONNECT-UDP tunnels). Empty means TCP, and is left
	// out of the record, so TCP flow lines are as before.
	Protocol string
	Error    string
	// HTTP requests (reporter "waypoint"): one flow per request.
	Method       string // request method
	Path         string // request path as authorized (normalized), without the query
	ResponseCode int    // status answered to the client; 0 when none was sent
	// ResponseFlags are Envoy's response flags ("UO", "RL", "DI,FI", ...);
	// empty when there are none.
	ResponseFlags string
}

// Decisions.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Tunnel transports, as Flow.Transport names them.
const (
	// TransportHBONE is HBONE as Istio defines it: HTTP/2 CONNECT over
	// mTLS on TCP 15008.
	TransportHBONE = "hbone"
	// TransportHBONE3 is HBONE over HTTP/3: CONNECT over QUIC on UDP 15008.
	TransportHBONE3 = "hbone3"
)

// ProtocolUDP is Flow.Protocol of a UDP flow.
const ProtocolUDP = "udp"

// record is the JSON shape of a flow line; field names are the contract
// with `ambientctl flows`.
type record struct {
	Start      time.Time `json:"start"`
	Reporter   string    `json:"reporter"`
	SrcWork    string    `json:"src.workload,omitempty"`
	SrcNS      string    `json:"src.namespace,omitempty"`
	SrcID      string    `json:"src.identity,omitempty"`
	SrcAddr    string    `json:"src.addr,omitempty"`
	DstWork    string    `json:"dst.workload,omitempty"`
	DstNS      string    `json:"dst.namespace,omitempty"`
	DstService string    `json:"dst.service,omitempty"`
	DstID      string    `json:"dst.identity,omitempty"`
	DstAddr    string    `json:"dst.addr,omitempty"`
	BytesSent  int64     `json:"bytes_sent"`
	BytesRecv  int64     `json:"bytes_received"`
	DurationMS float64   `json:"duration_ms"`
	Decision   string    `json:"decision"`
	Policy     string    `json:"policy,omitempty"`
	Security   string    `json:"security,omitempty"`
	Transport  string    `json:"transport,omitempty"`
	Protocol   string    `json:"protocol,omitempty"`
	Error      string    `json:"error,omitempty"`
	Method     string    `json:"method,omitempty"`
	Path       string    `json:"path,omitempty"`
	Code       int       `json:"response_code,omitempty"`
	Flags      string    `json:"response_flags,omitempty"`
}

// MarshalJSON renders the flow as its record line (without newline).
func (f Flow) MarshalJSON() ([]byte, error) {
	return json.Marshal(record{
		Start: f.Start.UTC(), Reporter: f.Reporter,
		SrcWork: f.Src.Workload, SrcNS: f.Src.Namespace, SrcID: f.Src.Identity, SrcAddr: f.Src.Addr,
		DstWork: f.Dst.Workload, DstNS: f.Dst.Namespace, DstService: f.Dst.Service,
		DstID: f.Dst.Identity, DstAddr: f.Dst.Addr,
		BytesSent: f.BytesSent, BytesRecv: f.BytesRecv,
		DurationMS: float64(f.Duration.Microseconds()) / 1000,
		Decision:   f.Decision, Policy: f.Policy, Security: f.Security, Transport: f.Transport, Protocol: f.Protocol, Error: f.Error,
		Method: f.Method, Path: f.Path, Code: f.ResponseCode, Flags: f.ResponseFlags,
	})
}

// FlowLog writes one JSON line per flow to w, never interleaving lines, and
// publishes each line to an optional Feed. A buffered FlowLog gathers lines
// and writes them at most every flush interval (or when flowLogBuffer
// bytes are waiting), as Envoy's access logs do: one write per request
// would cost a system call on the data path.
type FlowLog struct {
	feed  *Feed         // nil: no feed
	flush time.Duration // 0: write every line at once

	mu    sync.Mutex // guards the fields below
	w     io.Writer
	buf   []byte      // lines waiting (buffered only)
	timer *time.Timer // armed while buf holds lines
	err   error       // the last failed write of a buffered flush
}

// flowLogBuffer is how many waiting bytes make a buffered FlowLog write at
// once.
const flowLogBuffer = 64 << 10

// NewFlowLog returns a FlowLog writing each line to w at once.
func NewFlowLog(w io.Writer) *FlowLog { return &FlowLog{w: w} }

// NewFlowLogFeed returns a FlowLog writing to w that also publishes every
// line to feed (without the newline), for live readers such as ztunnel's
// /debug/flows. Publishing never blocks.
func NewFlowLogFeed(w io.Writer, feed *Feed) *FlowLog { return &FlowLog{w: w, feed: feed} }

// NewBufferedFlowLog returns a FlowLog that writes to w at most every
// flush (at once when flush is 0). Close writes what is left.
func NewBufferedFlowLog(w io.Writer, flush time.Duration) *FlowLog {
	return &FlowLog{w: w, flush: flush}
}

// Record writes f as one line. Write errors are returned, not retried: the
// data path never blocks on a broken log sink for longer than one write. A
// buffered FlowLog returns the error of an earlier flush, once.
func (l *FlowLog) Record(f Flow) error {
	b, err := f.MarshalJSON()
	if err != nil {
		return err
	}
	if l.feed != nil {
		l.feed.Publish(b[:len(b):len(b)]) // the newline appended below never reaches it
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.flush == 0 {
		_, err = l.w.Write(b)
		return err
	}
	l.buf = append(l.buf, b...)
	if len(l.buf) >= flowLogBuffer {
		l.writeLocked()
	} else if l.timer == nil {
		l.timer = time.AfterFunc(l.flush, func() { l.Flush() })
	}
	err, l.err = l.err, nil
	return err
}

// Flush writes the waiting lines.
func (l *FlowLog) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writeLocked()
	err := l.err
	l.err = nil
	return err
}

// Close writes the waiting lines; later records are written at once.
func (l *FlowLog) Close() error {
	l.mu.Lock()
	l.flush = 0
	l.mu.Unlock()
	return l.Flush()
}

func (l *FlowLog) writeLocked() {
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if len(l.buf) == 0 {
		return
	}
	if _, err := l.w.Write(l.buf); err != nil {
		l.err = err
	}
	l.buf = l.buf[:0]
	if cap(l.buf) > 4*flowLogBuffer { // a burst's buffer is not kept
		l.buf = nil
	}
}
