package cniserver

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/ambientmesh/ambient/internal/cniproto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type event struct {
	op    string // "add" or "remove"
	uid   string
	path  string
	inode uint64 // of the namespace the path names, at AddPod time
}

// fakeSink records calls; at AddPod it resolves the path it was given to
// the namespace inode, as ztunnel's open of the path would.
type fakeSink struct{ events chan event }

func newSink() *fakeSink { return &fakeSink{events: make(chan event, 100)} }

func (f *fakeSink) AddPod(uid, path string) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		panic("sink: stat " + path + ": " + err.Error())
	}
	f.events <- event{op: "add", uid: uid, path: path, inode: st.Ino}
}

func (f *fakeSink) RemovePod(uid string) { f.events <- event{op: "remove", uid: uid} }

func (f *fakeSink) next(t *testing.T) event {
	t.Helper()
	select {
	case e := <-f.events:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no sink call within 5s")
		return event{}
	}
}

func (f *fakeSink) none(t *testing.T) {
	t.Helper()
	select {
	case e := <-f.events:
		t.Fatalf("unexpected sink call %+v", e)
	default:
	}
}

type harness struct {
	sink   *fakeSink
	socket string
	state  string
	stop   func() error // cancels Run and returns its error
}

// start runs a server on a fresh socket and waits until it accepts.
func start(t *testing.T, state string) *harness {
	t.Helper()
	h := &harness{sink: newSink(), socket: filepath.Join(t.TempDir(), "run", "ztunnel.sock"), state: state}
	srv, err := New(Config{SocketPath: h.socket, Pods: h.sink, StateDir: state, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once bool
	var runErr error
	h.stop = func() error {
		if !once {
			once = true
			cancel()
			runErr = <-done
		}
		return runErr
	}
	t.Cleanup(func() { h.stop() })
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, err := os.Stat(h.socket); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Run: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not listen within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (h *harness) client() cniproto.Client { return cniproto.Client{SocketPath: h.socket} }

func selfNetns(t *testing.T) (int, uint64) {
	t.Helper()
	fd, ino, err := cniproto.OpenNetns("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, ino
}

// openFDs counts this process's descriptors whose target contains what
// (such as "net:[" for network namespaces). Counting only those keeps the
// count independent of sockets that close asynchronously.
func openFDs(t *testing.T, what string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.Contains(target, what) {
			n++
		}
	}
	return n
}

func addMsg(uid string) cniproto.AddPod {
	return cniproto.AddPod{UID: uid, Namespace: "default", Name: "web-0", IPs: []string{"10.244.1.2"}, NetnsPath: "/var/run/netns/cni-x"}
}

func TestServer_AddPodGivesSinkAPathToThePodsNamespace(t *testing.T) {
	h := start(t, "")
	fd, ino := selfNetns(t)
	if err := h.client().AddPod(context.Background(), addMsg("u1"), fd); err != nil {
		t.Fatal(err)
	}
	e := h.sink.next(t)
	if e.op != "add" || e.uid != "default/web-0" || !strings.HasPrefix(e.path, "/proc/self/fd/") {
		t.Fatalf("sink got %+v", e)
	}
	if e.inode != ino {
		t.Errorf("path %s is namespace %d, want %d", e.path, e.inode, ino)
	}
	fi, err := os.Stat(h.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestServer_ReAddReplacesAndDelClosesDescriptor(t *testing.T) {
	h := start(t, "")
	fd, ino := selfNetns(t)
	base := openFDs(t, "net:[")
	ctx := context.Background()

	if err := h.client().AddPod(ctx, addMsg("u1"), fd); err != nil {
		t.Fatal(err)
	}
	first := h.sink.next(t)
	if err := h.client().AddPod(ctx, addMsg("u1"), fd); err != nil {
		t.Fatal(err)
	}
	second := h.sink.next(t)
	if second.op != "add" || second.path == first.path || second.inode != ino {
		t.Errorf("re-add: first %+v, second %+v", first, second)
	}
	if n := openFDs(t, "net:["); n != base+1 {
		t.Errorf("after re-add %d descriptors open, want %d (the old one must be closed)", n, base+1)
	}

	if err := h.client().DelPod(ctx, "u1"); err != nil {
		t.Fatal(err)
	}
	if e := h.sink.next(t); e != (event{op: "remove", uid: "default/web-0"}) {
		t.Errorf("del: sink got %+v", e)
	}
	if n := openFDs(t, "net:["); n != base {
		t.Errorf("after del %d descriptors open, want %d", n, base)
	}
	// DEL is idempotent; the sink hears of the pod only once.
	if err := h.client().DelPod(ctx, "u1"); err != nil {
		t.Errorf("second DelPod: %v", err)
	}
	h.sink.none(t)
}

func TestServer_RejectsDescriptorThatIsNotANetworkNamespace(t *testing.T) {
	h := start(t, "")
	for _, p := range []string{"/proc/self/ns/uts", "/proc/self/status"} {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = h.client().AddPod(context.Background(), addMsg("u1"), fd)
		unix.Close(fd)
		if !errors.Is(err, cniproto.ErrRejected) || !strings.Contains(err.Error(), "network namespace") && !strings.Contains(err.Error(), "namespace file") {
			t.Errorf("%s: %v, want a rejection naming the problem", p, err)
		}
	}
	h.sink.none(t)
	for _, what := range []string{"uts:[", "/status"} {
		if n := openFDs(t, what); n != 0 {
			t.Errorf("%d descriptors of %s still open: the server leaked the rejected one", n, what)
		}
	}
}

func TestServer_ShutdownRemovesPodsClosesDescriptorsAndSocket(t *testing.T) {
	h := start(t, "")
	fd, _ := selfNetns(t)
	if err := h.client().AddPod(context.Background(), addMsg("u1"), fd); err != nil {
		t.Fatal(err)
	}
	held, err := strconv.Atoi(strings.TrimPrefix(h.sink.next(t).path, "/proc/self/fd/"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run returned %v on cancel", err)
	}
	if e := h.sink.next(t); e != (event{op: "remove", uid: "default/web-0"}) {
		t.Errorf("shutdown: sink got %+v", e)
	}
	if _, err := unix.FcntlInt(uintptr(held), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("pod descriptor %d still open after shutdown (%v)", held, err)
	}
	if _, err := os.Lstat(h.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after shutdown: %v", err)
	}
}

func TestListen_ReplacesStaleSocketRefusesLiveOneAndOtherFiles(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix(cniproto.Network, &net.UnixAddr{Name: stale, Net: cniproto.Network})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // leaves the socket file, as a crashed ztunnel would
	l2, err := listen(stale)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	if _, err := listen(stale); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Errorf("live socket: %v, want 'another server'", err)
	}
	l2.Close()

	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v, want 'not a socket'", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Error("regular file was replaced")
	}
}

func TestNew_RequiresSocketAndSink(t *testing.T) {
	if _, err := New(Config{Pods: newSink()}); err == nil {
		t.Error("no SocketPath: no error")
	}
	if _, err := New(Config{SocketPath: "/x"}); err == nil {
		t.Error("no Pods: no error")
	}
}

func TestServer_RecoversLivePodsAndDeletesStaleState(t *testing.T) {
	state := t.TempDir()
	_, ino := selfNetns(t)
	write := func(s cniproto.PodState) {
		t.Helper()
		if err := cniproto.WriteState(state, s); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(uid, path string, inode uint64) cniproto.PodState {
		return cniproto.PodState{UID: uid, Namespace: "default", Name: uid, IPs: []string{"10.244.1.2"}, NetnsPath: path, NetnsInode: inode}
	}
	regular := filepath.Join(t.TempDir(), "not-a-netns")
	os.WriteFile(regular, nil, 0o600)

	write(pod("live", "/proc/self/ns/net", ino))
	write(pod("live-noinode", "/proc/self/ns/net", 0))
	write(pod("gone", filepath.Join(t.TempDir(), "netns-deleted"), 0))
	write(pod("notns", regular, 0))
	write(pod("utsns", "/proc/self/ns/uts", 0))
	write(pod("reused", "/proc/self/ns/net", ino+1))
	os.WriteFile(filepath.Join(state, "junk.json"), []byte("{"), 0o600)

	h := start(t, state)
	got := map[string]event{}
	for range 2 {
		e := h.sink.next(t)
		got[e.uid] = e
	}
	for _, uid := range []string{"default/live", "default/live-noinode"} {
		if e := got[uid]; e.op != "add" || e.inode != ino {
			t.Errorf("%s: sink got %+v, want add of namespace %d", uid, e, ino)
		}
	}
	// Recovery happens before serving, so a request round trip orders it;
	// an unknown pod's DEL reaches no sink.
	if err := h.client().DelPod(context.Background(), "nobody"); err != nil {
		t.Fatal(err)
	}
	h.sink.none(t)

	ents, err := os.ReadDir(state)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if strings.Join(left, ",") != "live-noinode.json,live.json" {
		t.Errorf("state dir holds %v, want only the live pods", left)
	}
}
