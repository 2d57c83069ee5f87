package telemetry

import (
	"encoding/json"
	"io"
	"math"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
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

// appendJSON appends the flow's record line to b: the bytes MarshalJSON
// gives (encoding/json's rendering of record: field order, omitempty,
// HTML-safe string escaping, float format), without reflection or
// allocations. ok is false when the start time has no RFC 3339 form (a
// year outside 0-9999), which MarshalJSON reports as an error.
func (f *Flow) appendJSON(b []byte) (_ []byte, ok bool) {
	b = append(b, `{"start":"`...)
	b, err := f.Start.UTC().AppendText(b)
	if err != nil {
		return b, false
	}
	b = append(b, '"')
	b = appendField(b, "reporter", f.Reporter, false)
	b = appendField(b, "src.workload", f.Src.Workload, true)
	b = appendField(b, "src.namespace", f.Src.Namespace, true)
	b = appendField(b, "src.identity", f.Src.Identity, true)
	b = appendField(b, "src.addr", f.Src.Addr, true)
	b = appendField(b, "dst.workload", f.Dst.Workload, true)
	b = appendField(b, "dst.namespace", f.Dst.Namespace, true)
	b = appendField(b, "dst.service", f.Dst.Service, true)
	b = appendField(b, "dst.identity", f.Dst.Identity, true)
	b = appendField(b, "dst.addr", f.Dst.Addr, true)
	b = append(b, `,"bytes_sent":`...)
	b = strconv.AppendInt(b, f.BytesSent, 10)
	b = append(b, `,"bytes_received":`...)
	b = strconv.AppendInt(b, f.BytesRecv, 10)
	b = append(b, `,"duration_ms":`...)
	b = appendJSONFloat(b, float64(f.Duration.Microseconds())/1000)
	b = appendField(b, "decision", f.Decision, false)
	b = appendField(b, "policy", f.Policy, true)
	b = appendField(b, "security", f.Security, true)
	b = appendField(b, "transport", f.Transport, true)
	b = appendField(b, "protocol", f.Protocol, true)
	b = appendField(b, "error", f.Error, true)
	b = appendField(b, "method", f.Method, true)
	b = appendField(b, "path", f.Path, true)
	if f.ResponseCode != 0 {
		b = append(b, `,"response_code":`...)
		b = strconv.AppendInt(b, int64(f.ResponseCode), 10)
	}
	b = appendField(b, "response_flags", f.ResponseFlags, true)
	return append(b, '}'), true
}

// appendField appends `,"name":"value"`; nothing for an empty value when
// omitEmpty. name needs no escaping.
func appendField(b []byte, name, value string, omitEmpty bool) []byte {
	if omitEmpty && value == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendJSONString(b, value)
}

// appendJSONString appends s as encoding/json.Marshal renders a string:
// quoted; '"', '\\' and the control characters escaped (\b \f \n \r \t
// by name); '<', '>' and '&' escaped for HTML; invalid UTF-8 as \ufffd;
// U+2028 and U+2029 escaped.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendJSONFloat appends a finite f as encoding/json.Marshal renders a
// float64 (ES6 number to string: %f, or %e without exponent padding for
// very small and very large magnitudes).
func appendJSONFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' { // e-09 → e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// lineBufs are the scratch buffers Record renders lines into.
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// maxPooledLine bounds the scratch buffers kept for reuse.
const maxPooledLine = 16 << 10

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
	if l.feed != nil {
		// The feed keeps the line: it gets a buffer of its own.
		b, ok := f.appendJSON(make([]byte, 0, 512))
		if !ok {
			_, err := f.MarshalJSON()
			return err
		}
		l.feed.Publish(b[:len(b):len(b)]) // the newline appended below never reaches it
		return l.write(append(b, '\n'))
	}
	bp := lineBufs.Get().(*[]byte)
	b, ok := f.appendJSON((*bp)[:0])
	var err error
	if ok {
		err = l.write(append(b, '\n'))
	} else {
		_, err = f.MarshalJSON()
	}
	if cap(b) <= maxPooledLine {
		*bp = b[:0]
		lineBufs.Put(bp)
	}
	return err
}

// write writes the line b, or buffers a copy of it.
func (l *FlowLog) write(b []byte) error {
	var err error
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
