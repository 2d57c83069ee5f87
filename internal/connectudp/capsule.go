package connectudp

import (
	"errors"
	"fmt"
	"io"
)

// CapsuleTypeDatagram is the DATAGRAM capsule (RFC 9297 §3.5).
const CapsuleTypeDatagram = 0x00

// ErrCapsuleTooLarge reports a capsule whose value is over the reader's
// bound. The stream cannot be resynchronized after it.
var ErrCapsuleTooLarge = errors.New("connectudp: capsule over the size limit")

// maxHeaderLen is the longest capsule header: two 8-byte varints.
const maxHeaderLen = 16

// AppendCapsule appends a capsule of type typ carrying payload.
func AppendCapsule(dst []byte, typ uint64, payload []byte) []byte {
	dst = AppendVarint(dst, typ)
	dst = AppendVarint(dst, uint64(len(payload)))
	return append(dst, payload...)
}

// CapsuleReader parses capsules from a byte stream into one buffer it
// owns: after the first capsules, reading allocates nothing. It is not
// safe for concurrent use.
type CapsuleReader struct {
	r          io.Reader
	maxPayload int
	buf        []byte // capacity maxHeaderLen+maxPayload, allocated on first use
	start, end int    // buf[start:end] is read and not yet returned
	err        error  // sticky
}

// NewCapsuleReader returns a reader of the capsules in r that refuses any
// capsule whose value is over maxPayload bytes.
func NewCapsuleReader(r io.Reader, maxPayload int) *CapsuleReader {
	return &CapsuleReader{r: r, maxPayload: max(maxPayload, 0)}
}

// Next returns the next capsule, of any type. value aliases the reader's
// buffer and is valid until the next call. At the end of the stream
// between capsules it returns io.EOF; inside one, io.ErrUnexpectedEOF; a
// value over the bound gives ErrCapsuleTooLarge. Errors are sticky.
func (cr *CapsuleReader) Next() (typ uint64, value []byte, err error) {
	if cr.err != nil {
		return 0, nil, cr.err
	}
	if cr.buf == nil {
		cr.buf = make([]byte, maxHeaderLen+cr.maxPayload)
	}
	for {
		typ, value, need, err := cr.parse()
		if err != nil {
			cr.err = err
			return 0, nil, err
		}
		if need == 0 {
			return typ, value, nil
		}
		if err := cr.fill(need); err != nil {
			cr.err = err
			return 0, nil, err
		}
	}
}

// parse decodes the capsule at buf[start:end]. need > 0 means it is not
// all there yet and buf must hold at least need unreturned bytes.
func (cr *CapsuleReader) parse() (typ uint64, value []byte, need int, err error) {
	b := cr.buf[cr.start:cr.end]
	typ, n1, err := ConsumeVarint(b)
	if err != nil {
		return 0, nil, varintNeed(b), nil
	}
	length, n2, err := ConsumeVarint(b[n1:])
	if err != nil {
		return 0, nil, n1 + varintNeed(b[n1:]), nil
	}
	if length > uint64(cr.maxPayload) {
		return 0, nil, 0, fmt.Errorf("%w: %d-byte value of type %#x, limit %d", ErrCapsuleTooLarge, length, typ, cr.maxPayload)
	}
	total := n1 + n2 + int(length)
	if len(b) < total {
		return 0, nil, total, nil
	}
	cr.start += total
	return typ, b[n1+n2 : total : total], 0, nil
}

// varintNeed is how many bytes the varint starting b needs in all.
func varintNeed(b []byte) int {
	if len(b) == 0 {
		return 1
	}
	return 1 << (b[0] >> 6)
}

// fill reads until buf holds need unreturned bytes (need is at most the
// buffer's size), moving them to the front first if they would not fit.
func (cr *CapsuleReader) fill(need int) error {
	if cr.start+need > len(cr.buf) {
		cr.end = copy(cr.buf, cr.buf[cr.start:cr.end])
		cr.start = 0
	}
	for empty := 0; cr.end-cr.start < need; {
		n, err := cr.r.Read(cr.buf[cr.end:])
		cr.end += n
		if cr.end-cr.start >= need {
			return nil
		}
		switch {
		case err == io.EOF && cr.end == cr.start:
			return io.EOF
		case err == io.EOF:
			return io.ErrUnexpectedEOF
		case err != nil:
			return err
		case n == 0:
			if empty++; empty > 100 {
				return io.ErrNoProgress
			}
		}
	}
	return nil
}
