package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source defaults.
const (
	DefaultRetryBackoff    = time.Second
	DefaultMaxRetryBackoff = time.Minute
	DefaultFetchTimeout    = 30 * time.Second
)

var (
	// ErrSourceClosed is returned by a Source after Close.
	ErrSourceClosed = errors.New("identity: source is closed")
	// ErrSVIDExpired means the last SVID obtained has expired and no fresh
	// one could be fetched; the Source refuses to hand it out.
	ErrSVIDExpired = errors.New("identity: SVID expired and renewal has not succeeded")
	// ErrUnknownTrustDomain means a bundle was asked for a trust domain the
	// source has no bundle for.
	ErrUnknownTrustDomain = errors.New("identity: no trust bundle for trust domain")
	// ErrInvalidSVID means a fetched SVID or bundle was rejected (wrong ID,
	// expired, does not chain to the bundle).
	ErrInvalidSVID = errors.New("identity: fetched SVID rejected")
)

// Clock is the time source of a Source, injectable so tests can drive
// rotation.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer a Source uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// SystemClock returns the real clock.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time                 { return time.Now() }
func (systemClock) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time { return t.t.C }
func (t systemTimer) Stop() bool          { return t.t.Stop() }

// FetchFunc obtains a fresh SVID for id and the bundle of id's trust domain,
// typically by sending a new key's CSR to the CA (see CSRFetcher).
type FetchFunc func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error)

// SourceConfig configures a Source.
type SourceConfig struct {
	// ID is the identity to hold. Required.
	ID spiffeid.ID
	// Fetch obtains a fresh SVID and bundle. Required. It is never called
	// concurrently with itself.
	Fetch FetchFunc
	// Clock defaults to SystemClock().
	Clock Clock
	// Logger defaults to discarding.
	Logger *slog.Logger
	// RetryBackoff is the wait after the first failed fetch; it doubles on
	// each consecutive failure up to MaxRetryBackoff. Defaults 1 s and 1 min.
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// FetchTimeout bounds one Fetch call. Default 30 s.
	FetchTimeout time.Duration
}

// Source holds the current X509-SVID and bundle for one identity and renews
// them at half the SVID's lifetime. It implements x509svid.Source and
// x509bundle.Source and is safe for concurrent use.
type Source struct {
	id           spiffeid.ID
	fetch        FetchFunc
	clock        Clock
	log          *slog.Logger
	backoff      time.Duration
	maxBackoff   time.Duration
	fetchTimeout time.Duration

	rotateReq chan chan error // Rotate → rotateLoop
	cancel    context.CancelFunc
	done      chan struct{} // closed when rotateLoop returns
	closeOnce sync.Once

	mu sync.RWMutex
	// mu guards the fields below.
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
	closed bool
}

// NewSource fetches the first SVID, retrying with backoff, and returns once
// it has one; if ctx ends first it returns the context error together with
// the last fetch error. ctx bounds only this wait: the returned Source keeps
// rotating until Close.
func NewSource(ctx context.Context, cfg SourceConfig) (*Source, error) {
	if cfg.ID.IsZero() {
		return nil, errors.New("identity: new source: ID is required")
	}
	if cfg.Fetch == nil {
		return nil, fmt.Errorf("identity: new source for %s: Fetch is required", cfg.ID)
	}
	s := &Source{
		id:           cfg.ID,
		fetch:        cfg.Fetch,
		clock:        cfg.Clock,
		log:          cfg.Logger,
		backoff:      cfg.RetryBackoff,
		maxBackoff:   cfg.MaxRetryBackoff,
		fetchTimeout: cfg.FetchTimeout,
		rotateReq:    make(chan chan error),
		done:         make(chan struct{}),
	}
	if s.clock == nil {
		s.clock = SystemClock()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("spiffe_id", s.id.String())
	if s.backoff <= 0 {
		s.backoff = DefaultRetryBackoff
	}
	if s.maxBackoff <= 0 {
		s.maxBackoff = DefaultMaxRetryBackoff
	}
	s.maxBackoff = max(s.maxBackoff, s.backoff)
	if s.fetchTimeout <= 0 {
		s.fetchTimeout = DefaultFetchTimeout
	}

	for attempt := 1; ; attempt++ {
		err := s.refresh(ctx)
		if err == nil {
			break
		}
		d := s.retryDelay(attempt)
		s.log.Warn("fetching first SVID failed; retrying", "attempt", attempt, "retry_in", d, "error", err)
		t := s.clock.NewTimer(d)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("identity: waiting for first SVID for %s: %w (last fetch error: %w)", s.id, ctx.Err(), err)
		}
	}

	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	go s.rotateLoop(loopCtx)
	return s, nil
}

// GetX509SVID returns the current SVID. It returns an error wrapping
// ErrSVIDExpired rather than an SVID whose chain has expired, and
// ErrSourceClosed after Close. The result must not be modified.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	svid, closed := s.svid, s.closed
	s.mu.RUnlock()
	if closed {
		return nil, ErrSourceClosed
	}
	if exp := expiry(svid); !s.clock.Now().Before(exp) {
		return nil, fmt.Errorf("%w: %s expired at %s; check that the CA (istiod) is reachable", ErrSVIDExpired, s.id, exp.UTC().Format(time.RFC3339))
	}
	return svid, nil
}

// GetX509BundleForTrustDomain returns the bundle of the source's own trust
// domain; any other trust domain is an error wrapping ErrUnknownTrustDomain.
// The result must not be modified.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	bundle, closed := s.bundle, s.closed
	s.mu.RUnlock()
	if closed {
		return nil, ErrSourceClosed
	}
	if td != bundle.TrustDomain() {
		return nil, fmt.Errorf("%w: %q (this source holds %q)", ErrUnknownTrustDomain, td, bundle.TrustDomain())
	}
	return bundle, nil
}

// Rotate fetches a fresh SVID now, in the rotation goroutine, and returns the
// outcome. On success the half-life timer restarts from the new SVID; on
// failure the current SVID is kept and retries follow the usual backoff.
func (s *Source) Rotate(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case s.rotateReq <- reply:
	case <-s.done:
		return ErrSourceClosed
	case <-ctx.Done():
		return fmt.Errorf("identity: rotate %s: %w", s.id, ctx.Err())
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return fmt.Errorf("identity: rotate %s: %w", s.id, ctx.Err())
	}
}

// Close stops rotation and waits for the rotation goroutine to exit. Later
// calls to the Get methods return ErrSourceClosed. Close is idempotent.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
	})
	<-s.done
	return nil
}

// rotateLoop renews the SVID at half life, retries failures with backoff and
// serves Rotate requests, until ctx is cancelled by Close.
func (s *Source) rotateLoop(ctx context.Context) {
	defer close(s.done)
	failures := 0
	timer := s.clock.NewTimer(s.refreshDelay())
	for {
		var reply chan error
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C():
		case reply = <-s.rotateReq:
			timer.Stop()
		}
		err := s.refresh(ctx)
		if reply != nil {
			reply <- err
		}
		if ctx.Err() != nil {
			return
		}
		var d time.Duration
		if err != nil {
			failures++
			d = s.retryDelay(failures)
			s.log.Warn("SVID renewal failed; retrying", "attempt", failures, "retry_in", d,
				"current_expires", expiry(s.current()), "error", err)
		} else {
			failures = 0
			d = s.refreshDelay()
		}
		timer = s.clock.NewTimer(d)
	}
}

// refresh fetches, checks and installs a new SVID and bundle.
func (s *Source) refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.fetchTimeout)
	defer cancel()
	svid, bundle, err := s.fetch(ctx, s.id)
	if err != nil {
		return fmt.Errorf("identity: fetch SVID for %s: %w", s.id, err)
	}
	if err := s.check(svid, bundle); err != nil {
		return err
	}
	s.mu.Lock()
	s.svid, s.bundle = svid, bundle
	s.mu.Unlock()
	leaf := svid.Certificates[0]
	s.log.Info("SVID installed", "serial", leaf.SerialNumber.Text(16),
		"not_before", leaf.NotBefore, "not_after", leaf.NotAfter, "renew_at", halfLife(svid))
	return nil
}

// check refuses an SVID that is not for s.id, has expired, or does not
// chain to the bundle it came with.
func (s *Source) check(svid *x509svid.SVID, bundle *x509bundle.Bundle) error {
	switch {
	case svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil:
		return fmt.Errorf("%w: for %s: empty SVID", ErrInvalidSVID, s.id)
	case bundle == nil || bundle.Empty():
		return fmt.Errorf("%w: for %s: empty bundle", ErrInvalidSVID, s.id)
	case bundle.TrustDomain() != s.id.TrustDomain():
		return fmt.Errorf("%w: for %s: bundle is for trust domain %q", ErrInvalidSVID, s.id, bundle.TrustDomain())
	}
	now := s.clock.Now()
	id, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(now))
	switch {
	case err != nil:
		return fmt.Errorf("%w: for %s: %w", ErrInvalidSVID, s.id, err)
	case id != s.id || svid.ID != s.id:
		return fmt.Errorf("%w: asked for %s, got %s", ErrInvalidSVID, s.id, id)
	case !now.Before(expiry(svid)):
		return fmt.Errorf("%w: for %s: already expired at %s", ErrInvalidSVID, s.id, expiry(svid))
	}
	return nil
}

func (s *Source) current() *x509svid.SVID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.svid
}

// refreshDelay is the time until the current SVID's half life, but at least
// the retry backoff so a CA issuing nearly expired certificates cannot make
// the loop spin.
func (s *Source) refreshDelay() time.Duration {
	return max(halfLife(s.current()).Sub(s.clock.Now()), s.backoff)
}

func (s *Source) retryDelay(failures int) time.Duration {
	d := s.backoff
	for i := 1; i < failures && d < s.maxBackoff; i++ {
		d *= 2
	}
	return min(d, s.maxBackoff)
}

// expiry is the earliest NotAfter of the SVID's chain.
func expiry(svid *x509svid.SVID) time.Time {
	exp := svid.Certificates[0].NotAfter
	for _, c := range svid.Certificates[1:] {
		if c.NotAfter.Before(exp) {
			exp = c.NotAfter
		}
	}
	return exp
}

// halfLife is the middle of the leaf's validity (NotBefore..expiry).
func halfLife(svid *x509svid.SVID) time.Time {
	nb := svid.Certificates[0].NotBefore
	return nb.Add(expiry(svid).Sub(nb) / 2)
}

// StaticSource serves a fixed SVID and bundle, for tests and tools. Unlike
// Source it does not check expiry: it returns exactly what it was given.
type StaticSource struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

// NewStaticSource returns a source serving svid and bundle (either may be nil
// if that half is unused).
func NewStaticSource(svid *x509svid.SVID, bundle *x509bundle.Bundle) *StaticSource {
	return &StaticSource{svid: svid, bundle: bundle}
}

// GetX509SVID implements x509svid.Source.
func (s *StaticSource) GetX509SVID() (*x509svid.SVID, error) {
	if s.svid == nil {
		return nil, errors.New("identity: static source has no SVID")
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *StaticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if s.bundle == nil || s.bundle.TrustDomain() != td {
		return nil, fmt.Errorf("%w: %q", ErrUnknownTrustDomain, td)
	}
	return s.bundle, nil
}

// SignFunc sends a PEM CSR for id to a CA and returns the PEM certificate
// chain (leaf first) and the PEM trust anchors of id's trust domain.
type SignFunc func(ctx context.Context, id spiffeid.ID, csrPEM []byte) (chainPEM, rootsPEM []byte, err error)

// CSRFetcher returns a FetchFunc that generates a fresh ECDSA P-256 key for
// every fetch, asks sign to certify it, and assembles the SVID and bundle.
func CSRFetcher(sign SignFunc) FetchFunc {
	return func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("generate key: %w", err)
		}
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
		if err != nil {
			return nil, nil, fmt.Errorf("create CSR: %w", err)
		}
		chainPEM, rootsPEM, err := sign(ctx, id, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))
		if err != nil {
			return nil, nil, fmt.Errorf("sign CSR: %w", err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, nil, fmt.Errorf("marshal key: %w", err)
		}
		svid, err := x509svid.Parse(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
		if err != nil {
			return nil, nil, fmt.Errorf("parse signed chain: %w", err)
		}
		bundle, err := x509bundle.Parse(id.TrustDomain(), rootsPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("parse roots: %w", err)
		}
		return svid, bundle, nil
	}
}
