// Package cniserver is ztunnel's end of the ambient-cni protocol
// (internal/cniproto): it learns each pod's network namespace from the CNI
// plugin and hands it to ztunnel.
//
// The server listens on a unix SOCK_SEQPACKET socket (mode 0600; a stale
// socket file left by a previous run is removed first, while one that still
// has a live listener is an error). For AddPod it checks that the attached
// descriptor is a network namespace, keeps it open, and calls
// PodSink.AddPod(uid, "/proc/self/fd/<fd>"), a path that setns(2) and
// internal/netns accept for as long as the descriptor stays open. A repeated
// AddPod for the same uid replaces the descriptor (the old one is closed
// after the sink has the new path); DelPod calls PodSink.RemovePod and
// closes the descriptor.
//
// # Restart recovery
//
// The plugin also records every pod in a state directory, one
// cniproto.PodState file per pod uid, removed on DEL. The state directory
// is how pods are recovered after a ztunnel restart (or found when they
// were added while ztunnel was not running): before serving requests, Run
// scans it and re-adds every pod whose recorded network namespace still
// exists, opening it itself. Entries whose namespace is gone (the path is
// missing, no longer a network namespace, or a different namespace than
// the one recorded at ADD) are stale and deleted, as are unreadable ones.
//
// When Run returns it removes every pod it added from the sink and closes
// their descriptors, because the /proc/self/fd paths it handed out die with
// them.
package cniserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambientmesh/ambient/internal/cniproto"
)

// PodSink receives pods, keyed "namespace/name" (see PodKey) — the key the
// workload API's Workload also has; *ztunnel.Ztunnel satisfies it. Its
// methods are called with the server's lock held, so they must not call
// back into the Server, and must return promptly.
type PodSink interface {
	AddPod(key, nsPath string)
	RemovePod(key string)
}

// PodKey is the sink's key of a pod: "namespace/name".
func PodKey(m cniproto.AddPod) string { return m.Namespace + "/" + m.Name }

// Defaults for zero Config fields.
const (
	DefaultRequestTimeout = 5 * time.Second
	DefaultMaxConns       = 32
	DefaultMaxPods        = 4096
)

// Config configures a Server.
type Config struct {
	// SocketPath is the unix socket to listen on (required), e.g.
	// /var/run/ambient/ztunnel.sock. Its directory is created if missing.
	SocketPath string
	// Pods receives the pods (required).
	Pods PodSink
	// StateDir is the plugin's pod state directory, scanned on start; see
	// the package comment. Empty disables recovery.
	StateDir string
	// Logger defaults to discarding.
	Logger *slog.Logger
	// RequestTimeout bounds reading one request and writing its answer.
	RequestTimeout time.Duration
	// MaxConns bounds concurrently served connections; further ones wait
	// in the listen backlog.
	MaxConns int
	// MaxPods bounds the pods held (each holds a descriptor).
	MaxPods int
}

// Server serves the CNI plugin; see the package comment.
type Server struct {
	cfg Config
	log *slog.Logger

	// mu guards pods and serialises calls into cfg.Pods.
	mu   sync.Mutex
	pods map[string]*pod // by uid
}

// pod is a pod whose namespace descriptor the server holds.
type pod struct {
	fd    int
	path  string // /proc/self/fd/<fd>, as given to the sink
	info  cniproto.AddPod
	inode uint64
}

// New checks cfg and returns a Server; Run starts it.
func New(cfg Config) (*Server, error) {
	if cfg.SocketPath == "" {
		return nil, errors.New("cniserver: Config.SocketPath is required")
	}
	if cfg.Pods == nil {
		return nil, errors.New("cniserver: Config.Pods is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxPods <= 0 {
		cfg.MaxPods = DefaultMaxPods
	}
	return &Server{
		cfg:  cfg,
		log:  cfg.Logger.With("component", "cniserver"),
		pods: make(map[string]*pod),
	}, nil
}

// Run listens, recovers pods from the state directory, and serves until
// ctx is cancelled. It returns nil on cancellation.
func (s *Server) Run(ctx context.Context) error {
	l, err := listen(s.cfg.SocketPath)
	if err != nil {
		return err
	}
	defer s.removeAll()
	defer l.Close() // also unlinks the socket file

	s.recoverPods()
	s.log.Info("serving CNI plugin", "socket", s.cfg.SocketPath, "pods", s.count())

	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, s.cfg.MaxConns)
	for {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		c, err := l.AcceptUnix()
		if err != nil {
			<-sem
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("cniserver: accept on %s: %w", s.cfg.SocketPath, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s.serveConn(c)
		}()
	}
}

// listen removes a stale socket file and listens on path with mode 0600.
func listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("cniserver: socket dir: %w", err)
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("cniserver: socket %s: %w", path, err)
	case fi.Mode()&fs.ModeSocket == 0:
		return nil, fmt.Errorf("cniserver: %s exists and is not a socket; refusing to replace it (remove it or choose another SocketPath)", path)
	default:
		if c, err := net.DialTimeout(cniproto.Network, path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("cniserver: another server is listening on %s (is a second ztunnel running?)", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("cniserver: remove stale socket %s: %w", path, err)
		}
	}
	l, err := net.ListenUnix(cniproto.Network, &net.UnixAddr{Name: path, Net: cniproto.Network})
	if err != nil {
		return nil, fmt.Errorf("cniserver: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("cniserver: chmod %s: %w", path, err)
	}
	return l, nil
}

// serveConn answers the single request of one plugin connection.
func (s *Server) serveConn(c *net.UnixConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(s.cfg.RequestTimeout))
	if err := checkPeer(c); err != nil {
		s.log.Warn("rejected connection", "err", err)
		cniproto.WriteMsg(c, cniproto.Ack{Error: err.Error()})
		return
	}
	m, fds, err := cniproto.ReadMsg(c)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			s.log.Warn("bad request", "err", err)
			cniproto.WriteMsg(c, cniproto.Ack{Error: err.Error()})
		}
		return
	}
	switch m := m.(type) {
	case cniproto.AddPod:
		err = s.addPod(m, fds[0], 0)
	case cniproto.DelPod:
		s.removePod(m.UID)
	default:
		err = fmt.Errorf("cniserver: unexpected %s request", m.Kind())
	}
	ack := cniproto.Ack{OK: err == nil}
	if err != nil {
		ack.Error = err.Error()
		s.log.Warn("request failed", "kind", m.Kind(), "err", err)
	}
	if err := cniproto.WriteMsg(c, ack); err != nil {
		s.log.Warn("answering plugin", "kind", m.Kind(), "err", err)
	}
}

// checkPeer admits only root or this process's own user.
func checkPeer(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("cniserver: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("cniserver: peer credentials: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("cniserver: peer credentials: %w", cerr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("cniserver: peer uid %d (pid %d) is neither root nor ztunnel's user", cred.Uid, cred.Pid)
	}
	return nil
}

// addPod takes ownership of fd (closing it on error) and hands the pod to
// the sink. If wantInode is not zero the namespace must have that inode.
func (s *Server) addPod(m cniproto.AddPod, fd int, wantInode uint64) error {
	ino, err := cniproto.NetnsInode(fd)
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("cniserver: pod %s/%s (%s): %w", m.Namespace, m.Name, m.UID, err)
	}
	if wantInode != 0 && ino != wantInode {
		unix.Close(fd)
		return fmt.Errorf("cniserver: pod %s/%s (%s): %s is namespace %d, the pod's was %d: %w", m.Namespace, m.Name, m.UID, m.NetnsPath, ino, wantInode, errStale)
	}
	p := &pod{fd: fd, path: fmt.Sprintf("/proc/self/fd/%d", fd), info: m, inode: ino}

	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.pods[m.UID]
	if old == nil && len(s.pods) >= s.cfg.MaxPods {
		unix.Close(fd)
		return fmt.Errorf("cniserver: pod %s/%s (%s): already holding %d pods (Config.MaxPods)", m.Namespace, m.Name, m.UID, s.cfg.MaxPods)
	}
	s.pods[m.UID] = p
	s.cfg.Pods.AddPod(PodKey(m), p.path)
	if old != nil {
		unix.Close(old.fd) // only now: the sink no longer has its path
	}
	s.log.Info("pod added", "uid", m.UID, "pod", m.Namespace+"/"+m.Name, "ips", m.IPs, "netns", m.NetnsPath, "inode", ino, "replaced", old != nil)
	return nil
}

var errStale = errors.New("stale")

// removePod forgets uid; unknown uids are fine (DEL is idempotent).
func (s *Server) removePod(uid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pods[uid]
	delete(s.pods, uid)
	if p != nil {
		s.cfg.Pods.RemovePod(PodKey(p.info))
		unix.Close(p.fd)
		s.log.Info("pod removed", "uid", uid, "pod", p.info.Namespace+"/"+p.info.Name)
	}
}

// removeAll removes every pod from the sink and closes its descriptor.
func (s *Server) removeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for uid, p := range s.pods {
		s.cfg.Pods.RemovePod(PodKey(p.info))
		unix.Close(p.fd)
		delete(s.pods, uid)
	}
}

func (s *Server) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pods)
}

// recoverPods re-adds the pods recorded in the state directory and deletes
// stale entries.
func (s *Server) recoverPods() {
	if s.cfg.StateDir == "" {
		return
	}
	ents, err := cniproto.ListStates(s.cfg.StateDir, s.cfg.MaxPods)
	if err != nil {
		s.log.Error("scanning pod state dir", "dir", s.cfg.StateDir, "err", err)
	}
	for _, e := range ents {
		if e.Err != nil {
			s.log.Warn("deleting unreadable pod state", "file", e.Path, "err", e.Err)
			s.removeStateFile(e.Path)
			continue
		}
		st := e.State
		m := cniproto.AddPod{UID: st.UID, Namespace: st.Namespace, Name: st.Name, IPs: st.IPs, NetnsPath: st.NetnsPath}
		fd, err := unix.Open(st.NetnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			s.log.Info("deleting stale pod state: netns gone", "uid", st.UID, "pod", st.Namespace+"/"+st.Name, "netns", st.NetnsPath)
			s.removeStateFile(e.Path)
			continue
		}
		if err != nil {
			s.log.Warn("skipping pod state: cannot open netns", "uid", st.UID, "netns", st.NetnsPath, "err", err)
			continue
		}
		err = s.addPod(m, fd, st.NetnsInode)
		if errors.Is(err, cniproto.ErrInvalid) || errors.Is(err, errStale) {
			s.log.Info("deleting stale pod state", "uid", st.UID, "err", err)
			s.removeStateFile(e.Path)
		} else if err != nil {
			s.log.Warn("skipping pod state", "uid", st.UID, "err", err)
		}
	}
}

func (s *Server) removeStateFile(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("deleting pod state", "file", path, "err", err)
	}
}
