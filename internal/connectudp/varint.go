package connectudp

import "errors"

// MaxVarint is the largest value a QUIC variable-length integer holds
// (2^62-1).
const MaxVarint = 1<<62 - 1

// ErrTruncated reports a variable-length integer cut short.
var ErrTruncated = errors.New("connectudp: truncated variable-length integer")

// VarintLen returns how many bytes AppendVarint uses for v: 1, 2, 4 or 8.
// It panics if v is over MaxVarint.
func VarintLen(v uint64) int {
	switch {
	case v < 1<<6:
		return 1
	case v < 1<<14:
		return 2
	case v < 1<<30:
		return 4
	case v <= MaxVarint:
		return 8
	}
	panic("connectudp: varint value over 2^62-1")
}

// AppendVarint appends v in the shortest encoding (RFC 9000 §16). It
// panics if v is over MaxVarint: values come from lengths and registered
// types, never from the wire.
func AppendVarint(dst []byte, v uint64) []byte {
	switch VarintLen(v) {
	case 1:
		return append(dst, byte(v))
	case 2:
		return append(dst, 0x40|byte(v>>8), byte(v))
	case 4:
		return append(dst, 0x80|byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	default:
		return append(dst, 0xc0|byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
			byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
}

// ConsumeVarint decodes the variable-length integer at the start of b and
// returns it with the number of bytes it took. Non-minimal encodings are
// accepted, as RFC 9000 §16 requires. A b too short for the length its
// first byte announces (or empty) gives ErrTruncated.
func ConsumeVarint(b []byte) (v uint64, n int, err error) {
	if len(b) == 0 {
		return 0, 0, ErrTruncated
	}
	n = 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0, ErrTruncated
	}
	v = uint64(b[0] & 0x3f)
	for _, c := range b[1:n] {
		v = v<<8 | uint64(c)
	}
	return v, n, nil
}
