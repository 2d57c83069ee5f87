// Package netns runs code and creates sockets inside Linux network
// namespaces.
//
// A network namespace is a per-thread attribute, while goroutines migrate
// between threads. Do therefore runs its function on a fresh goroutine
// locked to its OS thread, switches that thread into the target namespace
// with setns(2), and switches it back afterwards. If switching back fails
// the goroutine exits still locked, so the Go runtime destroys the thread
// instead of returning a thread in the wrong namespace to its pool.
//
// A socket belongs to the namespace it was created in for its whole life,
// whichever thread later uses it. ListenTCP, ListenUDP, DialTCP and DialUDP
// create the socket inside the namespace and return an ordinary net.Listener
// or net.Conn that any goroutine may serve. This is how ztunnel serves
// every pod of its node with the pod's own IP: it opens its 15001, 15006 and
// 15008 listeners inside each pod's namespace.
//
// Options set SO_MARK (ztunnel marks its own sockets 0x539 so that the pod's
// capture rules let them through; see internal/redirect), IP_TRANSPARENT
// and the TCP congestion control before bind/connect. The first two need
// CAP_NET_ADMIN, and so does an algorithm outside
// net.ipv4.tcp_allowed_congestion_control.
//
// Namespaces are named by a path: a bind mount such as /run/netns/NAME
// (what `ip netns add` creates), or /proc/PID/ns/net. DoFD takes an open
// namespace file descriptor instead, such as one received over a unix
// socket with SCM_RIGHTS.
package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Do runs fn on a locked OS thread switched into the network namespace at
// nsPath and returns fn's error. The calling goroutine's own thread is never
// switched. A panic in fn is re-raised in the caller.
func Do(nsPath string, fn func() error) error {
	fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: open %s: %w", nsPath, err)
	}
	defer unix.Close(fd)
	if err := DoFD(fd, fn); err != nil {
		return err
	}
	return nil
}

type doResult struct {
	err      error
	panicked bool
	panicVal any
}

// DoFD is Do for an already open network namespace file descriptor. The
// descriptor stays open and owned by the caller.
func DoFD(nsFD int, fn func() error) error {
	done := make(chan doResult, 1)
	go runInNetns(nsFD, fn, done)
	res := <-done
	if res.panicked {
		panic(res.panicVal)
	}
	return res.err
}

// runInNetns is the body of DoFD's goroutine, named so stack dumps read well.
func runInNetns(nsFD int, fn func() error, done chan<- doResult) {
	runtime.LockOSThread()
	// Only unlock once the thread is back in its original namespace;
	// otherwise the goroutine exits locked and the runtime kills the thread.
	restored := false
	defer func() {
		if restored {
			runtime.UnlockOSThread()
		}
	}()

	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		done <- doResult{err: fmt.Errorf("netns: open current namespace: %w", err)}
		return
	}
	defer unix.Close(orig)

	if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
		restored = true // never left
		done <- doResult{err: fmt.Errorf("netns: setns: %w (needs CAP_SYS_ADMIN)", err)}
		return
	}

	var res doResult
	func() {
		defer func() {
			if r := recover(); r != nil {
				res = doResult{panicked: true, panicVal: r}
			}
		}()
		res.err = fn()
	}()

	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		if res.err == nil && !res.panicked {
			res.err = fmt.Errorf("netns: restore original namespace: %w", err)
		}
	} else {
		restored = true
	}
	done <- res
}

// Option adjusts sockets created by this package.
type Option func(*options)

type options struct {
	mark        uint32
	transparent bool
	congestion  string
}

// WithMark sets SO_MARK on the socket before bind or connect. ztunnel marks
// its own sockets 0x539 so the pod's capture rules skip them.
func WithMark(mark uint32) Option { return func(o *options) { o.mark = mark } }

// WithTransparent sets IP_TRANSPARENT (and IPV6_TRANSPARENT for IPv6
// sockets), allowing a socket to bind a non-local address.
func WithTransparent() Option { return func(o *options) { o.transparent = true } }

// WithCongestionControl sets the TCP congestion control (TCP_CONGESTION,
// e.g. "bbr") instead of the namespace's default; "" keeps the default.
// The sockets a listener accepts take its algorithm.
func WithCongestionControl(name string) Option { return func(o *options) { o.congestion = name } }

// CheckCongestionControl reports whether this process can give a TCP
// socket the congestion control name, so a bad one is refused at start
// rather than on every dial; the error lists the kernel's algorithms.
func CheckCongestionControl(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: probe socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, name); err != nil {
		avail, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
		return fmt.Errorf("TCP congestion control %q: %w (the kernel has: %s)", name, err, strings.TrimSpace(string(avail)))
	}
	return nil
}

func collect(opts []Option) options {
	var o options
	for _, fn := range opts {
		fn(&o)
	}
	return o
}

// Control returns a net.ListenConfig or net.Dialer Control function that
// applies opts to sockets made in the caller's own namespace; nil when
// there is nothing to apply.
func Control(opts ...Option) func(network, address string, c syscall.RawConn) error {
	return collect(opts).control()
}

// control returns a net.ListenConfig/net.Dialer Control function applying o.
func (o options) control() func(network, address string, c syscall.RawConn) error {
	if o.mark == 0 && !o.transparent && o.congestion == "" {
		return nil
	}
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if o.mark != 0 {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(o.mark)); err != nil {
					serr = fmt.Errorf("netns: set SO_MARK %#x: %w", o.mark, err)
					return
				}
			}
			if o.transparent {
				level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
				if network == "tcp6" || network == "udp6" {
					level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
				}
				if err := unix.SetsockoptInt(int(fd), level, opt, 1); err != nil {
					serr = fmt.Errorf("netns: set IP_TRANSPARENT: %w", err)
					return
				}
			}
			if o.congestion != "" && (network == "tcp" || network == "tcp4" || network == "tcp6") {
				if err := unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, o.congestion); err != nil {
					serr = fmt.Errorf("netns: set TCP congestion control %q: %w", o.congestion, err)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// ListenTCP opens a TCP listener on addr (host:port, an IP literal) inside
// the network namespace at nsPath.
func ListenTCP(nsPath, addr string, opts ...Option) (net.Listener, error) {
	lc := net.ListenConfig{Control: collect(opts).control()}
	var ln net.Listener
	err := Do(nsPath, func() error {
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: listen tcp %s in %s: %w", addr, nsPath, err)
	}
	return ln, nil
}

// ListenUDP opens a UDP socket bound to addr inside the network namespace
// at nsPath.
func ListenUDP(nsPath, addr string, opts ...Option) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: collect(opts).control()}
	var pc net.PacketConn
	err := Do(nsPath, func() error {
		var err error
		pc, err = lc.ListenPacket(context.Background(), "udp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: listen udp %s in %s: %w", addr, nsPath, err)
	}
	return pc.(*net.UDPConn), nil
}

// DialTCP connects to addr (host:port, an IP literal: name resolution would
// also run inside the namespace) from inside the network namespace at
// nsPath. The context bounds the connection attempt only.
func DialTCP(ctx context.Context, nsPath, addr string, opts ...Option) (*net.TCPConn, error) {
	c, err := dial(ctx, nsPath, "tcp", addr, opts)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// DialUDP creates a UDP socket connected to addr inside the network
// namespace at nsPath.
func DialUDP(ctx context.Context, nsPath, addr string, opts ...Option) (*net.UDPConn, error) {
	c, err := dial(ctx, nsPath, "udp", addr, opts)
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

func dial(ctx context.Context, nsPath, network, addr string, opts []Option) (net.Conn, error) {
	d := net.Dialer{Control: collect(opts).control()}
	var c net.Conn
	err := Do(nsPath, func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: dial %s %s in %s: %w", network, addr, nsPath, err)
	}
	return c, nil
}
