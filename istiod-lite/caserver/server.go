// Package caserver is istiod-lite's certificate service (DESIGN §3): the gRPC
// method /istio.v1.auth.IstioCertificateService/CreateCertificate, wire
// compatible with Istio, in front of the signing core in internal/ca.
//
// # Request handling
//
//  1. Authentication. The caller sends a Kubernetes ServiceAccount token in
//     the call metadata, "authorization: Bearer <token>", as Istio's clients
//     do. An [Authenticator] checks it; in production [TokenReviewer] posts
//     an authentication.k8s.io/v1 TokenReview with the CA's audiences
//     ("istio-ca") and yields the caller's ServiceAccount
//     (system:serviceaccount:<ns>:<sa>) and, for a token bound to a pod, the
//     pod and its node from the review's extra
//     (authentication.kubernetes.io/node-name etc.). A missing, forged,
//     expired or wrongly-scoped token is refused with codes.Unauthenticated.
//  2. Authorization ([Policy.Decide]). Without the request metadata field
//     "ImpersonatedIdentity" the caller gets its own identity,
//     spiffe://<td>/ns/<ns>/sa/<sa>. With it, the caller must be a node
//     proxy ServiceAccount (default istio-system/ztunnel) whose token names
//     its node, and node authorization applies: a [PodLister] (production:
//     [KubePods]) must find a live pod of the requested identity bound to
//     that node. Otherwise codes.PermissionDenied.
//  3. Signing. The CSR is signed by ca.Authority.SignCSR for exactly that
//     identity; validity_duration (seconds, 0 = the CA default) is capped
//     by the Authority's MaxTTL and by Config.MaxTTL. A CSR naming another
//     identity is refused with codes.PermissionDenied; a malformed CSR,
//     identity or lifetime with codes.InvalidArgument.
//
// The response's cert_chain holds one PEM certificate per element, as
// Istio's: the leaf, any intermediates, then the root(s).
//
// Every status message says why the request was refused. Token contents are
// never logged. [Config.Metrics] counts requests, issuances and refusals by
// reason ([NewPrometheusMetrics] uses Istio's citadel_server_* names).
//
// The Kubernetes clients here speak the REST API directly with net/http and
// encoding/json (no client-go), with bounded bodies and timeouts.
package caserver

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/identity"
	capb "github.com/ambientmesh/ambient/proto/ca"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Defaults for [Config].
const (
	DefaultNodeProxyNamespace      = "istio-system"
	DefaultNodeProxyServiceAccount = "ztunnel"
	// MaxCSRBytes bounds the CSR accepted in a request.
	MaxCSRBytes = 64 << 10
	// authTimeout bounds the authentication and node checks of one call.
	authTimeout = 10 * time.Second
)

// Config configures a Server.
type Config struct {
	// Authority signs the certificates. Required.
	Authority *ca.Authority
	// Authenticator checks bearer tokens. Required.
	Authenticator Authenticator
	// Pods answers node-authorization queries. Required.
	Pods PodLister
	// NodeProxies are the ServiceAccounts allowed to impersonate workloads
	// on their own node; nil means istio-system/ztunnel. The trust domain of
	// each entry is ignored.
	NodeProxies []identity.Workload
	// MaxTTL, if positive, caps the requested lifetime below the
	// Authority's own cap.
	MaxTTL time.Duration
	// Listener and ServerOptions are used by Run only; ServerOptions
	// typically holds grpc.Creds with the istiod serving certificate.
	Listener      net.Listener
	ServerOptions []grpc.ServerOption
	// Logger receives one line per refused or issued certificate; nil
	// discards.
	Logger *slog.Logger
	// Metrics defaults to a no-op; see [NewPrometheusMetrics].
	Metrics Metrics
}

// Server implements IstioCertificateService.
type Server struct {
	capb.UnimplementedIstioCertificateServiceServer

	cfg    Config
	policy Policy
	log    *slog.Logger
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Authority == nil:
		return nil, errors.New("caserver: Config.Authority is required")
	case cfg.Authenticator == nil:
		return nil, errors.New("caserver: Config.Authenticator is required")
	case cfg.Pods == nil:
		return nil, errors.New("caserver: Config.Pods is required")
	case cfg.MaxTTL < 0:
		return nil, fmt.Errorf("caserver: Config.MaxTTL %s is negative", cfg.MaxTTL)
	}
	td := cfg.Authority.TrustDomain()
	proxies := cfg.NodeProxies
	if proxies == nil {
		proxies = []identity.Workload{{Namespace: DefaultNodeProxyNamespace, ServiceAccount: DefaultNodeProxyServiceAccount}}
	}
	policy := Policy{TrustDomain: td}
	for _, w := range proxies {
		w.TrustDomain = td
		if err := w.Validate(); err != nil {
			return nil, fmt.Errorf("caserver: Config.NodeProxies %s/%s: %w", w.Namespace, w.ServiceAccount, err)
		}
		policy.NodeProxies = append(policy.NodeProxies, w)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	return &Server{cfg: cfg, policy: policy, log: log}, nil
}

// Register adds the service to a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	capb.RegisterIstioCertificateServiceServer(r, s)
}

// Run serves the service on Config.Listener until ctx is cancelled, then
// stops gracefully and returns nil.
func (s *Server) Run(ctx context.Context) error {
	if s.cfg.Listener == nil {
		return errors.New("caserver: Run: Config.Listener is nil")
	}
	gs := grpc.NewServer(s.cfg.ServerOptions...)
	s.Register(gs)
	runCtx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-runCtx.Done()
		gs.GracefulStop()
	}()
	err := gs.Serve(s.cfg.Listener)
	cancel()
	<-stopped
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("caserver: serve %s: %w", s.cfg.Listener.Addr(), err)
}

// CreateCertificate authenticates the caller, authorizes the identity it
// asks for and signs its CSR. See the package doc.
func (s *Server) CreateCertificate(ctx context.Context, req *capb.IstioCertificateRequest) (*capb.IstioCertificateResponse, error) {
	s.cfg.Metrics.Request()
	resp, caller, dec, err := s.createCertificate(ctx, req)
	if err != nil {
		st := toStatus(err)
		s.cfg.Metrics.Refused(reason(st.Code()), isSignError(err))
		s.log.Info("caserver: certificate refused", "caller", caller.String(), "code", st.Code().String(), "reason", st.Message())
		return nil, st.Err()
	}
	s.cfg.Metrics.Issued()
	s.log.Info("caserver: certificate issued", "caller", caller.String(), "identity", dec.Identity.String())
	return resp, nil
}

func (s *Server) createCertificate(ctx context.Context, req *capb.IstioCertificateRequest) (*capb.IstioCertificateResponse, Caller, Decision, error) {
	var caller Caller
	token, err := BearerToken(ctx)
	if err != nil {
		return nil, caller, Decision{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, authTimeout)
	defer cancel()
	caller, err = s.cfg.Authenticator.Authenticate(ctx, token)
	if err != nil {
		return nil, caller, Decision{}, err
	}
	impersonated, err := impersonatedIdentity(req)
	if err != nil {
		return nil, caller, Decision{}, err
	}
	dec, err := s.policy.Decide(caller, impersonated)
	if err != nil {
		return nil, caller, dec, err
	}
	if dec.NodeName != "" {
		ok, err := s.cfg.Pods.HasPodOnNode(ctx, dec.NodeName, dec.Workload.Namespace, dec.Workload.ServiceAccount)
		if err != nil {
			return nil, caller, dec, fmt.Errorf("caserver: node check for %s on node %s: %w", dec.Identity, dec.NodeName, err)
		}
		if !ok {
			return nil, caller, dec, fmt.Errorf("%w: %s may not obtain %s: no pod with service account %s/%s runs on node %s",
				ErrPermissionDenied, caller, dec.Identity, dec.Workload.Namespace, dec.Workload.ServiceAccount, dec.NodeName)
		}
	}
	ttl, err := s.ttl(req.GetValidityDuration())
	if err != nil {
		return nil, caller, dec, err
	}
	if len(req.GetCsr()) > MaxCSRBytes {
		return nil, caller, dec, fmt.Errorf("%w: CSR is %d bytes, limit %d", ErrInvalidArgument, len(req.GetCsr()), MaxCSRBytes)
	}
	chainPEM, err := s.cfg.Authority.SignCSR([]byte(req.GetCsr()), dec.Identity, ttl)
	if err != nil {
		return nil, caller, dec, signError{err}
	}
	chain := splitPEM(chainPEM)
	chain = append(chain, splitPEM(s.cfg.Authority.RootsPEM())...)
	return &capb.IstioCertificateResponse{CertChain: chain}, caller, dec, nil
}

// ttl converts validity_duration (seconds) to the lifetime to ask SignCSR
// for, capped by Config.MaxTTL.
func (s *Server) ttl(seconds int64) (time.Duration, error) {
	if seconds < 0 {
		return 0, fmt.Errorf("%w: validity_duration %d is negative (0 selects the CA default)", ErrInvalidArgument, seconds)
	}
	const maxSeconds = int64(1<<63-1) / int64(time.Second)
	if seconds > maxSeconds {
		seconds = maxSeconds
	}
	ttl := time.Duration(seconds) * time.Second
	if s.cfg.MaxTTL > 0 && ttl > s.cfg.MaxTTL {
		ttl = s.cfg.MaxTTL
	}
	return ttl, nil
}

// BearerToken returns the token of the "authorization: Bearer <token>"
// call metadata.
func BearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return "", fmt.Errorf("%w: no authorization metadata; send \"authorization: Bearer <service account token>\"", ErrUnauthenticated)
	}
	if len(vals) > 1 {
		return "", fmt.Errorf("%w: %d authorization metadata values, want one", ErrUnauthenticated, len(vals))
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", fmt.Errorf("%w: authorization metadata is not \"Bearer <token>\"", ErrUnauthenticated)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", fmt.Errorf("%w: empty bearer token", ErrUnauthenticated)
	}
	return token, nil
}

// impersonatedIdentity returns the ImpersonatedIdentity metadata field, or
// "" when absent.
func impersonatedIdentity(req *capb.IstioCertificateRequest) (string, error) {
	v, ok := req.GetMetadata().GetFields()[MetadataImpersonatedIdentity]
	if !ok {
		return "", nil
	}
	if sv, isStr := v.GetKind().(*structpb.Value_StringValue); isStr {
		return sv.StringValue, nil
	}
	return "", fmt.Errorf("%w: metadata %s must be a string", ErrInvalidArgument, MetadataImpersonatedIdentity)
}

// splitPEM returns each PEM block of b re-encoded on its own.
func splitPEM(b []byte) []string {
	var out []string
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		out = append(out, string(pem.EncodeToMemory(blk)))
	}
}

// toStatus maps an error to the gRPC status the caller sees.
func toStatus(err error) *status.Status {
	msg := err.Error()
	switch {
	case errors.Is(err, ErrUnauthenticated):
		return status.New(codes.Unauthenticated, msg)
	case errors.Is(err, ErrPermissionDenied), errors.Is(err, ca.ErrIDMismatch):
		return status.New(codes.PermissionDenied, msg)
	case errors.Is(err, ErrInvalidArgument),
		errors.Is(err, ca.ErrInvalidCSR),
		errors.Is(err, ca.ErrBadCSRSignature),
		errors.Is(err, ca.ErrUnsupportedKey),
		errors.Is(err, ca.ErrForbiddenSAN),
		errors.Is(err, ca.ErrCARequested),
		errors.Is(err, ca.ErrInvalidTTL),
		errors.Is(err, ca.ErrNotSPIFFEID),
		errors.Is(err, ca.ErrWrongTrustDomain):
		return status.New(codes.InvalidArgument, msg)
	case errors.Is(err, ca.ErrCAExpired):
		return status.New(codes.FailedPrecondition, msg)
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, msg)
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, msg)
	default:
		// Transient: the apiserver could not be asked. Retryable.
		return status.New(codes.Unavailable, msg)
	}
}
