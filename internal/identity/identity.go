// Package identity is workload identity for the mesh (DESIGN §3–4): SPIFFE
// workload IDs, a rotating source of X509-SVIDs, and the mutual-TLS
// configurations HBONE uses.
//
// A workload's identity is the SPIFFE ID
//
//	spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
//
// built by [ForWorkload] and taken apart by [ParseWorkload]. The namespace
// must be a Kubernetes DNS-1123 label and the service account a DNS-1123
// subdomain; anything else is refused with [ErrNotWorkloadID],
// [ErrInvalidNamespace] or [ErrInvalidServiceAccount].
//
// A [Source] holds the current X509-SVID and trust bundle for one identity,
// fetched through a caller-supplied function (a CSR sent to istiod-lite's
// CA), and renews it at half its lifetime. It never hands out an expired
// SVID. [StaticSource] serves fixed material for tests and tools.
//
// [ServerConfig] and [ClientConfig] build TLS 1.3-only configurations that
// take the certificate from a source on every handshake (so rotation applies
// to new connections without restarts) and verify the peer's SVID against
// the bundle: the server requires a client SVID from its trust domain, the
// client requires the server's exact SPIFFE ID. [PeerID] returns the
// verified peer identity of a completed connection. Verification failures
// wrap one of the ErrPeer* errors.
package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain used when none is configured.
const DefaultTrustDomain = "cluster.local"

var (
	// ErrNotWorkloadID means a SPIFFE ID does not have the form
	// spiffe://<td>/ns/<namespace>/sa/<service-account>.
	ErrNotWorkloadID = errors.New("identity: not a workload SPIFFE ID (want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")
	// ErrInvalidNamespace means a namespace is not a DNS-1123 label.
	ErrInvalidNamespace = errors.New("identity: invalid namespace (want a DNS-1123 label: at most 63 of [a-z0-9-], starting and ending alphanumeric)")
	// ErrInvalidServiceAccount means a service account name is not a
	// DNS-1123 subdomain.
	ErrInvalidServiceAccount = errors.New("identity: invalid service account (want a DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels)")
	// ErrInvalidTrustDomain means the trust domain is empty.
	ErrInvalidTrustDomain = errors.New("identity: empty trust domain")
)

// Workload is a workload identity taken apart.
type Workload struct {
	TrustDomain    spiffeid.TrustDomain
	Namespace      string
	ServiceAccount string
}

// ForWorkload returns spiffe://<td>/ns/<namespace>/sa/<serviceAccount>.
func ForWorkload(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if err := (Workload{TrustDomain: td, Namespace: namespace, ServiceAccount: serviceAccount}).Validate(); err != nil {
		return spiffeid.ID{}, err
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil { // unreachable after Validate; kept so a change there cannot go unnoticed
		return spiffeid.ID{}, fmt.Errorf("identity: workload %s/%s in %q: %w", namespace, serviceAccount, td, err)
	}
	return id, nil
}

// ParseWorkload takes a workload SPIFFE ID apart. Errors wrap
// ErrNotWorkloadID, and ErrInvalidNamespace or ErrInvalidServiceAccount when
// the shape is right but a name is not.
func ParseWorkload(id spiffeid.ID) (Workload, error) {
	if id.IsZero() {
		return Workload{}, fmt.Errorf("%w: empty ID", ErrNotWorkloadID)
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" {
		return Workload{}, fmt.Errorf("%w: got %s", ErrNotWorkloadID, id)
	}
	w := Workload{TrustDomain: id.TrustDomain(), Namespace: seg[1], ServiceAccount: seg[3]}
	if err := w.Validate(); err != nil {
		return Workload{}, fmt.Errorf("%w: %s: %w", ErrNotWorkloadID, id, err)
	}
	return w, nil
}

// ParseWorkloadString parses s as a SPIFFE ID and then as a workload ID.
func ParseWorkloadString(s string) (Workload, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Workload{}, fmt.Errorf("%w: %q: %w", ErrNotWorkloadID, s, err)
	}
	return ParseWorkload(id)
}

// Validate reports whether w names a valid workload identity.
func (w Workload) Validate() error {
	switch {
	case w.TrustDomain.IsZero():
		return ErrInvalidTrustDomain
	case !isDNS1123Label(w.Namespace):
		return fmt.Errorf("%w: %q", ErrInvalidNamespace, w.Namespace)
	case !isDNS1123Subdomain(w.ServiceAccount):
		return fmt.Errorf("%w: %q", ErrInvalidServiceAccount, w.ServiceAccount)
	}
	return nil
}

// ID returns the SPIFFE ID of w, or the zero ID if w is not valid (use
// ForWorkload to get the reason).
func (w Workload) ID() spiffeid.ID {
	id, err := ForWorkload(w.TrustDomain, w.Namespace, w.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// String returns the SPIFFE ID of w as a string ("" if w is not valid).
func (w Workload) String() string { return w.ID().String() }

// isDNS1123Label reports whether s matches [a-z0-9]([-a-z0-9]*[a-z0-9])? and
// is at most 63 characters long (Kubernetes namespace names).
func isDNS1123Label(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case c == '-' && i != 0 && i != len(s)-1:
		default:
			return false
		}
	}
	return true
}

// isDNS1123Subdomain reports whether s is at most 253 characters of
// dot-separated DNS-1123 labels (Kubernetes service account names).
func isDNS1123Subdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if !isDNS1123Label(label) {
			return false
		}
	}
	return true
}
