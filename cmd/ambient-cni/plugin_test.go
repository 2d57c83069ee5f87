package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/ambientmesh/ambient/internal/cniproto"
	"github.com/ambientmesh/ambient/internal/netns"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/ztunnel/cniserver"
)

var (
	binDir   string
	buildMu  sync.Mutex
	builtBin string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ambient-cni-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// pluginBinary builds the plugin once per test binary.
func pluginBinary(t *testing.T) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if builtBin == "" {
		bin := filepath.Join(binDir, "ambient-cni")
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		builtBin = bin
	}
	return builtBin
}

const podUID = "3f0e9c2a-7d1b-4c1e-9a55-0d6f2f7f1a01"

// env is what a container runtime would set up around one plugin call.
type env struct {
	socket, stateDir string
}

func newEnv(t *testing.T) env {
	dir := t.TempDir()
	return env{socket: filepath.Join(dir, "run", "ztunnel.sock"), stateDir: filepath.Join(dir, "pods")}
}

// config is the network configuration as the runtime passes it to a
// chained plugin: prevResult from the plugin before, with the host end
// and the pod end of the veth.
func (e env) config(netnsPath, podIP string) []byte {
	return []byte(fmt.Sprintf(`{
	"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambient-cni",
	"ztunnelSocket": %q, "stateDir": %q, "ztunnelTimeout": "1s",
	"prevResult": {
		"cniVersion": "1.0.0",
		"interfaces": [{"name": "p1", "mac": "0a:58:0a:f4:01:01"}, {"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": %q}],
		"ips": [{"address": "%s/32", "gateway": "10.244.1.1", "interface": 1}],
		"routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
		"dns": {}
	}}`, e.socket, e.stateDir, netnsPath, podIP))
}

type result struct {
	stdout, stderr string
	err            error
}

// run invokes the plugin as a container runtime does.
func run(t *testing.T, command, containerID, netnsPath, cniArgs string, conf []byte) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bin := pluginBinary(t)
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + containerID,
		"CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=eth0",
		"CNI_ARGS=" + cniArgs,
		"CNI_PATH=" + filepath.Dir(bin),
	}
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("%s: stderr:\n%s", command, stderr.String())
	return result{stdout.String(), stderr.String(), err}
}

func podArgsFor(uid, name string) string {
	return "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + name + ";K8S_POD_INFRA_CONTAINER_ID=c-" + name + ";K8S_POD_UID=" + uid
}

type sinkEvent struct {
	op    string
	uid   string
	inode uint64 // of the namespace a thread entering the path ends up in
}

// sink is a PodSink that enters the namespace at the path it is given,
// exactly as ztunnel does, and records where it landed.
type sink struct{ events chan sinkEvent }

func (s *sink) AddPod(uid, nsPath string) {
	var ino uint64
	err := netns.Do(nsPath, func() error {
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			return err
		}
		ino = st.Ino
		return nil
	})
	if err != nil {
		panic(fmt.Sprintf("sink: enter %s: %v", nsPath, err))
	}
	s.events <- sinkEvent{op: "add", uid: uid, inode: ino}
}

func (s *sink) RemovePod(uid string) { s.events <- sinkEvent{op: "remove", uid: uid} }

func (s *sink) next(t *testing.T) sinkEvent {
	t.Helper()
	select {
	case e := <-s.events:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no PodSink call within 10s")
		return sinkEvent{}
	}
}

// startServer runs ztunnel's CNI server for e and waits for its socket.
func startServer(t *testing.T, e env) *sink {
	t.Helper()
	s := &sink{events: make(chan sinkEvent, 100)}
	srv, err := cniserver.New(cniserver.Config{
		SocketPath: e.socket, Pods: s, StateDir: e.stateDir,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("cniserver.Run: %v", err)
		}
	})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(e.socket); err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatal("cniserver did not listen within 5s")
		}
	}
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// checkEchoed checks stdout is prevResult, unchanged.
func checkEchoed(t *testing.T, stdout, netnsPath, podIP string) {
	t.Helper()
	var got current.Result
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("stdout is not a CNI result: %v\n%s", err, stdout)
	}
	if got.CNIVersion != "1.0.0" || len(got.IPs) != 1 || got.IPs[0].Address.String() != podIP+"/32" ||
		got.IPs[0].Gateway.String() != "10.244.1.1" || got.IPs[0].Interface == nil || *got.IPs[0].Interface != 1 ||
		len(got.Interfaces) != 2 || got.Interfaces[1].Sandbox != netnsPath || got.Interfaces[0].Mac != "0a:58:0a:f4:01:01" ||
		len(got.Routes) != 1 || got.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Errorf("stdout does not echo prevResult:\n%s", stdout)
	}
}

func TestPlugin_AddHandsPodNetnsToZtunnelDelRemovesIt(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 1, PodsPerNode: 1})
	pod := topo.Pod(1, 1)
	e := newEnv(t)
	s := startServer(t, e)
	conf := e.config(pod.Path, pod.IP.String())
	args := podArgsFor(podUID, "web-0")

	r := run(t, "ADD", "c1", pod.Path, args, conf)
	if r.err != nil {
		t.Fatalf("ADD: %v", r.err)
	}
	checkEchoed(t, r.stdout, pod.Path, pod.IP.String())
	ev := s.next(t)
	if ev.op != "add" || ev.uid != "default/web-0" {
		t.Fatalf("sink got %+v, want AddPod default/web-0", ev)
	}
	if want := nsInode(t, pod.Path); ev.inode != want {
		t.Errorf("ztunnel's path enters namespace %d, want the pod's %d", ev.inode, want)
	}
	st, err := cniproto.ReadState(e.stateDir, podUID)
	if err != nil {
		t.Fatal(err)
	}
	if st.NetnsPath != pod.Path || st.Name != "web-0" || st.Namespace != "default" || st.ContainerID != "c1" ||
		len(st.IPs) != 1 || st.IPs[0] != pod.IP.String() {
		t.Errorf("state file: %+v", st)
	}

	if r := run(t, "CHECK", "c1", pod.Path, args, conf); r.err != nil {
		t.Errorf("CHECK after ADD: %v", r.err)
	}

	// A DEL for an older sandbox of the same pod leaves the pod alone.
	if r := run(t, "DEL", "c0-old", pod.Path, args, conf); r.err != nil {
		t.Fatalf("DEL of an old sandbox: %v", r.err)
	}
	if _, err := cniproto.ReadState(e.stateDir, podUID); err != nil {
		t.Errorf("DEL of an old sandbox removed the current state: %v", err)
	}

	if r := run(t, "DEL", "c1", pod.Path, args, conf); r.err != nil {
		t.Fatalf("DEL: %v", r.err)
	}
	if ev := s.next(t); ev != (sinkEvent{op: "remove", uid: "default/web-0"}) {
		t.Errorf("sink got %+v, want RemovePod %s", ev, podUID)
	}
	if _, err := cniproto.ReadState(e.stateDir, podUID); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state after DEL: %v, want none", err)
	}
	if r := run(t, "CHECK", "c1", pod.Path, args, conf); r.err == nil {
		t.Error("CHECK after DEL succeeded")
	}
	// DEL is idempotent, and succeeds with nothing known at all.
	if r := run(t, "DEL", "c1", pod.Path, args, conf); r.err != nil {
		t.Errorf("second DEL: %v", r.err)
	}
	select { // the sink heard of the pod's removal once
	case ev := <-s.events:
		t.Errorf("second DEL reached the sink again: %+v", ev)
	case <-time.After(200 * time.Millisecond):
	}
	if r := run(t, "DEL", "c1", "", "", conf); r.err != nil {
		t.Errorf("DEL without pod identity or netns: %v", r.err)
	}
}

func TestPlugin_AddWhileZtunnelDownIsRecoveredWhenItStarts(t *testing.T) {
	topo := testenv.NewTopology(t, testenv.Spec{Nodes: 1, PodsPerNode: 1})
	live := topo.Pod(1, 1)
	goneTopo := testenv.NewTopology(t, testenv.Spec{Nodes: 1, PodsPerNode: 1})
	gone := goneTopo.Pod(1, 1)
	e := newEnv(t)

	const liveUID, goneUID = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
	for _, p := range []struct {
		uid, name string
		pod       *testenv.Pod
	}{{liveUID, "live", live}, {goneUID, "gone", gone}} {
		r := run(t, "ADD", "c-"+p.name, p.pod.Path, podArgsFor(p.uid, p.name), e.config(p.pod.Path, p.pod.IP.String()))
		if r.err != nil {
			t.Fatalf("ADD %s with ztunnel down: %v", p.name, r.err)
		}
		checkEchoed(t, r.stdout, p.pod.Path, p.pod.IP.String())
		if !strings.Contains(r.stderr, "ztunnel unavailable") {
			t.Errorf("ADD %s: stderr does not say ztunnel is unavailable", p.name)
		}
	}
	liveIno := nsInode(t, live.Path)
	// The second pod's namespace goes away before ztunnel starts.
	if err := goneTopo.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(gone.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s still exists after teardown: %v", gone.Path, err)
	}

	s := startServer(t, e)
	ev := s.next(t)
	if ev.op != "add" || ev.uid != "default/live" || ev.inode != liveIno {
		t.Errorf("recovery: sink got %+v, want AddPod default/live in namespace %d", ev, liveIno)
	}
	select {
	case ev := <-s.events:
		t.Errorf("unexpected sink call %+v (the stale pod must not be added)", ev)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := cniproto.ReadState(e.stateDir, goneUID); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale state entry: %v, want it deleted", err)
	}
	if _, err := cniproto.ReadState(e.stateDir, liveUID); err != nil {
		t.Errorf("live state entry: %v", err)
	}
}

func TestPlugin_PassesThroughSandboxesThatAreNotPods(t *testing.T) {
	e := newEnv(t)
	conf := e.config("/var/run/netns/none", "10.244.1.9")
	r := run(t, "ADD", "c1", "/var/run/netns/none", "IgnoreUnknown=1", conf)
	if r.err != nil {
		t.Fatalf("ADD: %v", r.err)
	}
	checkEchoed(t, r.stdout, "/var/run/netns/none", "10.244.1.9")
	if ents, _ := os.ReadDir(e.stateDir); len(ents) != 0 {
		t.Errorf("state dir holds %d entries for a non-pod", len(ents))
	}
}

func TestPlugin_AddFailsClearly(t *testing.T) {
	e := newEnv(t)
	args := podArgsFor(podUID, "web-0")
	noPrev := []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"n","type":"ambient-cni","stateDir":%q}`, e.stateDir))
	for name, tc := range map[string]struct {
		netns, args string
		conf        []byte
		want        string
	}{
		"no prevResult":    {"/proc/self/ns/net", args, noPrev, "chained plugin"},
		"bad CNI_ARGS":     {"/proc/self/ns/net", "K8S_POD_NAME", e.config("/x", "10.244.1.2"), "malformed pair"},
		"netns is missing": {"/var/run/netns/definitely-missing", args, e.config("/x", "10.244.1.2"), "no such file"},
		"netns not netns":  {"/proc/self/ns/uts", args, e.config("/x", "10.244.1.2"), "not a network namespace"},
	} {
		r := run(t, "ADD", "c1", tc.netns, tc.args, tc.conf)
		if r.err == nil || !strings.Contains(r.stdout, tc.want) {
			t.Errorf("%s: err %v, stdout %s; want a CNI error mentioning %q", name, r.err, r.stdout, tc.want)
		}
		if ents, _ := os.ReadDir(e.stateDir); len(ents) != 0 {
			t.Errorf("%s: failed ADD left %d state entries", name, len(ents))
		}
	}
}
