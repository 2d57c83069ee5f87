package connectudp

import (
	"errors"
	"fmt"
	"io"
)

// MaxUDPPayload is the largest UDP payload a Session sends or receives:
// what fits in a UDP datagram's 16-bit length after its 8-byte header.
const MaxUDPPayload = 65535 - 8

// maxDatagramCapsule bounds a DATAGRAM capsule's value: a Context ID of
// up to 8 bytes and a UDP payload.
const maxDatagramCapsule = 8 + MaxUDPPayload

// ErrEmptyDatagram reports an HTTP Datagram without even a Context ID.
var ErrEmptyDatagram = errors.New("connectudp: HTTP datagram without a context ID")

// AppendDatagramCapsule appends a DATAGRAM capsule carrying one UDP
// payload (Context ID 0).
func AppendDatagramCapsule(dst []byte, udpPayload []byte) []byte {
	dst = AppendVarint(dst, CapsuleTypeDatagram)
	dst = AppendVarint(dst, uint64(1+len(udpPayload)))
	dst = append(dst, 0) // Context ID 0
	return append(dst, udpPayload...)
}

// ParseDatagram extracts the UDP payload from a CONNECT-UDP HTTP Datagram
// payload (the value of a DATAGRAM capsule). ok is false for a non-zero
// Context ID: such datagrams are to be dropped silently (RFC 9298 §5).
func ParseDatagram(payload []byte) (udp []byte, ok bool, err error) {
	id, n, err := ConsumeVarint(payload)
	if err != nil {
		return nil, false, ErrEmptyDatagram
	}
	if id != 0 {
		return nil, false, nil
	}
	return payload[n:], true, nil
}

// NextDatagram returns the next UDP payload, skipping capsules of other
// types (RFC 9297 §3.2) and datagrams of other contexts. The payload
// aliases the reader's buffer, valid until the next call.
func (cr *CapsuleReader) NextDatagram() ([]byte, error) {
	for {
		typ, value, err := cr.Next()
		if err != nil {
			return nil, err
		}
		if typ != CapsuleTypeDatagram {
			continue
		}
		udp, ok, err := ParseDatagram(value)
		if err != nil {
			cr.err = err // a malformed capsule ends the stream (RFC 9297 §3.3)
			return nil, err
		}
		if ok {
			return udp, nil
		}
	}
}

// ErrShortBuffer is returned (it wraps io.ErrShortBuffer) by
// Session.ReadDatagram when the next datagram does not fit the buffer
// given; that datagram is dropped, as a UDP socket would.
var ErrShortBuffer = fmt.Errorf("connectudp: datagram larger than the read buffer was dropped: %w", io.ErrShortBuffer)

// ErrDatagramTooLarge is returned by Session.WriteDatagram for a payload
// over MaxUDPPayload.
var ErrDatagramTooLarge = fmt.Errorf("connectudp: UDP payload over %d bytes", MaxUDPPayload)
