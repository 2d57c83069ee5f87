package caserver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Extra keys the Kubernetes service-account authenticator puts into
// TokenReview status.user.extra for a token bound to a pod (the node keys
// since Kubernetes 1.32, when ServiceAccountTokenPodNodeInfo went GA).
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraNodeUID  = "authentication.kubernetes.io/node-uid"
)

// MetadataImpersonatedIdentity is the request metadata key (a string field of
// IstioCertificateRequest.metadata) with which a node proxy asks for a
// certificate of a workload on its node, as Istio's ztunnel does.
const MetadataImpersonatedIdentity = "ImpersonatedIdentity"

// Reasons a request is refused. Errors returned by this package wrap one of
// them and say what was wrong; the gRPC layer maps them to status codes.
var (
	// ErrUnauthenticated: no bearer token, or the token was rejected
	// (forged, expired, wrong audience, deleted ServiceAccount or pod).
	// Authenticator implementations wrap it when the token itself is bad;
	// any other Authenticator error is treated as a transient failure.
	ErrUnauthenticated = errors.New("caserver: unauthenticated")
	// ErrPermissionDenied: the caller may not hold the requested identity.
	ErrPermissionDenied = errors.New("caserver: permission denied")
	// ErrInvalidArgument: the request is malformed (bad identity, CSR,
	// metadata or lifetime).
	ErrInvalidArgument = errors.New("caserver: invalid argument")
)

// Caller is an authenticated caller: the ServiceAccount its token was issued
// to and, for a token bound to a pod, that pod and its node.
type Caller struct {
	Namespace      string
	ServiceAccount string
	PodName        string // empty unless the token is bound to a pod
	PodUID         string
	NodeName       string // empty unless the token carries node info
	NodeUID        string
}

// String returns "<namespace>/<serviceaccount>" plus the pod and node when
// known, for log lines and error messages.
func (c Caller) String() string {
	s := "serviceaccount " + c.Namespace + "/" + c.ServiceAccount
	if c.PodName != "" {
		s += " (pod " + c.Namespace + "/" + c.PodName
		if c.NodeName != "" {
			s += " on node " + c.NodeName
		}
		s += ")"
	}
	return s
}

// Authenticator turns a bearer token into a Caller. The production
// implementation is [TokenReviewer].
type Authenticator interface {
	// Authenticate validates token. A token that is not valid must yield
	// an error wrapping ErrUnauthenticated; other errors mean the check
	// could not be made (e.g. the apiserver is unreachable).
	Authenticate(ctx context.Context, token string) (Caller, error)
}

// PodLister answers the node-authorization question. The production
// implementation is [KubePods].
type PodLister interface {
	// HasPodOnNode reports whether at least one live pod (not Succeeded or
	// Failed) running as serviceaccount namespace/serviceAccount is bound
	// to node.
	HasPodOnNode(ctx context.Context, node, namespace, serviceAccount string) (bool, error)
}

// ParseServiceAccountUsername parses a Kubernetes service-account username,
// system:serviceaccount:<namespace>:<name>.
func ParseServiceAccountUsername(username string) (namespace, name string, err error) {
	const prefix = "system:serviceaccount:"
	rest, ok := strings.CutPrefix(username, prefix)
	if !ok {
		return "", "", fmt.Errorf("%w: user %q is not a service account (want %s<namespace>:<name>)", ErrUnauthenticated, username, prefix)
	}
	namespace, name, ok = strings.Cut(rest, ":")
	if !ok || namespace == "" || name == "" || strings.Contains(name, ":") {
		return "", "", fmt.Errorf("%w: malformed service account user %q", ErrUnauthenticated, username)
	}
	return namespace, name, nil
}

// CallerFromUserInfo builds a Caller from the username and extra of an
// authenticated Kubernetes user (TokenReview status.user).
func CallerFromUserInfo(username string, extra map[string][]string) (Caller, error) {
	ns, sa, err := ParseServiceAccountUsername(username)
	if err != nil {
		return Caller{}, err
	}
	first := func(k string) string {
		if v := extra[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	return Caller{
		Namespace:      ns,
		ServiceAccount: sa,
		PodName:        first(ExtraPodName),
		PodUID:         first(ExtraPodUID),
		NodeName:       first(ExtraNodeName),
		NodeUID:        first(ExtraNodeUID),
	}, nil
}

// Decision is what a request may obtain, before the node check.
type Decision struct {
	// Identity is the SPIFFE ID to sign for.
	Identity spiffeid.ID
	// Workload is Identity taken apart.
	Workload identity.Workload
	// NodeName is set when the caller impersonates another identity: the
	// certificate may be issued only if Workload has a pod on this node.
	NodeName string
}

// Policy decides which identity a caller may obtain. It is a pure function
// of its inputs; see [Policy.Decide].
type Policy struct {
	TrustDomain spiffeid.TrustDomain
	// NodeProxies are the ServiceAccounts (ztunnel) allowed to impersonate
	// the workloads on their node.
	NodeProxies []identity.Workload
}

// isNodeProxy reports whether c runs as one of the node-proxy accounts.
func (p Policy) isNodeProxy(c Caller) bool {
	for _, w := range p.NodeProxies {
		if w.Namespace == c.Namespace && w.ServiceAccount == c.ServiceAccount {
			return true
		}
	}
	return false
}

// Decide returns the identity caller may obtain when it asks to impersonate
// impersonated ("" for none):
//
//   - no impersonation, or impersonating itself: the caller's own identity;
//   - impersonating another workload identity: only a node proxy whose token
//     names its node may, and the decision carries that node for the pod
//     check;
//   - anything else is refused with ErrPermissionDenied, or
//     ErrInvalidArgument for an identity that is not a workload ID of this
//     trust domain.
func (p Policy) Decide(caller Caller, impersonated string) (Decision, error) {
	own, err := identity.ForWorkload(p.TrustDomain, caller.Namespace, caller.ServiceAccount)
	if err != nil {
		return Decision{}, fmt.Errorf("%w: caller %s has no valid workload identity: %w", ErrPermissionDenied, caller, err)
	}
	if impersonated == "" || impersonated == own.String() {
		w, _ := identity.ParseWorkload(own)
		return Decision{Identity: own, Workload: w}, nil
	}
	w, err := identity.ParseWorkloadString(impersonated)
	if err != nil {
		return Decision{}, fmt.Errorf("%w: %s %q: %w", ErrInvalidArgument, MetadataImpersonatedIdentity, impersonated, err)
	}
	if w.TrustDomain != p.TrustDomain {
		return Decision{}, fmt.Errorf("%w: %s %s is outside trust domain %q", ErrInvalidArgument, MetadataImpersonatedIdentity, impersonated, p.TrustDomain)
	}
	if !p.isNodeProxy(caller) {
		return Decision{}, fmt.Errorf("%w: %s may not impersonate %s: only node proxies (%s) may set %s",
			ErrPermissionDenied, caller, impersonated, p.nodeProxyList(), MetadataImpersonatedIdentity)
	}
	if caller.NodeName == "" {
		return Decision{}, fmt.Errorf("%w: %s asks for %s but its token names no node; use a projected token bound to the ztunnel pod (Kubernetes >= 1.32)",
			ErrPermissionDenied, caller, impersonated)
	}
	return Decision{Identity: w.ID(), Workload: w, NodeName: caller.NodeName}, nil
}

func (p Policy) nodeProxyList() string {
	if len(p.NodeProxies) == 0 {
		return "none configured"
	}
	s := make([]string, len(p.NodeProxies))
	for i, w := range p.NodeProxies {
		s[i] = w.Namespace + "/" + w.ServiceAccount
	}
	return strings.Join(s, ", ")
}
