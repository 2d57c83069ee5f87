package netns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newNS creates a throwaway named network namespace with loopback up. The
// namespace carries no link but lo, so nothing it sends leaves it.
func newNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("netns tests need root (CAP_SYS_ADMIN) and CI=true forbids skipping")
		}
		t.Skip("netns tests need root (CAP_SYS_ADMIN); run as root or under CI=true")
	}
	name := fmt.Sprintf("amt-%d-netns-%s", os.Getpid(), filepath.Base(t.Name()))
	_ = exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	return "/run/netns/" + name
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestDo_RunsInTargetAndLeavesCallerAlone(t *testing.T) {
	path := newNS(t)
	want := nsInode(t, path)
	before := nsInode(t, "/proc/thread-self/ns/net")

	var got uint64
	if err := Do(path, func() error {
		got = nsInode(t, "/proc/thread-self/ns/net")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("inside Do: netns inode %d, want %d", got, want)
	}
	if after := nsInode(t, "/proc/thread-self/ns/net"); after != before {
		t.Errorf("caller's netns changed: %d -> %d", before, after)
	}
}

func TestDo_ReturnsFnErrorAndRepanics(t *testing.T) {
	path := newNS(t)
	sentinel := errors.New("boom")
	if err := Do(path, func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do error = %v, want %v", err, sentinel)
	}
	func() {
		defer func() {
			if r := recover(); r != "panic in ns" {
				t.Errorf("recovered %v, want the panic from fn", r)
			}
		}()
		_ = Do(path, func() error { panic("panic in ns") })
	}()
	if err := Do("/nonexistent/ns", func() error { return nil }); err == nil {
		t.Error("Do on a missing path succeeded")
	}
}

func TestListenTCP_SocketKeepsItsNamespace(t *testing.T) {
	path := newNS(t)
	ln, err := ListenTCP(path, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(c, c)
			c.Close()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialTCP(ctx, path, ln.Addr().String(), WithMark(0x539))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}

	raw, _ := c.SyscallConn()
	var mark int
	_ = raw.Control(func(fd uintptr) { mark, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if err != nil || mark != 0x539 {
		t.Errorf("SO_MARK = %#x, %v; want 0x539", mark, err)
	}

	// The same address in the root namespace is not this listener.
	d := net.Dialer{Timeout: time.Second}
	if c2, err := d.DialContext(ctx, "tcp", ln.Addr().String()); err == nil {
		c2.Close()
		t.Errorf("dial %s from the root namespace reached the namespaced listener", ln.Addr())
	}
}

func TestListenUDP_EchoInsideNamespace(t *testing.T) {
	path := newNS(t)
	pc, err := ListenUDP(path, "127.0.0.1:0", WithTransparent())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialUDP(ctx, path, pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, _, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("read = %q, %v", buf[:n], err)
	}
}

// congestionOf reads a TCP socket's congestion control.
func congestionOf(t *testing.T, c net.Conn) string {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var name string
	var gerr error
	if err := raw.Control(func(fd uintptr) { name, gerr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION) }); err != nil || gerr != nil {
		t.Fatalf("TCP_CONGESTION: %v %v", err, gerr)
	}
	return name
}

// TestWithCongestionControl: a dialled socket and the sockets a listener
// accepts run the algorithm asked for, not the namespace's default; an
// unknown one fails the dial with the option named.
func TestWithCongestionControl(t *testing.T) {
	path := newNS(t)
	if err := Do(path, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/tcp_congestion_control", []byte("cubic\n"), 0o644)
	}); err != nil {
		t.Fatalf("namespace default cubic: %v", err)
	}
	ln, err := ListenTCP(path, "127.0.0.1:0", WithCongestionControl("reno"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct{ opt, dialled string }{{"reno", "reno"}, {"", "cubic"}} {
		c, err := DialTCP(ctx, path, ln.Addr().String(), WithCongestionControl(tc.opt))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := congestionOf(t, c); got != tc.dialled {
			t.Errorf("dialled with %q: congestion control %q, want %q", tc.opt, got, tc.dialled)
		}
		select {
		case s := <-accepted:
			defer s.Close()
			if got := congestionOf(t, s); got != "reno" {
				t.Errorf("accepted: congestion control %q, want the listener's reno", got)
			}
		case <-ctx.Done():
			t.Fatal("no connection accepted")
		}
	}
	_, err = DialTCP(ctx, path, ln.Addr().String(), WithCongestionControl("no-such-algorithm"))
	if err == nil || !strings.Contains(err.Error(), `congestion control "no-such-algorithm"`) {
		t.Errorf("unknown algorithm: err = %v, want one naming it", err)
	}
	if err := CheckCongestionControl("reno"); err != nil {
		t.Errorf("CheckCongestionControl(reno) = %v", err)
	}
	if err := CheckCongestionControl("no-such-algorithm"); err == nil || !strings.Contains(err.Error(), "reno") {
		t.Errorf("CheckCongestionControl(no-such-algorithm) = %v, want an error listing the kernel's algorithms", err)
	}
}
