package server

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/rest"
)

func TestNew_RequiresRESTConfigAndTrustDomain(t *testing.T) {
	if _, err := New(Config{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}); err == nil {
		t.Error("New without RESTConfig succeeded")
	}
	if _, err := New(Config{RESTConfig: &rest.Config{}}); err == nil {
		t.Error("New without TrustDomain succeeded")
	}
	s, err := New(Config{RESTConfig: &rest.Config{}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.Namespace != "istio-system" || s.cfg.GRPCAddr != ":15012" || s.cfg.MonitoringAddr != ":15014" || s.cfg.ReadyAddr != ":8080" {
		t.Errorf("defaults = %+v", s.cfg)
	}
}

func TestServingNames_IstiodServiceNamesFirst(t *testing.T) {
	got := ServingNames("mesh", []string{"127.0.0.1"})
	want := []string{"istiod.mesh.svc", "istiod.mesh.svc.cluster.local", "127.0.0.1"}
	if !slices.Equal(got, want) {
		t.Errorf("ServingNames = %q, want %q", got, want)
	}
}

func TestServeReady_503WithReasonBeforeStart(t *testing.T) {
	s, err := New(Config{RESTConfig: &rest.Config{}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	s.serveReady(rec, httptest.NewRequest(http.MethodGet, "/ready", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "CA not loaded yet") {
		t.Errorf("/ready = %d %q, want 503 naming the CA", rec.Code, rec.Body.String())
	}
	rec = httptest.NewRecorder()
	s.serveReady(rec, httptest.NewRequest(http.MethodGet, "/other", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("/other = %d, want 404", rec.Code)
	}
}
