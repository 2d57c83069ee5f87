package istiodconn_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambientmesh/ambient/internal/ca"
	"github.com/ambientmesh/ambient/internal/istiodconn"
	"github.com/ambientmesh/ambient/internal/state"
)

func TestDial_ChecksCredentialsAtStartAndRegistersMetrics(t *testing.T) {
	authority, err := ca.NewSelfSigned(spiffeid.RequireTrustDomainFromString("cluster.local"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, _, err := authority.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	root, token := filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "istio-token")
	if err := os.WriteFile(root, rootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(token, []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := func(root, token string) istiodconn.Config {
		return istiodconn.Config{XDSAddress: "127.0.0.1:1", RootFile: root, ServerName: "istiod.istio-system.svc",
			TokenFile: token, Store: state.NewStore(), Registerer: prometheus.NewRegistry()}
	}
	for _, tc := range []struct {
		name string
		cfg  istiodconn.Config
		want string
	}{
		{"missing root", cfg(filepath.Join(dir, "none.pem"), token), "none.pem"},
		{"missing token", cfg(root, filepath.Join(dir, "no-token")), "--token-file"},
	} {
		if _, err := istiodconn.Dial(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Dial = %v, want an error mentioning %s", tc.name, err, tc.want)
		}
	}
	reg := prometheus.NewRegistry()
	c := cfg(root, token)
	c.Registerer = reg
	conn, err := istiodconn.Dial(c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if conn.XDS == nil || conn.CA == nil || conn.XDS.Synced() {
		t.Fatalf("conn = %+v", conn)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"istio_xds_connected", "istio_xds_connection_terminations_total", "istio_agent_num_outgoing_requests"} {
		if !names[want] {
			t.Errorf("metric %s not registered (have %v)", want, names)
		}
	}
}
