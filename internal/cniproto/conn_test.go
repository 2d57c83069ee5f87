package cniproto

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// seqpacketPair returns two connected SOCK_SEQPACKET unix sockets.
func seqpacketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "seqpacket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func openSelfNetns(t *testing.T) int {
	t.Helper()
	fd, _, err := OpenNetns("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestWriteReadMsg_PassesNetnsDescriptor(t *testing.T) {
	a, b := seqpacketPair(t)
	nsFD := openSelfNetns(t)

	if err := WriteMsg(a, validAdd(), nsFD); err != nil {
		t.Fatal(err)
	}
	m, fds, err := ReadMsg(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) != 1 {
		t.Fatalf("got %d fds, want 1", len(fds))
	}
	defer unix.Close(fds[0])
	if fds[0] == nsFD {
		t.Fatal("received the sender's descriptor number, not a new one")
	}
	if m.Kind() != KindAddPod || m.(AddPod).UID != validAdd().UID {
		t.Errorf("got %#v", m)
	}
	ino, err := NetnsInode(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	if want := inode(t, nsFD); ino != want {
		t.Errorf("received namespace inode %d, want %d", ino, want)
	}
	flags, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("received fd is not close-on-exec (flags %#x, %v)", flags, err)
	}
}

func TestWriteMsg_RequiresTheRightNumberOfDescriptors(t *testing.T) {
	a, _ := seqpacketPair(t)
	nsFD := openSelfNetns(t)
	if err := WriteMsg(a, validAdd()); !errors.Is(err, ErrInvalid) {
		t.Errorf("AddPod without fd: %v, want ErrInvalid", err)
	}
	if err := WriteMsg(a, DelPod{UID: "u"}, nsFD); !errors.Is(err, ErrInvalid) {
		t.Errorf("DelPod with fd: %v, want ErrInvalid", err)
	}
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestReadMsg_RejectsAndClosesUnexpectedDescriptors(t *testing.T) {
	a, b := seqpacketPair(t)
	nsFD := openSelfNetns(t)
	before := openFDs(t)

	raw, _ := Encode(DelPod{UID: "u"})
	if _, _, err := a.WriteMsgUnix(raw, unix.UnixRights(nsFD, nsFD), nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadMsg(b); !errors.Is(err, ErrInvalid) {
		t.Errorf("DelPod with 2 fds: %v, want ErrInvalid", err)
	}
	raw, _ = Encode(validAdd())
	if _, err := a.Write(raw); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadMsg(b); !errors.Is(err, ErrInvalid) {
		t.Errorf("AddPod without fd: %v, want ErrInvalid", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors %d → %d: received fds leaked", before, after)
	}
}

func TestReadMsg_RejectsOversizedPacketAndReportsEOF(t *testing.T) {
	a, b := seqpacketPair(t)
	if _, err := a.Write([]byte(strings.Repeat("x", MaxMessageSize+10))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadMsg(b); !errors.Is(err, ErrInvalid) {
		t.Errorf("oversized: %v, want ErrInvalid", err)
	}
	a.Close()
	if _, _, err := ReadMsg(b); !errors.Is(err, io.EOF) {
		t.Errorf("after peer close: %v, want io.EOF", err)
	}
}

// serveOnce listens on a fresh socket and answers each connection with
// answer (no answer when nil).
func serveOnce(t *testing.T, answer func(Message) *Ack) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "z.sock")
	l, err := net.ListenUnix(Network, &net.UnixAddr{Name: path, Net: Network})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return
			}
			m, fds, err := ReadMsg(c)
			closeAll(fds)
			if err == nil {
				if a := answer(m); a != nil {
					WriteMsg(c, *a)
				} else {
					// Hold the connection open without answering until the
					// client gives up.
					c.Read(make([]byte, 1))
				}
			}
			c.Close()
		}
	}()
	return path
}

func TestClient_OutcomesAreClassified(t *testing.T) {
	nsFD := openSelfNetns(t)
	ctx := context.Background()

	okPath := serveOnce(t, func(Message) *Ack { return &Ack{OK: true} })
	if err := (Client{SocketPath: okPath}).AddPod(ctx, validAdd(), nsFD); err != nil {
		t.Errorf("accepted AddPod: %v", err)
	}
	if err := (Client{SocketPath: okPath}).DelPod(ctx, "u"); err != nil {
		t.Errorf("accepted DelPod: %v", err)
	}

	rejPath := serveOnce(t, func(Message) *Ack { return &Ack{Error: "no such pod"} })
	err := (Client{SocketPath: rejPath}).DelPod(ctx, "u")
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "no such pod") {
		t.Errorf("rejected: %v, want ErrRejected with the reason", err)
	}

	missing := filepath.Join(t.TempDir(), "none.sock")
	if err := (Client{SocketPath: missing}).AddPod(ctx, validAdd(), nsFD); !errors.Is(err, ErrUnavailable) {
		t.Errorf("no socket: %v, want ErrUnavailable", err)
	}

	silent := serveOnce(t, func(Message) *Ack { return nil })
	start := time.Now()
	if err := (Client{SocketPath: silent, Timeout: 200 * time.Millisecond}).DelPod(ctx, "u"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("no answer: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timeout took %v", d)
	}

	if err := (Client{SocketPath: okPath}).DelPod(ctx, "bad/uid"); !errors.Is(err, ErrInvalid) {
		t.Errorf("invalid request: %v, want ErrInvalid", err)
	}
}

func TestNetnsInode_RejectsOtherFiles(t *testing.T) {
	for _, p := range []string{"/proc/self/ns/uts", "/proc/self/status"} {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = NetnsInode(fd)
		unix.Close(fd)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", p, err)
		}
	}
	if _, _, err := OpenNetns("/nonexistent/netns"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing path: %v, want ErrNotExist", err)
	}
}
