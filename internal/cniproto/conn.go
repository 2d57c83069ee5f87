package cniproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Network is the Go network name of the socket: SOCK_SEQPACKET.
const Network = "unixpacket"

// maxFDs bounds the descriptors accepted with one packet; more than the
// protocol ever sends, so that a misbehaving peer's extras are received
// (and closed) rather than leaked into a truncated control message.
const maxFDs = 4

// WriteMsg sends m as one packet with fds attached (SCM_RIGHTS). The
// number of fds must match m.FDs(). The fds stay owned by the caller.
// Deadlines are the caller's (set them on c).
func WriteMsg(c *net.UnixConn, m Message, fds ...int) error {
	b, err := Encode(m)
	if err != nil {
		return err
	}
	if len(fds) != m.FDs() {
		return fmt.Errorf("cniproto: send %s: %w: %d file descriptors, want %d", m.Kind(), ErrInvalid, len(fds), m.FDs())
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return fmt.Errorf("cniproto: send %s: %w", m.Kind(), err)
	}
	if n != len(b) || oobn != len(oob) {
		return fmt.Errorf("cniproto: send %s: short write (%d/%d bytes, %d/%d control)", m.Kind(), n, len(b), oobn, len(oob))
	}
	return nil
}

// ReadMsg receives one packet and decodes it. On success the caller owns
// the returned descriptors (exactly m.FDs() of them, close-on-exec). On
// error every descriptor received is already closed. A peer that closed
// the connection yields io.EOF.
func ReadMsg(c *net.UnixConn) (Message, []int, error) {
	buf := make([]byte, MaxMessageSize+1)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	fds, ferr := parseRights(oob[:oobn])
	fail := func(err error) (Message, []int, error) {
		closeAll(fds)
		return nil, nil, err
	}
	if err != nil {
		return fail(fmt.Errorf("cniproto: receive: %w", err))
	}
	if ferr != nil {
		return fail(fmt.Errorf("cniproto: receive: %w", ferr))
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return fail(fmt.Errorf("cniproto: receive: %w: control data truncated (too many file descriptors)", ErrInvalid))
	}
	if flags&unix.MSG_TRUNC != 0 || n > MaxMessageSize {
		return fail(fmt.Errorf("cniproto: receive: %w: message larger than %d bytes", ErrInvalid, MaxMessageSize))
	}
	if n == 0 {
		return fail(io.EOF)
	}
	m, err := Decode(buf[:n])
	if err != nil {
		return fail(err)
	}
	if len(fds) != m.FDs() {
		return fail(fmt.Errorf("cniproto: receive %s: %w: %d file descriptors, want %d", m.Kind(), ErrInvalid, len(fds), m.FDs()))
	}
	return m, fds, nil
}

func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control message: %v", ErrInvalid, err)
	}
	var fds []int
	var bad error
	for _, cm := range msgs {
		if cm.Header.Level != unix.SOL_SOCKET || cm.Header.Type != unix.SCM_RIGHTS {
			bad = fmt.Errorf("%w: unexpected control message level %d type %d", ErrInvalid, cm.Header.Level, cm.Header.Type)
			continue
		}
		got, err := unix.ParseUnixRights(&cm)
		if err != nil {
			bad = fmt.Errorf("%w: SCM_RIGHTS: %v", ErrInvalid, err)
			continue
		}
		fds = append(fds, got...)
	}
	return fds, bad
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// DefaultTimeout bounds one request when the context has no earlier
// deadline.
const DefaultTimeout = 2 * time.Second

// Client sends requests to ztunnel's CNI server. The zero Timeout means
// DefaultTimeout.
type Client struct {
	SocketPath string
	Timeout    time.Duration
}

// AddPod announces a pod and its network namespace descriptor nsFD, which
// stays owned by the caller. It returns an error matching ErrUnavailable
// when ztunnel cannot be reached or does not answer in time, and one
// matching ErrRejected when ztunnel refuses the pod.
func (c Client) AddPod(ctx context.Context, m AddPod, nsFD int) error {
	return c.do(ctx, m, nsFD)
}

// DelPod says pod uid is gone. Errors are as for AddPod.
func (c Client) DelPod(ctx context.Context, uid string) error {
	return c.do(ctx, DelPod{UID: uid})
}

func (c Client) do(ctx context.Context, req Message, fds ...int) error {
	// Validate before dialling so a bad request is never reported as
	// "ztunnel unavailable".
	if _, err := Encode(req); err != nil {
		return err
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var d net.Dialer
	conn, err := d.DialContext(ctx, Network, c.SocketPath)
	if err != nil {
		return fmt.Errorf("%w: %s: connect %s: %v (is ztunnel running on this node?)", ErrUnavailable, req.Kind(), c.SocketPath, err)
	}
	defer conn.Close()
	uc := conn.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		uc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { uc.SetDeadline(time.Now()) })
	defer stop()

	if err := WriteMsg(uc, req, fds...); err != nil {
		return unavailable(req.Kind(), err)
	}
	resp, rfds, err := ReadMsg(uc)
	if err != nil {
		return unavailable(req.Kind(), err)
	}
	closeAll(rfds) // none expected; ReadMsg enforces it
	ack, ok := resp.(Ack)
	if !ok {
		return fmt.Errorf("cniproto: %s: %w: answer is %s, want Ack", req.Kind(), ErrInvalid, resp.Kind())
	}
	if !ack.OK {
		return fmt.Errorf("%w: %s: %s", ErrRejected, req.Kind(), ack.Error)
	}
	return nil
}

// unavailable classifies an I/O failure after connecting: a timeout or a
// connection ztunnel dropped is ErrUnavailable, anything else (such as an
// undecodable answer) is returned as is.
func unavailable(kind Kind, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF) ||
		errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE) {
		return fmt.Errorf("%w: %s: no answer: %v", ErrUnavailable, kind, err)
	}
	return fmt.Errorf("cniproto: %s: %w", kind, err)
}
