// Package certdir writes and loads the certificate directory shared by every
// proxy pair in the tunnel benchmark (cmd/meshbench).
//
// Layout of a certificate directory (all PEM; keys are PKCS#8, ECDSA P-256 as
// minted by the mesh CA):
//
//	ca.pem              trust bundle (root certificates)
//	client.pem          client SVID chain, leaf first (spiffe://<td>/ns/bench/sa/client)
//	client-key.pem      client private key
//	server.pem          server SVID chain, leaf first (spiffe://<td>/ns/bench/sa/server)
//	server-key.pem      server private key
//	client-combined.pem client chain followed by its key (haproxy "crt" wants one file)
//	server-combined.pem server chain followed by its key
//
// The first five names are a contract with the hbone-client/hbone-server
// subcommands; the combined files are extras for the C proxies.
package certdir

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// File names inside a certificate directory.
const (
	CAFile             = "ca.pem"
	ClientCertFile     = "client.pem"
	ClientKeyFile      = "client-key.pem"
	ServerCertFile     = "server.pem"
	ServerKeyFile      = "server-key.pem"
	ClientCombinedFile = "client-combined.pem"
	ServerCombinedFile = "server-combined.pem"
)

// Authority mints SVIDs; *ca.Authority from internal/ca satisfies it.
type Authority interface {
	NewSVID(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error)
	RootsPEM() []byte
}

// ClientID and ServerID return the SPIFFE IDs of the two benchmark workloads
// in trust domain td.
func ClientID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/bench/sa/client")
}

// ServerID is the server-side counterpart of ClientID.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/bench/sa/server")
}

// Write mints a client and a server SVID from a (valid for ttl) in trust
// domain td and writes the layout described in the package comment to dir,
// creating it if needed. Key files are written with mode 0600.
func Write(dir string, a Authority, td spiffeid.TrustDomain, ttl time.Duration) error {
	roots := a.RootsPEM()
	if len(roots) == 0 {
		return errors.New("certdir: authority returned an empty trust bundle")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("certdir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, CAFile), roots, 0o644); err != nil {
		return fmt.Errorf("certdir: %w", err)
	}
	for _, w := range []struct {
		id                  spiffeid.ID
		cert, key, combined string
	}{
		{ClientID(td), ClientCertFile, ClientKeyFile, ClientCombinedFile},
		{ServerID(td), ServerCertFile, ServerKeyFile, ServerCombinedFile},
	} {
		svid, err := a.NewSVID(w.id, ttl)
		if err != nil {
			return fmt.Errorf("certdir: mint %s: %w", w.id, err)
		}
		certPEM, keyPEM, err := svid.Marshal()
		if err != nil {
			return fmt.Errorf("certdir: marshal %s: %w", w.id, err)
		}
		combined := append(append([]byte{}, certPEM...), keyPEM...)
		for _, f := range []struct {
			name string
			data []byte
			mode os.FileMode
		}{{w.cert, certPEM, 0o644}, {w.key, keyPEM, 0o600}, {w.combined, combined, 0o600}} {
			if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
				return fmt.Errorf("certdir: %w", err)
			}
		}
	}
	return nil
}

// Role selects which workload's key pair to load.
type Role int

// The two workloads of the benchmark.
const (
	Client Role = iota
	Server
)

func (r Role) files() (cert, key string) {
	if r == Server {
		return ServerCertFile, ServerKeyFile
	}
	return ClientCertFile, ClientKeyFile
}

// Load reads the key pair of role r and the trust bundle from dir.
func Load(dir string, r Role) (tls.Certificate, *x509.CertPool, error) {
	certFile, keyFile := r.files()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("certdir: load %s key pair from %s: %w", certFile, dir, err)
	}
	pool, err := LoadRoots(dir)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return pair, pool, nil
}

// LoadRoots reads the trust bundle ca.pem from dir.
func LoadRoots(dir string) (*x509.CertPool, error) {
	data, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("certdir: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("certdir: no certificates in %s", filepath.Join(dir, CAFile))
	}
	return pool, nil
}
