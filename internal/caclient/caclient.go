// Package caclient is ztunnel's client of istiod-lite's certificate service
// (DESIGN §3): an [identity.SignFunc] that sends each CSR to
// /istio.v1.auth.IstioCertificateService/CreateCertificate, plus the TLS and
// token plumbing ztunnel needs to reach istiod-lite on port 15012.
//
// # Wire format
//
// One unary CreateCertificate call per certificate, as Istio's ztunnel makes:
//
//	call metadata     authorization: Bearer <token>   the projected
//	                  ServiceAccount token, re-read from Config.TokenFile
//	                  on every call (the kubelet rotates it)
//	                  clusterid: <Config.ClusterID>   when set
//	csr               the PEM CSR for the pod identity
//	validity_duration Config.ValidityDuration in seconds (default 24 h)
//	metadata          {"ImpersonatedIdentity": "spiffe://<td>/ns/<ns>/sa/<sa>"}
//	                  the pod identity ztunnel asks for on the pod's behalf
//
// The response's cert_chain holds PEM certificates, the leaf first and the
// root(s) last. The client fails closed: the chain must be non-empty, end in
// at least one self-signed root, verify up to those roots now, carry exactly
// the requested SPIFFE ID as its leaf's URI SAN, and certify the CSR's own
// public key. Anything else is [ErrInvalidResponse].
//
// gRPC errors are returned wrapped (status.Code still finds the code) with a
// hint at what to check; see [Client.Sign].
//
// # Connection
//
// [NewTransportCredentials] builds TLS 1.3 credentials that trust the roots
// of a PEM file (Istio's /var/run/secrets/istio/root-cert.pem) and expect a
// fixed server name (istiod.istio-system.svc); the file is re-read when it
// changes. [TokenCredentials] attaches the same bearer token to every RPC of
// a connection, for the xDS stream.
package caclient

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	capb "github.com/ambientmesh/ambient/proto/ca"
)

// Defaults of [Config].
const (
	DefaultValidityDuration = 24 * time.Hour
	DefaultTimeout          = 10 * time.Second
	// DefaultTokenFile is where Istio's ztunnel DaemonSet mounts its
	// projected token (audience istio-ca).
	DefaultTokenFile = "/var/run/secrets/tokens/istio-token"
)

// MetadataImpersonatedIdentity is the request metadata field naming the
// identity a node proxy asks for on a pod's behalf (as in Istio).
const MetadataImpersonatedIdentity = "ImpersonatedIdentity"

// maxTokenBytes bounds the token file read.
const maxTokenBytes = 64 << 10

var (
	// ErrNoToken means the token file is missing, unreadable or empty; no
	// request was sent.
	ErrNoToken = errors.New("caclient: no service account token")
	// ErrInvalidResponse means the CA answered with a chain the client
	// refuses to use.
	ErrInvalidResponse = errors.New("caclient: invalid certificate response")
)

// Metrics receives one event per CreateCertificate attempt; implementations
// must not block.
type Metrics interface {
	// Request reports an attempt's duration and its error, nil on success.
	Request(d time.Duration, err error)
}

type nopMetrics struct{}

func (nopMetrics) Request(time.Duration, error) {}

// Config configures a [Client].
type Config struct {
	// Conn is the connection to istiod-lite, with TLS transport
	// credentials (see [NewTransportCredentials]). It must not carry
	// per-RPC credentials that set authorization: the client sets it.
	// Required.
	Conn *grpc.ClientConn
	// TokenFile holds the ServiceAccount token sent as bearer token; it
	// is read on every call. Required.
	TokenFile string
	// ClusterID, when set, is sent as "clusterid" call metadata.
	ClusterID string
	// ValidityDuration is the lifetime asked for (default 24 h); the CA
	// may cap it.
	ValidityDuration time.Duration
	// Timeout bounds each call (default 10 s).
	Timeout time.Duration
	// Metrics defaults to a no-op.
	Metrics Metrics
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Client signs CSRs with istiod-lite's CA. It is safe for concurrent use.
type Client struct {
	cfg Config
	ca  capb.IstioCertificateServiceClient
	log *slog.Logger
}

// New checks cfg and returns a Client; it does not connect.
func New(cfg Config) (*Client, error) {
	switch {
	case cfg.Conn == nil:
		return nil, errors.New("caclient: Config.Conn is required")
	case cfg.TokenFile == "":
		return nil, errors.New("caclient: Config.TokenFile is required")
	case cfg.ValidityDuration < 0:
		return nil, fmt.Errorf("caclient: Config.ValidityDuration %s is negative", cfg.ValidityDuration)
	}
	if cfg.ValidityDuration == 0 {
		cfg.ValidityDuration = DefaultValidityDuration
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, ca: capb.NewIstioCertificateServiceClient(cfg.Conn), log: cfg.Logger}, nil
}

// Sign implements identity.SignFunc: it asks the CA to certify csrPEM for id
// and returns the verified chain (leaf first, without roots) and the roots.
func (c *Client) Sign(ctx context.Context, id spiffeid.ID, csrPEM []byte) (chainPEM, rootsPEM []byte, err error) {
	start := time.Now()
	defer func() { c.cfg.Metrics.Request(time.Since(start), err) }()

	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("caclient: %s: %w", id, err)
	}
	token, err := ReadToken(c.cfg.TokenFile)
	if err != nil {
		return nil, nil, err
	}
	md, err := structpb.NewStruct(map[string]any{MetadataImpersonatedIdentity: id.String()})
	if err != nil {
		return nil, nil, fmt.Errorf("caclient: %s: %w", id, err)
	}
	req := &capb.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(c.cfg.ValidityDuration / time.Second),
		Metadata:         md,
	}
	pairs := []string{"authorization", "Bearer " + token}
	if c.cfg.ClusterID != "" {
		pairs = append(pairs, "clusterid", c.cfg.ClusterID)
	}
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, pairs...), c.cfg.Timeout)
	defer cancel()
	resp, err := c.ca.CreateCertificate(ctx, req)
	if err != nil {
		return nil, nil, explain(err, id, c.cfg.Conn.Target(), c.cfg.Timeout)
	}
	chainPEM, rootsPEM, err = CheckResponse(id, csr, resp.GetCertChain(), time.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("%w; the CA at %s returned a certificate ztunnel will not use (is --ca-address really istiod-lite?)", err, c.cfg.Conn.Target())
	}
	c.log.Debug("caclient: certificate issued", "identity", id.String())
	return chainPEM, rootsPEM, nil
}

// ReadToken reads a bearer token file, refusing a missing or empty one.
func ReadToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: token file: %w; mount a projected ServiceAccount token with audience istio-ca there, or point --token-file at one", ErrNoToken, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("%w: token file %s: %w", ErrNoToken, path, err)
	}
	if len(b) > maxTokenBytes {
		return "", fmt.Errorf("%w: token file %s is over %d bytes; it should hold one JWT", ErrNoToken, path, maxTokenBytes)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%w: token file %s is empty; the kubelet writes the projected token there (check the volume's serviceAccountToken source)", ErrNoToken, path)
	}
	return tok, nil
}

// explain wraps a CreateCertificate error with what to check.
func explain(err error, id spiffeid.ID, target string, timeout time.Duration) error {
	var hint string
	switch status.Code(err) {
	case codes.PermissionDenied:
		hint = "istiod-lite refused: the identity has no pod on this node, or this ztunnel's token is not a node-proxy (istio-system/ztunnel) token bound to a pod on its node"
	case codes.Unauthenticated:
		hint = "istiod-lite rejected the token: check --token-file holds a current projected ServiceAccount token with audience istio-ca"
	case codes.InvalidArgument:
		hint = "istiod-lite rejected the request as malformed (CSR, identity or lifetime); check --trust-domain matches the CA's"
	case codes.FailedPrecondition:
		hint = "istiod-lite cannot sign: its CA certificate has expired; rotate the CA"
	case codes.DeadlineExceeded:
		hint = fmt.Sprintf("no answer within %s; check istiod-lite is running and reachable", timeout)
	case codes.Unavailable:
		hint = "cannot reach istiod-lite: check --ca-address, the network, and that --ca-root-file holds the root that signed istiod-lite's serving certificate (TLS)"
	case codes.Unimplemented:
		hint = "the server has no IstioCertificateService: check --ca-address points at istiod-lite's port 15012"
	default:
		hint = "check istiod-lite's logs"
	}
	return fmt.Errorf("caclient: CreateCertificate for %s at %s: %w; %s", id, target, err, hint)
}

func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("CSR is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	return csr, nil
}

// CheckResponse validates a cert_chain returned for id and csr at time now
// and splits it into the PEM chain (leaf and intermediates) and the PEM
// roots, the trailing self-signed certificates. See the package doc for the
// checks.
func CheckResponse(id spiffeid.ID, csr *x509.CertificateRequest, certChain []string, now time.Time) (chainPEM, rootsPEM []byte, err error) {
	bad := func(format string, args ...any) ([]byte, []byte, error) {
		return nil, nil, fmt.Errorf("%w for %s: %s", ErrInvalidResponse, id, fmt.Sprintf(format, args...))
	}
	if len(certChain) == 0 {
		return bad("empty cert_chain")
	}
	var certs []*x509.Certificate
	for i, elem := range certChain {
		rest := []byte(elem)
		n := 0
		for {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" {
				return bad("cert_chain[%d] holds a %q PEM block", i, blk.Type)
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return bad("cert_chain[%d]: %v", i, err)
			}
			certs = append(certs, c)
			n++
		}
		if n == 0 {
			return bad("cert_chain[%d] holds no PEM certificate", i)
		}
	}
	// Roots: the self-signed certificates at the end, after at least the leaf.
	split := len(certs)
	for split > 1 && selfSigned(certs[split-1]) {
		split--
	}
	if split == len(certs) {
		return bad("cert_chain does not end in a self-signed root certificate")
	}
	chain, roots := certs[:split], certs[split:]
	bundle := x509bundle.FromX509Authorities(id.TrustDomain(), roots)
	got, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	if err != nil {
		return bad("%v", err)
	}
	if got != id {
		return bad("leaf certifies %s, not the requested identity", got)
	}
	pub, ok := chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(csr.PublicKey) {
		return bad("leaf's public key is not the CSR's")
	}
	return encode(chain), encode(roots), nil
}

func selfSigned(c *x509.Certificate) bool {
	return c.IsCA && string(c.RawSubject) == string(c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

func encode(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
