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
	Error     string
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
		Decision:   f.Decision, Policy: f.Policy, Security: f.Security, Transport: f.Transport, Error: f.Error,
		Method: f.Method, Path: f.Path, Code: f.ResponseCode, Flags: f.ResponseFlags,
	})
}

// FlowLog writes one JSON line per flow to w, never interleaving lines, and
// publishes each line to an optional Feed.
type FlowLog struct {
	feed *Feed // nil: no feed

	mu sync.Mutex // guards w
	w  io.Writer
}

// NewFlowLog returns a FlowLog writing to w.
func NewFlowLog(w io.Writer) *FlowLog { return &FlowLog{w: w} }

// NewFlowLogFeed returns a FlowLog writing to w that also publishes every
// line to feed (without the newline), for live readers such as ztunnel's
// /debug/flows. Publishing never blocks.
func NewFlowLogFeed(w io.Writer, feed *Feed) *FlowLog { return &FlowLog{w: w, feed: feed} }

// Record writes f as one line. Write errors are returned, not retried: the
// data path never blocks on a broken log sink for longer than one write.
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
	_, err = l.w.Write(b)
	return err
}
