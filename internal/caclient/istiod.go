package caclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Defaults of [TLSOptions], as Istio's.
const (
	DefaultRootFile   = "/var/run/secrets/istio/root-cert.pem"
	DefaultServerName = "istiod.istio-system.svc"
)

// maxRootFileBytes bounds the root file read.
const maxRootFileBytes = 1 << 20

// TLSOptions configure [NewTransportCredentials].
type TLSOptions struct {
	// RootFile is the PEM file of the roots that sign istiod-lite's
	// serving certificate (default DefaultRootFile). It is read now and
	// again before a handshake whenever its size or modification time
	// changed; a changed file that does not parse keeps the previous roots.
	RootFile string
	// ServerName is the DNS name istiod-lite's certificate must carry,
	// also sent as SNI (default DefaultServerName), whatever address is
	// dialled.
	ServerName string
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// NewTransportCredentials returns gRPC client credentials for istiod-lite:
// TLS 1.3, server certificate verified against the roots of RootFile for
// ServerName. It fails if RootFile cannot be read or holds no certificate.
func NewTransportCredentials(opts TLSOptions) (credentials.TransportCredentials, error) {
	if opts.RootFile == "" {
		opts.RootFile = DefaultRootFile
	}
	if opts.ServerName == "" {
		opts.ServerName = DefaultServerName
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r := &reloadingCreds{opts: opts}
	if err := r.reloadLocked(); err != nil {
		return nil, err
	}
	return r, nil
}

// reloadingCreds is TLS credentials whose roots follow a file.
type reloadingCreds struct {
	opts TLSOptions

	mu    sync.Mutex // guards the fields below
	size  int64
	mtime time.Time
	creds credentials.TransportCredentials
}

// current returns the credentials for the file's current roots.
func (r *reloadingCreds) current() credentials.TransportCredentials {
	r.mu.Lock()
	defer r.mu.Unlock()
	if fi, err := os.Stat(r.opts.RootFile); err == nil && (fi.Size() != r.size || !fi.ModTime().Equal(r.mtime)) {
		if err := r.reloadLocked(); err != nil {
			r.opts.Logger.Warn("caclient: root file changed but cannot be used; keeping the previous roots", "file", r.opts.RootFile, "err", err)
		} else {
			r.opts.Logger.Info("caclient: istiod root certificates reloaded", "file", r.opts.RootFile)
		}
	}
	return r.creds
}

func (r *reloadingCreds) reloadLocked() error {
	f, err := os.Open(r.opts.RootFile)
	if err != nil {
		return fmt.Errorf("caclient: istiod root certificates: %w; mount the istio-ca-root-cert ConfigMap there, or point --ca-root-file at the PEM root of istiod-lite's CA", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("caclient: istiod root certificates: %w", err)
	}
	if fi.Size() > maxRootFileBytes {
		return fmt.Errorf("caclient: istiod root certificates: %s is over %d bytes", r.opts.RootFile, maxRootFileBytes)
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil && fi.Size() > 0 {
		return fmt.Errorf("caclient: istiod root certificates: read %s: %w", r.opts.RootFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return fmt.Errorf("caclient: istiod root certificates: %s holds no PEM certificate; it should hold istiod-lite's CA root (root-cert.pem)", r.opts.RootFile)
	}
	r.size, r.mtime = fi.Size(), fi.ModTime()
	r.creds = credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		ServerName: r.opts.ServerName,
	})
	return nil
}

// ClientHandshake implements credentials.TransportCredentials.
func (r *reloadingCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, info, err := r.current().ClientHandshake(ctx, authority, conn)
	if err != nil {
		return nil, nil, fmt.Errorf("caclient: TLS handshake with %s (expecting a certificate for %s signed by a root in %s): %w", authority, r.opts.ServerName, r.opts.RootFile, err)
	}
	return c, info, nil
}

// ServerHandshake implements credentials.TransportCredentials; these are
// client credentials only.
func (r *reloadingCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("caclient: client-only credentials used by a server")
}

// Info implements credentials.TransportCredentials.
func (r *reloadingCreds) Info() credentials.ProtocolInfo { return r.current().Info() }

// Clone implements credentials.TransportCredentials.
func (r *reloadingCreds) Clone() credentials.TransportCredentials {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &reloadingCreds{opts: r.opts, size: r.size, mtime: r.mtime, creds: r.creds.Clone()}
}

// OverrideServerName implements credentials.TransportCredentials; the
// server name is fixed by TLSOptions.
//
// Deprecated: as in gRPC.
func (r *reloadingCreds) OverrideServerName(string) error {
	return errors.New("caclient: set TLSOptions.ServerName instead")
}

// TokenCredentials is per-RPC credentials that send the token of a file,
// re-read for every RPC (or stream), as "authorization: Bearer <token>".
// They require transport security. A missing or empty file fails the RPC
// with codes.Unauthenticated.
type TokenCredentials struct {
	File string
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (c TokenCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	tok, err := ReadToken(c.File)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (TokenCredentials) RequireTransportSecurity() bool { return true }
