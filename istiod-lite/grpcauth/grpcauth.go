// Package grpcauth authenticates xDS clients of istiod-lite's gRPC port.
//
// Like Istio's xDS server, every stream must carry a Kubernetes
// ServiceAccount token as "authorization: Bearer <token>" metadata. The
// token is checked by the same [caserver.Authenticator] the CA uses
// (TokenReview, audience istio-ca) and the caller must then be one of the
// node-proxy ServiceAccounts (istio-system/ztunnel by default) or a
// waypoint's ServiceAccount (Config.IsWaypoint: the account istiod-lite's
// waypoint controller created for a Gateway of class istio-waypoint): the
// workload API describes every workload of the mesh, so nothing else may
// read it.
//
// A stream without a valid token fails with codes.Unauthenticated, one from
// another ServiceAccount with codes.PermissionDenied, and one whose token
// could not be checked (apiserver unreachable) with codes.Unavailable; each
// message says why. The interceptor applies to every streaming method, so a
// streaming service added later is closed by default; unary methods (the CA)
// authenticate themselves.
package grpcauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/ambientmesh/ambient/istiod-lite/caserver"
)

// authTimeout bounds the token check of one stream.
const authTimeout = 10 * time.Second

// Config configures the interceptor.
type Config struct {
	// Authenticator checks bearer tokens. Required.
	Authenticator caserver.Authenticator
	// NodeProxies may open streams; nil means istio-system/ztunnel. Only
	// Namespace and ServiceAccount are compared.
	NodeProxies []identity.Workload
	// IsWaypoint reports whether a ServiceAccount is a waypoint's (nil:
	// none is). It is asked per stream, so a waypoint deleted since cannot
	// open new streams.
	IsWaypoint func(namespace, serviceAccount string) bool
	// Logger receives one line per refused stream; nil discards.
	Logger *slog.Logger
}

// callerKey is the context key of the authenticated Caller.
type callerKey struct{}

// CallerFrom returns the caller that the interceptor authenticated.
func CallerFrom(ctx context.Context) (caserver.Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(caserver.Caller)
	return c, ok
}

// Authorize is the authorization decision: nil if caller runs as one of
// proxies or as a waypoint (isWaypoint may be nil), else an error wrapping
// caserver.ErrPermissionDenied.
func Authorize(caller caserver.Caller, proxies []identity.Workload, isWaypoint func(namespace, serviceAccount string) bool) error {
	for _, w := range proxies {
		if w.Namespace == caller.Namespace && w.ServiceAccount == caller.ServiceAccount {
			return nil
		}
	}
	if isWaypoint != nil && isWaypoint(caller.Namespace, caller.ServiceAccount) {
		return nil
	}
	names := make([]string, len(proxies))
	for i, w := range proxies {
		names[i] = w.Namespace + "/" + w.ServiceAccount
	}
	return fmt.Errorf("%w: %s may not subscribe to xDS: only node proxies (%s) and waypoints may", caserver.ErrPermissionDenied, caller, strings.Join(names, ", "))
}

// StreamInterceptor returns the interceptor; see the package doc.
func StreamInterceptor(cfg Config) (grpc.StreamServerInterceptor, error) {
	if cfg.Authenticator == nil {
		return nil, errors.New("grpcauth: Config.Authenticator is required")
	}
	proxies := cfg.NodeProxies
	if proxies == nil {
		proxies = []identity.Workload{{Namespace: caserver.DefaultNodeProxyNamespace, ServiceAccount: caserver.DefaultNodeProxyServiceAccount}}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		caller, err := authenticate(ss.Context(), cfg.Authenticator, proxies, cfg.IsWaypoint)
		if err != nil {
			st := toStatus(err)
			log.Info("grpcauth: stream refused", "method", info.FullMethod, "caller", caller.String(), "code", st.Code().String(), "reason", st.Message())
			return st.Err()
		}
		return handler(srv, &wrappedStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callerKey{}, caller)})
	}, nil
}

func authenticate(ctx context.Context, a caserver.Authenticator, proxies []identity.Workload, isWaypoint func(string, string) bool) (caserver.Caller, error) {
	token, err := caserver.BearerToken(ctx)
	if err != nil {
		return caserver.Caller{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, authTimeout)
	defer cancel()
	caller, err := a.Authenticate(ctx, token)
	if err != nil {
		return caller, err
	}
	return caller, Authorize(caller, proxies, isWaypoint)
}

func toStatus(err error) *status.Status {
	switch {
	case errors.Is(err, caserver.ErrUnauthenticated):
		return status.New(codes.Unauthenticated, "xds: "+err.Error())
	case errors.Is(err, caserver.ErrPermissionDenied):
		return status.New(codes.PermissionDenied, "xds: "+err.Error())
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "xds: "+err.Error())
	default:
		return status.New(codes.Unavailable, "xds: cannot check the token, retry: "+err.Error())
	}
}

// wrappedStream carries the caller in its context.
type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }
