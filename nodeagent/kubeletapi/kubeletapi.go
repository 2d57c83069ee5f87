// Package kubeletapi is the node agent's kubelet API: the HTTPS server
// the apiserver calls for `kubectl logs`, `kubectl exec` and `kubectl
// port-forward`. It serves the subset of a kubelet's port 10250 those
// need, over a Runtime the agent implements (which pods exist, their log
// files, running commands and dialing ports in their namespaces).
//
// # Endpoints
//
//	GET      /containerLogs/{namespace}/{pod}/{container}   the container's log (see LogOptions)
//	GET/POST /exec/{namespace}/{pod}[/{uid}]/{container}     ?command=..&input=1&output=1&error=1&tty=0
//	GET/POST /portForward/{namespace}/{pod}[/{uid}]
//	GET      /healthz
//
// exec and portForward speak the streaming protocols of a kubelet
// (SPDY/3.1 with channel.k8s.io v1-v4 and portforward.k8s.io, and their
// WebSocket forms) through k8s.io/cri-streaming; a failed command's exit
// code travels on the error stream as a kubelet's does. TTYs are refused
// (the command fails with a message saying so).
//
// # Security
//
// TLS with a self-signed serving certificate for the node's IP and name,
// generated when the server is created (what a kubelet does without
// serverTLSBootstrap; the apiserver does not verify kubelets unless
// given --kubelet-certificate-authority). Every client must present a
// certificate that chains to Config.ClientCA (the cluster CA): anything
// else fails the TLS handshake. Authorize then decides on the
// certificate's identity (CN as the user, O as the groups): by default
// only the apiserver's kubelet client (CN kube-apiserver-kubelet-client)
// and members of system:masters get in; others get 403.
//
// # Lifecycle
//
// New(cfg) → Run(ctx): Run listens (through Config.Listen, so the agent
// can listen inside the node's network namespace), serves until ctx
// ends, then closes every connection, upgraded streams included, and
// waits for its handlers: running exec commands are killed through
// their context.
package kubeletapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
)

// KubeletClientCN is the common name of the apiserver's kubelet client
// certificate (internal/controlplane's PKI).
const KubeletClientCN = "kube-apiserver-kubelet-client"

// MastersGroup is the group whose members may use the API.
const MastersGroup = "system:masters"

// Errors a Runtime returns, mapped to HTTP statuses.
var (
	// ErrNotFound: no such pod or container on this node (404).
	ErrNotFound = errors.New("not found")
	// ErrBadRequest: the pod or container exists but cannot serve the
	// request now, or the request asks for what is not kept (400).
	ErrBadRequest = errors.New("bad request")
)

// Stdio are an exec's streams; any may be nil (not requested).
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
	TTY      bool
}

// LogFile is a container's log as the runtime keeps it.
type LogFile struct {
	// Path is the file: the container's output, appended by every run,
	// without timestamps.
	Path string
	// Gone is closed when the pod leaves the node (a follow ends then).
	Gone <-chan struct{}
}

// Runtime is what the server needs from the node agent. Errors wrap
// ErrNotFound or ErrBadRequest where they apply.
type Runtime interface {
	// LogFile locates a container's log.
	LogFile(namespace, pod, container string) (LogFile, error)
	// Exec runs cmd in the container's pod until it exits or ctx ends
	// (then it is killed) and returns its exit code. A command the
	// container cannot run is an exit code with the reason on s.Err, as a
	// shell reports it; an error means it could not be tried at all.
	Exec(ctx context.Context, namespace, pod, container string, cmd []string, s Stdio) (int, error)
	// PortForward copies between stream and port on the pod's loopback
	// until either side ends or ctx does.
	PortForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error
}

// Config configures a Server.
type Config struct {
	NodeName string
	NodeIP   netip.Addr
	// Port to listen on at NodeIP (10250 is a kubelet's).
	Port int
	// ClientCA is PEM: the CAs client certificates must chain to.
	ClientCA []byte
	Runtime  Runtime
	// Listen opens the listener; nil: net.Listen. The agent passes one
	// that listens inside the node's network namespace.
	Listen func(network, addr string) (net.Listener, error)
	// Authorize decides on an authenticated client; nil: AllowAPIServer.
	Authorize Authorizer
	// FollowPoll is how often a followed log is checked for more; default
	// 250ms.
	FollowPoll time.Duration
	Logger     *slog.Logger
}

// Server is the kubelet API. Create it with New.
type Server struct {
	cfg  Config
	log  *slog.Logger
	tls  *tls.Config
	mux  *http.ServeMux
	cert *x509.Certificate // the serving certificate

	mu      sync.Mutex // guards the fields below
	conns   map[net.Conn]struct{}
	closing bool // Run is stopping: no new requests

	handlers sync.WaitGroup // running requests, upgraded ones included (Add under mu)
}

// New validates cfg and generates the serving certificate.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.NodeName == "":
		return nil, errors.New("kubeletapi: Config.NodeName is required")
	case !cfg.NodeIP.IsValid():
		return nil, errors.New("kubeletapi: Config.NodeIP is required")
	case cfg.Runtime == nil:
		return nil, errors.New("kubeletapi: Config.Runtime is required")
	case cfg.Port < 0 || cfg.Port > 65535:
		return nil, fmt.Errorf("kubeletapi: port %d out of range", cfg.Port)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cfg.ClientCA) {
		return nil, errors.New("kubeletapi: Config.ClientCA holds no PEM certificate (pass the cluster CA, --kubelet-client-ca)")
	}
	if cfg.Listen == nil {
		cfg.Listen = net.Listen
	}
	if cfg.Authorize == nil {
		cfg.Authorize = AllowAPIServer
	}
	if cfg.FollowPoll <= 0 {
		cfg.FollowPoll = 250 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cert, leaf, err := selfSigned(cfg.NodeName, cfg.NodeIP, time.Now())
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "kubeletapi"),
		cert:  leaf,
		conns: map[net.Conn]struct{}{},
		tls: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
			// SPDY upgrades need HTTP/1.1.
			NextProtos: []string{"http/1.1"},
		},
	}
	s.routes()
	return s, nil
}

// Certificate is the serving certificate.
func (s *Server) Certificate() *x509.Certificate { return s.cert }

// selfSigned makes the serving certificate for the node's IP and name,
// valid for a year.
func selfSigned(name string, ip netip.Addr, now time.Time) (tls.Certificate, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("kubeletapi: serving key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("kubeletapi: serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name + "@" + strconv.FormatInt(now.Unix(), 10)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // self-signed, as a kubelet's
		IPAddresses:           []net.IP{ip.AsSlice()},
		DNSNames:              []string{name},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("kubeletapi: serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("kubeletapi: serving certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, leaf, nil
}

// Run serves until ctx ends, then closes every connection and waits for
// the handlers.
func (s *Server) Run(ctx context.Context) error {
	addr := net.JoinHostPort(s.cfg.NodeIP.String(), strconv.Itoa(s.cfg.Port))
	ln, err := s.cfg.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("kubeletapi: listen on %s: %w", addr, err)
	}
	s.log.Info("kubelet API listening", "addr", ln.Addr().String())
	srv := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(tls.NewListener(&trackingListener{Listener: ln, s: s}, s.tls)) }()
	select {
	case err = <-served:
		err = fmt.Errorf("kubeletapi: serve: %w", err)
	case <-ctx.Done():
		err = nil
	}
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	_ = srv.Close()
	s.closeConns() // the upgraded ones, which srv no longer tracks
	s.handlers.Wait()
	if err == nil {
		<-served
	}
	return err
}

// trackingListener records every accepted connection, so that Run can
// close hijacked (upgraded) ones too.
type trackingListener struct {
	net.Listener
	s *Server
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: l.s}
	l.s.mu.Lock()
	l.s.conns[tc] = struct{}{}
	l.s.mu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	s    *Server
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

func (s *Server) closeConns() {
	s.mu.Lock()
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// Identity is an authenticated client: its certificate's CN as the user
// and O as the groups, as the apiserver reads client certificates.
type Identity struct {
	User   string
	Groups []string
}

// IdentityOf reads the identity of a verified client certificate.
func IdentityOf(c *x509.Certificate) Identity {
	return Identity{User: c.Subject.CommonName, Groups: slices.Clone(c.Subject.Organization)}
}

// Authorizer allows an identity (nil) or says why not.
type Authorizer func(Identity) error

// ErrForbidden is wrapped by Authorizers' refusals.
var ErrForbidden = errors.New("forbidden")

// AllowUser allows one user.
func AllowUser(user string) Authorizer {
	return func(id Identity) error {
		if id.User == user {
			return nil
		}
		return fmt.Errorf("user %q is %w", id.User, ErrForbidden)
	}
}

// AllowGroup allows the members of one group.
func AllowGroup(group string) Authorizer {
	return func(id Identity) error {
		if slices.Contains(id.Groups, group) {
			return nil
		}
		return fmt.Errorf("user %q (groups %q) is not in %s: %w", id.User, id.Groups, group, ErrForbidden)
	}
}

// AnyOf allows what any of as allows.
func AnyOf(as ...Authorizer) Authorizer {
	return func(id Identity) error {
		var errs []error
		for _, a := range as {
			err := a(id)
			if err == nil {
				return nil
			}
			errs = append(errs, err)
		}
		return fmt.Errorf("kubelet API: %w", errors.Join(errs...))
	}
}

// AllowAPIServer allows the apiserver's kubelet client and
// system:masters: the default.
var AllowAPIServer = AnyOf(AllowUser(KubeletClientCN), AllowGroup(MastersGroup))

// authenticate reads the client's identity from the verified chain; ok
// false when there is none (the handshake requires one, so only a
// server misconfigured without TLS gets here).
func authenticate(st *tls.ConnectionState) (Identity, bool) {
	if st == nil || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return Identity{}, false
	}
	return IdentityOf(st.VerifiedChains[0][0]), true
}

// guard authenticates and authorizes every request, and counts it
// running.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			http.Error(w, "the node agent is stopping", http.StatusServiceUnavailable)
			return
		}
		s.handlers.Add(1)
		s.mu.Unlock()
		defer s.handlers.Done()
		id, ok := authenticate(r.TLS)
		if !ok {
			http.Error(w, "Unauthorized: a client certificate of the cluster CA is required", http.StatusUnauthorized)
			return
		}
		if err := s.cfg.Authorize(id); err != nil {
			s.log.Info("kubelet API: request refused", "user", id.User, "groups", id.Groups, "path", r.URL.Path)
			http.Error(w, "Forbidden: "+err.Error(), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) routes() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", s.serveLogs)
	for _, m := range []string{"GET", "POST"} {
		mux.HandleFunc(m+" /exec/{namespace}/{pod}/{container}", s.serveExec)
		mux.HandleFunc(m+" /exec/{namespace}/{pod}/{uid}/{container}", s.serveExec)
		mux.HandleFunc(m+" /portForward/{namespace}/{pod}", s.servePortForward)
		mux.HandleFunc(m+" /portForward/{namespace}/{pod}/{uid}", s.servePortForward)
	}
	s.mux = http.NewServeMux()
	s.mux.Handle("/", s.guard(mux))
}

// httpError writes a Runtime error with its status.
func httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrBadRequest):
		code = http.StatusBadRequest
	}
	http.Error(w, err.Error(), code)
}
