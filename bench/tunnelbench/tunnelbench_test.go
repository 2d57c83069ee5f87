package tunnelbench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/ambientmesh/ambient/bench/certdir"
	"github.com/ambientmesh/ambient/bench/proxies"
	"github.com/ambientmesh/ambient/bench/report"
	"github.com/ambientmesh/ambient/bench/tlscheck"
	"github.com/ambientmesh/ambient/internal/ca"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newAuthority(td spiffeid.TrustDomain) (certdir.Authority, error) {
	return ca.NewSelfSigned(td, ca.Options{})
}

// smallConfig is a sub-second run per path.
func smallConfig(t *testing.T, paths ...string) Config {
	return Config{
		Paths: paths, BulkBytes: 8 << 20, Repeats: 2, WriteSize: 256 << 10,
		Rate: 500, LatencyDuration: 300 * time.Millisecond, Conns: 4, MessageSize: 1024, Warmup: 2,
		Tuning: proxies.DefaultTuning(), NewAuthority: newAuthority, TempRoot: t.TempDir(),
		TransferTimeout: 30 * time.Second,
	}
}

func TestNew_Validates(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"unknown path", func(c *Config) { c.Paths = []string{"envoy"} }, "unknown path"},
		{"no CA", func(c *Config) { c.NewAuthority = nil }, "NewAuthority"},
		{"hbone without binary", func(c *Config) { c.Paths = []string{"hbone"} }, "Tools.Mesh"},
		{"zero rate", func(c *Config) { c.Rate = 0 }, "positive"},
	}
	for _, tt := range tests {
		c := smallConfig(t, Direct)
		tt.mutate(&c)
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want it to mention %q", tt.name, err, tt.want)
		}
	}
}

func TestNew_OrdersPathsLikeTheTable(t *testing.T) {
	c := smallConfig(t, "nginx", "direct", "nginx", "stunnel")
	b, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(b.cfg.Paths, ","); got != "direct,stunnel,nginx" {
		t.Errorf("paths = %s", got)
	}
}

func TestFreePorts_Distinct(t *testing.T) {
	ports, err := FreePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Errorf("bad or repeated port %d in %v", p, ports)
		}
		seen[p] = true
	}
}

func TestRun_DirectMeasuresAndRemovesWorkDir(t *testing.T) {
	c := smallConfig(t, Direct)
	b, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.Run(t.Context())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Paths) != 1 {
		t.Fatalf("paths = %+v", rep.Paths)
	}
	p := rep.Paths[0]
	if p.Status != report.StatusOK || p.Upload.MedianMBps <= 0 || p.Download.MedianMBps <= 0 ||
		len(p.Upload.RunsMBps) != 2 || p.Latency.Count != 150 || p.CPU != nil {
		t.Errorf("direct result = %+v", p)
	}
	left, _ := filepath.Glob(filepath.Join(c.TempRoot, "meshbench-*"))
	if len(left) != 0 {
		t.Errorf("work directory not removed: %v", left)
	}
}

func TestRun_MissingProxyIsAFailedRowNotAFailedRun(t *testing.T) {
	c := smallConfig(t, Direct, proxies.Stunnel)
	c.Tools.Stunnel = "/nonexistent/stunnel"
	c.Keep = true
	b, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.Run(t.Context())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rep.Paths[0].Status != report.StatusOK || rep.Paths[1].Status != report.StatusFailed ||
		!strings.Contains(rep.Paths[1].Error, "/nonexistent/stunnel") {
		t.Errorf("rows = %+v", rep.Paths)
	}
	if _, err := os.Stat(filepath.Join(rep.Meta.Dir, "certs", certdir.CAFile)); err != nil {
		t.Errorf("--keep did not keep the work directory: %v", err)
	}
}

// TestRun_CPairsDoMutualTLS13 runs every installed C proxy pair through the
// TLS checks and a short measurement.
func TestRun_CPairsDoMutualTLS13(t *testing.T) {
	if testing.Short() {
		t.Skip("starts proxy processes")
	}
	var paths []string
	def := proxies.DefaultTools()
	for name, bin := range map[string]string{proxies.Stunnel: def.Stunnel, proxies.HAProxy: def.HAProxy, proxies.Nginx: def.Nginx} {
		if _, err := exec.LookPath(bin); err != nil {
			missing(t, bin+" not installed")
			continue
		}
		if _, err := os.Stat(proxies.NginxStreamModule); name == proxies.Nginx && err != nil {
			missing(t, fmt.Sprintf("nginx stream module missing: %v", err))
			continue
		}
		paths = append(paths, name)
	}
	if len(paths) == 0 {
		t.Skip("no C proxy installed")
	}
	b, err := New(smallConfig(t, paths...))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.Run(t.Context())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, p := range rep.Paths {
		if p.Status != report.StatusOK {
			t.Errorf("%s failed: %s\n%s", p.Name, p.Error, p.LogTail)
			continue
		}
		if len(p.Checks) != 6 || !tlscheck.AllOK(p.Checks) {
			t.Errorf("%s TLS checks: %+v", p.Name, p.Checks)
		}
		if p.CPU == nil || p.CPU.SecondsPerGB <= 0 || p.Latency.Errors != 0 {
			t.Errorf("%s measurements incomplete: cpu %+v latency %+v", p.Name, p.CPU, p.Latency)
		}
	}
}

// missing reports a proxy that is not installed: a failure under CI, where
// hack/install-deps.sh installs every one, else a skip of that pair.
func missing(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s under CI: run hack/install-deps.sh test", what)
	}
	t.Logf("%s, skipping that pair (see bench/README.md)", what)
}
