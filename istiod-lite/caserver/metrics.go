package caserver

import (
	"errors"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// Metrics receives the server's events. Implementations must be safe for
// concurrent use and must not block.
type Metrics interface {
	// Request is called for every CreateCertificate call.
	Request()
	// Issued is called for every certificate issued.
	Issued()
	// Refused is called for every refusal with its reason, the gRPC code
	// in snake case ("unauthenticated", "permission_denied",
	// "invalid_argument", "failed_precondition", "unavailable", ...);
	// signing is true when the signer itself refused the CSR.
	Refused(reason string, signing bool)
}

type nopMetrics struct{}

func (nopMetrics) Request()             {}
func (nopMetrics) Issued()              {}
func (nopMetrics) Refused(string, bool) {}

type promMetrics struct {
	csrs, issued, authnFailures prometheus.Counter
	refused, signErrors         *prometheus.CounterVec
}

// NewPrometheusMetrics registers the CA metrics on reg, with Istio's names
// where Istio has them:
//
//   - citadel_server_csr_count: CSRs received;
//   - citadel_server_success_cert_issuance_count: certificates issued;
//   - citadel_server_authentication_failure_count: callers refused as
//     unauthenticated;
//   - citadel_server_csr_sign_err_count{error}: CSRs the signer refused;
//   - citadel_server_csr_refused_count{reason}: every refusal, by reason
//     (not in Istio).
func NewPrometheusMetrics(reg prometheus.Registerer) (Metrics, error) {
	m := &promMetrics{
		csrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "citadel_server_csr_count", Help: "The number of CSRs received by the CA server.",
		}),
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "citadel_server_success_cert_issuance_count", Help: "The number of certificates issuances that have succeeded.",
		}),
		authnFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "citadel_server_authentication_failure_count", Help: "The number of authentication failures.",
		}),
		signErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "citadel_server_csr_sign_err_count", Help: "The number of errors occurred when signing the CSR.",
		}, []string{"error"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "citadel_server_csr_refused_count", Help: "The number of certificate requests refused, by reason.",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.csrs, m.issued, m.authnFailures, m.signErrors, m.refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *promMetrics) Request() { m.csrs.Inc() }
func (m *promMetrics) Issued()  { m.issued.Inc() }
func (m *promMetrics) Refused(reason string, signing bool) {
	m.refused.WithLabelValues(reason).Inc()
	if reason == "unauthenticated" {
		m.authnFailures.Inc()
	}
	if signing {
		m.signErrors.WithLabelValues(reason).Inc()
	}
}

// signError marks an error returned by the signer.
type signError struct{ err error }

func (e signError) Error() string { return e.err.Error() }
func (e signError) Unwrap() error { return e.err }

// reason is the metrics label of a refusal: its gRPC code in snake case.
func reason(c codes.Code) string {
	s := c.String() // e.g. "PermissionDenied"
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToLower(b.String())
}

func isSignError(err error) bool {
	var se signError
	return errors.As(err, &se)
}
