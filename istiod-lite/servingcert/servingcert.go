// Package servingcert is the source of istiod-lite's own TLS serving
// certificate on the gRPC port (15012): a certificate for istiod.<ns>.svc
// and the other configured names, issued in-process by the mesh CA, so that
// ztunnel can verify it against the published istio-ca-root-cert.
//
// [New] issues the first certificate before returning; [Source.Run] issues
// a fresh one when half of the current one's lifetime has passed (retrying
// every RetryDelay on failure); [Source.GetCertificate] plugs into
// tls.Config and always returns the current one.
package servingcert

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ambientmesh/ambient/internal/ca"
)

// Defaults of [Config].
const (
	DefaultTTL        = 24 * time.Hour
	DefaultRetryDelay = 10 * time.Second
)

// Config configures a [Source].
type Config struct {
	// Authority issues the certificates. Required.
	Authority *ca.Authority
	// Names are the SANs: DNS names, or IP addresses in textual form.
	// At least one is required.
	Names []string
	// TTL is each certificate's lifetime (default 24 h).
	TTL time.Duration
	// RetryDelay spaces retries after a failed issuance (default 10 s).
	RetryDelay time.Duration
	// Clock defaults to time.Now.
	Clock func() time.Time
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Source holds the current serving certificate.
type Source struct {
	cfg Config
	dns []string
	ips []net.IP
	log *slog.Logger
	// mu guards cert.
	mu   sync.RWMutex
	cert *tls.Certificate
}

// New checks cfg and issues the first certificate.
func New(cfg Config) (*Source, error) {
	if cfg.Authority == nil {
		return nil, errors.New("servingcert: Config.Authority is required")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dns, ips := SplitNames(cfg.Names)
	if len(dns)+len(ips) == 0 {
		return nil, errors.New("servingcert: Config.Names is empty")
	}
	s := &Source{cfg: cfg, dns: dns, ips: ips, log: log}
	if err := s.issue(); err != nil {
		return nil, err
	}
	return s, nil
}

// SplitNames separates IP addresses from DNS names, dropping empty entries
// and duplicates.
func SplitNames(names []string) (dns []string, ips []net.IP) {
	seen := map[string]bool{}
	for _, n := range names {
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	return dns, ips
}

func (s *Source) issue() error {
	c, err := s.cfg.Authority.IssueServingCertificate(s.dns, s.ips, s.cfg.TTL)
	if err != nil {
		return fmt.Errorf("servingcert: issue for %v %v: %w", s.dns, s.ips, err)
	}
	s.mu.Lock()
	s.cert = &c
	s.mu.Unlock()
	s.log.Info("servingcert: issued serving certificate", "dns", s.dns, "ips", fmt.Sprint(s.ips), "notAfter", c.Leaf.NotAfter)
	return nil
}

// Current returns the current certificate.
func (s *Source) Current() *tls.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cert
}

// GetCertificate implements tls.Config.GetCertificate.
func (s *Source) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.Current(), nil
}

// renewAt is when a certificate should be replaced: at half its lifetime.
func renewAt(c *tls.Certificate) time.Time {
	nb, na := c.Leaf.NotBefore, c.Leaf.NotAfter
	return nb.Add(na.Sub(nb) / 2)
}

// Run renews the certificate at half life until ctx ends, then returns nil.
func (s *Source) Run(ctx context.Context) error {
	for {
		wait := renewAt(s.Current()).Sub(s.cfg.Clock())
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if err := s.issue(); err != nil {
			s.log.Error("servingcert: renewal failed; keeping the current certificate", "err", err, "retry", s.cfg.RetryDelay)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(s.cfg.RetryDelay):
			}
		}
	}
}
