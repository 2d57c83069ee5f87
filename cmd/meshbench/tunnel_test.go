package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/bench/report"
	"github.com/ambientmesh/ambient/bench/tlscheck"
	"github.com/ambientmesh/ambient/bench/tunnelbench"
)

// The test binary stands in for the meshbench binary when the tunnel
// benchmark starts it as "hbone-client" or "hbone-server".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		var run func([]string) error
		switch os.Args[1] {
		case "hbone-client":
			run = runHBONEClient
		case "hbone-server":
			run = runHBONEServer
		}
		if run != nil {
			if err := run(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	os.Exit(m.Run())
}

func TestParseTunnelFlags_Defaults(t *testing.T) {
	f, err := parseTunnelFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if f.bulk != 2<<30 || f.repeats != 1 || f.rounds != 3 || f.writeSize != 256<<10 || f.rate != 1000 ||
		f.duration != 5*time.Second || f.conns != 8 || f.size != 1024 {
		t.Errorf("defaults = %+v", f)
	}
}

func TestParseTunnelFlags_QuickAndOnly(t *testing.T) {
	f, err := parseTunnelFlags([]string{"--only", " hbone, nginx ,", "--quick", "--haproxy-nbthread", "1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if f.bulk != 256<<20 || f.repeats != 1 || f.duration != 2*time.Second || f.tuning.HAProxyThreads != 1 {
		t.Errorf("quick = %+v", f)
	}
	cfg := f.config("/bin/meshbench", io.Discard, nil)
	if strings.Join(cfg.Paths, ",") != "hbone,nginx" || cfg.Tools.Mesh != "/bin/meshbench" {
		t.Errorf("config paths %v mesh %q", cfg.Paths, cfg.Tools.Mesh)
	}
	if _, err := parseTunnelFlags([]string{"extra"}, io.Discard); err == nil {
		t.Error("stray argument accepted")
	}
}

// TestTunnel_EndToEnd runs every path with small sizes, hbone included (this
// test binary plays the meshbench binary), and requires clean results.
func TestTunnel_EndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts proxy processes")
	}
	f, err := parseTunnelFlags([]string{"--bulk", "16777216", "--repeats", "1", "--duration", "500ms", "--warmup", "2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, p := range tunnelbench.PathNames() {
		bin := map[string]string{"stunnel": f.tools.Stunnel, "haproxy": f.tools.HAProxy, "nginx": f.tools.Nginx}[p]
		if bin != "" {
			if _, err := exec.LookPath(bin); err != nil {
				if os.Getenv("CI") == "true" { // hack/install-deps.sh installs it
					t.Fatalf("%s not installed under CI: run hack/install-deps.sh test", bin)
				}
				t.Logf("%s not installed, skipping %s", bin, p)
				continue
			}
		}
		paths = append(paths, p)
	}
	f.only = strings.Join(paths, ",")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.config(exe, io.Discard, nil)
	cfg.TempRoot = t.TempDir()
	b, err := tunnelbench.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.Run(t.Context())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var table strings.Builder
	report.WriteTable(&table, rep)
	t.Logf("\n%s", table.String())
	for _, p := range rep.Paths {
		if p.Status != report.StatusOK {
			t.Errorf("%s failed: %s\n%s", p.Name, p.Error, p.LogTail)
		}
		if p.Name != tunnelbench.Direct && !tlscheck.AllOK(p.Checks) {
			t.Errorf("%s TLS checks failed: %+v", p.Name, p.Checks)
		}
	}
	if len(rep.Ratios) == 0 && len(paths) > 2 {
		t.Error("no hbone ratios")
	}
}
