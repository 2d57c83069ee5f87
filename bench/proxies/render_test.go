package proxies

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from golden file (go test -update to accept):\n--- got ---\n%s", path, got)
	}
}

var testLayout = Layout{
	Dir:    "/tmp/meshbench-test/pair",
	Certs:  "/tmp/meshbench-test/certs",
	Listen: "127.0.0.1:15001",
	Tunnel: "127.0.0.1:15008",
	Dest:   "127.0.0.1:18080",
}

// renderPair shows everything a pair would launch: argv, files, readiness.
func renderPair(p Pair) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pair %s listen=%s tunnel=%s alpn=%v\n", p.Name, p.Listen, p.Tunnel, p.ALPN)
	for _, proc := range []Proc{p.Server, p.Client} {
		fmt.Fprintf(&b, "\n### %s ready=%s log=%s extra=%v\n$ %q\n", proc.Name, proc.Ready, proc.Log, proc.ExtraLogs, proc.Argv)
		for _, f := range proc.Files {
			fmt.Fprintf(&b, "\n--- %s ---\n%s", f.Path, f.Data)
		}
	}
	return b.String()
}

func TestBuild_Golden(t *testing.T) {
	tools := DefaultTools()
	tools.Mesh = "/usr/local/bin/meshbench"
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			p, err := Build(name, testLayout, DefaultTuning(), tools)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name+".golden", renderPair(p))
		})
	}
}

func TestBuild_TuningReachesConfigs(t *testing.T) {
	tu := Tuning{HAProxyThreads: 3, HAProxyBufSize: 12345, NginxWorkers: "auto", NginxBufferSize: 54321}
	for _, tc := range []struct {
		side Side
		conf string
		want []string
	}{
		{ServerSide, HAProxyConfig(ServerSide, testLayout, tu), []string{"nbthread 3", "tune.bufsize 12345"}},
		{ClientSide, NginxConfig(ClientSide, testLayout, tu), []string{"worker_processes auto;", "proxy_buffer_size 54321;"}},
	} {
		for _, w := range tc.want {
			if !strings.Contains(tc.conf, w) {
				t.Errorf("%s config lacks %q", tc.side, w)
			}
		}
	}
}

// Every C pair must pin TLS 1.3, the one cipher suite, and verification of
// the peer against ca.pem on both sides.
func TestConfigs_PinTLS13AndMutualAuth(t *testing.T) {
	ca := filepath.Join(testLayout.Certs, "ca.pem")
	tu := DefaultTuning()
	for _, tc := range []struct {
		name string
		conf string
		want []string
	}{
		{"stunnel client", StunnelConfig(ClientSide, testLayout), []string{"client = yes", "verifyChain = yes", "CAfile = " + ca, "cert = ", "sslVersionMin = TLSv1.3", "ciphersuites = " + CipherSuite}},
		{"stunnel server", StunnelConfig(ServerSide, testLayout), []string{"requireCert = yes", "verifyChain = yes", "CAfile = " + ca, "sslVersionMin = TLSv1.3", "ciphersuites = " + CipherSuite}},
		{"haproxy client", HAProxyConfig(ClientSide, testLayout, tu), []string{"ssl crt ", "ca-file " + ca, "verify required", "ssl-min-ver TLSv1.3", "ciphersuites " + CipherSuite}},
		{"haproxy server", HAProxyConfig(ServerSide, testLayout, tu), []string{"ssl crt ", "ca-file " + ca, "verify required", "ssl-min-ver TLSv1.3", "ciphersuites " + CipherSuite}},
		{"nginx client", NginxConfig(ClientSide, testLayout, tu), []string{"proxy_ssl on;", "proxy_ssl_certificate ", "proxy_ssl_protocols TLSv1.3;", "VerifyMode Peer;", "VerifyCAFile " + ca, "Ciphersuites " + CipherSuite}},
		{"nginx server", NginxConfig(ServerSide, testLayout, tu), []string{"listen " + testLayout.Tunnel + " ssl;", "ssl_verify_client on;", "ssl_client_certificate " + ca, "ssl_protocols TLSv1.3;", "Ciphersuites " + CipherSuite}},
	} {
		for _, w := range tc.want {
			if !strings.Contains(tc.conf, w) {
				t.Errorf("%s config lacks %q", tc.name, w)
			}
		}
	}
}

func TestBuild_RejectsUnknownPairAndHBONEWithoutBinary(t *testing.T) {
	if _, err := Build("squid", testLayout, DefaultTuning(), DefaultTools()); err == nil {
		t.Error("Build(squid) succeeded")
	}
	if _, err := Build(HBONE, testLayout, DefaultTuning(), DefaultTools()); err == nil {
		t.Error("Build(hbone) without Tools.Mesh succeeded")
	}
}

func TestNginxHTTPProxy_Golden(t *testing.T) {
	tuning := DefaultTuning()
	tuning.NginxWorkers = "2"
	l := testLayout
	l.Tunnel, l.Dest = "10.244.3.2:15443", "172.30.0.2:15008"
	p := NginxHTTPProxy(l, tuning, DefaultTools())
	var b strings.Builder
	fmt.Fprintf(&b, "### %s ready=%s log=%s extra=%v\n$ %q\n", p.Name, p.Ready, p.Log, p.ExtraLogs, p.Argv)
	for _, f := range p.Files {
		fmt.Fprintf(&b, "\n--- %s ---\n%s", f.Path, f.Data)
	}
	golden(t, "nginx-http.golden", b.String())
}
