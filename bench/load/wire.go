// Package load is the traffic side of the tunnel benchmark: a backend server
// and the load clients that drive bulk transfers, open-loop request/response
// latency (Latency) and closed-loop request throughput (Throughput) through
// a proxy path (or straight to the backend).
//
// Wire format. Every connection starts with a 16-byte header from the client:
//
//	0       4     5         8                16
//	+-------+-----+---------+----------------+
//	| "MBN1"| op  | 0 0 0   | length (u64 BE)|
//	+-------+-----+---------+----------------+
//
// and the backend answers it with the single byte 'K' once it has read it, so
// the client knows the whole path (including any TLS handshakes) is up
// before it starts a clock. Then, by op:
//
//	'U' upload:   client sends length bytes; backend discards them and replies
//	              with the count it received (u64 BE). Timed from the first
//	              byte written to the reply.
//	'D' download: client sends one byte 'G'; backend sends length bytes.
//	              Timed from 'G' to the last byte read.
//	'E' echo:     repeatedly, client sends a length-byte request and backend
//	              answers with length bytes, until the client closes.
//
// HTTP/1.1 (ProtoHTTP1, for L7 proxies on the path) needs no header of its
// own: HTTPBackend answers every request with 200 and the request's body as
// the response body (Content-Length set), and the load client sends, on
// keep-alive connections,
//
//	POST /echo HTTP/1.1
//	Host: <LatencyConfig.Host, default the dialled address>
//	Content-Type: application/octet-stream
//	Content-Length: <Size>
//
//	<Size bytes>
//
// and counts a request as done only when a 200 with exactly Size body bytes
// has arrived on a connection the server keeps open.
package load

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Op is the kind of a benchmark connection.
type Op byte

// Connection kinds; see the package comment.
const (
	OpUpload   Op = 'U'
	OpDownload Op = 'D'
	OpEcho     Op = 'E'
)

const (
	magic      = "MBN1"
	headerLen  = 16
	ackByte    = 'K'
	goByte     = 'G'
	maxEchoLen = 1 << 20
)

// ErrBadHeader means a connection did not start with a valid header.
var ErrBadHeader = errors.New("load: bad header")

// Header is the first thing a client sends.
type Header struct {
	Op     Op
	Length uint64
}

// MarshalBinary encodes h in the 16-byte wire form.
func (h Header) MarshalBinary() ([]byte, error) {
	b := make([]byte, headerLen)
	copy(b, magic)
	b[4] = byte(h.Op)
	binary.BigEndian.PutUint64(b[8:], h.Length)
	return b, nil
}

// ParseHeader decodes and validates a 16-byte header.
func ParseHeader(b []byte) (Header, error) {
	if len(b) != headerLen || string(b[:4]) != magic || b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return Header{}, ErrBadHeader
	}
	h := Header{Op: Op(b[4]), Length: binary.BigEndian.Uint64(b[8:])}
	switch h.Op {
	case OpUpload, OpDownload:
	case OpEcho:
		if h.Length == 0 || h.Length > maxEchoLen {
			return Header{}, fmt.Errorf("%w: echo size %d not in [1, %d]", ErrBadHeader, h.Length, maxEchoLen)
		}
	default:
		return Header{}, fmt.Errorf("%w: unknown op %q", ErrBadHeader, byte(h.Op))
	}
	return h, nil
}

func readHeader(r io.Reader) (Header, error) {
	b := make([]byte, headerLen)
	if _, err := io.ReadFull(r, b); err != nil {
		return Header{}, err
	}
	return ParseHeader(b)
}
