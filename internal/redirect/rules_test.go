package redirect

import (
	"encoding/binary"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
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
		t.Errorf("%s differs from the golden file (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestRules_DefaultsMatchGolden(t *testing.T) {
	golden(t, "rules", strings.Join(Rules(Config{}), "\n")+"\n")
	golden(t, "install", InstallScript(Config{}))
}

func TestRules_ZeroConfigIsIstioDefaults(t *testing.T) {
	explicit := Config{OutboundPort: 15001, InboundPort: 15006, TunnelPort: 15008, Mark: 0x539, MarkMask: 0xfff}
	if got, want := strings.Join(Rules(Config{}), "\n"), strings.Join(Rules(explicit), "\n"); got != want {
		t.Errorf("zero config renders\n%s\nexplicit defaults render\n%s", got, want)
	}
}

func TestRules_CustomConfig(t *testing.T) {
	got := strings.Join(Rules(Config{OutboundPort: 25001, InboundPort: 25006, TunnelPort: 25008, Mark: 0x10, MarkMask: 0xff}), "\n")
	for _, want := range []string{
		"tcp dport 25008 return",
		"meta l4proto tcp redirect to :25006",
		"meta l4proto tcp redirect to :25001",
		"meta mark & 0xff == 0x10 return",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("rules lack %q:\n%s", want, got)
		}
	}
}

func TestConfigValidate_RejectsSelfCapture(t *testing.T) {
	for _, c := range []Config{
		{OutboundPort: 15006},
		{TunnelPort: 15001},
		{Mark: 0x1539, MarkMask: 0xfff},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", c)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
}

func TestParseSockaddr(t *testing.T) {
	in4 := make([]byte, 16)
	binary.NativeEndian.PutUint16(in4, unix.AF_INET)
	binary.BigEndian.PutUint16(in4[2:], 8080)
	copy(in4[4:], []byte{10, 244, 2, 2})

	in6 := make([]byte, 28)
	binary.NativeEndian.PutUint16(in6, unix.AF_INET6)
	binary.BigEndian.PutUint16(in6[2:], 443)
	v6 := netip.MustParseAddr("fd00:10:244::5").As16()
	copy(in6[8:], v6[:])

	bad := make([]byte, 16)
	binary.NativeEndian.PutUint16(bad, unix.AF_UNIX)

	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"ipv4", in4, "10.244.2.2:8080"},
		{"ipv6", in6, "[fd00:10:244::5]:443"},
		{"short ipv4", in4[:6], ""},
		{"short ipv6", in6[:20], ""},
		{"other family", bad, ""},
		{"empty", nil, ""},
	} {
		got, err := parseSockaddr(tc.b)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: parsed %v, want an error", tc.name, got)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("%s: got %v, %v; want %s", tc.name, got, err, tc.want)
		}
	}
}

func TestRawInet6Bytes_RoundTrips(t *testing.T) {
	var r unix.RawSockaddrInet6
	r.Family = unix.AF_INET6
	r.Port = binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, 15008)) // as the kernel stores it
	r.Addr = netip.MustParseAddr("fd00::1").As16()
	got, err := parseSockaddr(rawInet6Bytes(&r))
	if err != nil || got.String() != "[fd00::1]:15008" {
		t.Errorf("got %v, %v", got, err)
	}
}

// TestRules_HostAddrsAreNotCaptured: connections from the pod's host end
// (kubelet probes) skip the inbound redirect; IPv6 entries are ignored.
func TestRules_HostAddrsAreNotCaptured(t *testing.T) {
	script := strings.Join(Rules(Config{HostAddrs: []netip.Addr{
		netip.MustParseAddr("10.244.1.1"), netip.MustParseAddr("::ffff:10.244.1.2"), netip.MustParseAddr("fd00::1")}}), "\n")
	skip := "ip saddr { 10.244.1.1, 10.244.1.2 } return"
	i, j := strings.Index(script, skip), strings.Index(script, "redirect to :15006")
	if i < 0 || j < i {
		t.Fatalf("inbound chain lacks %q before the redirect:\n%s", skip, script)
	}
	if strings.Contains(script, "fd00::1") {
		t.Errorf("IPv6 host address in the rules:\n%s", script)
	}
	if strings.Contains(strings.Join(Rules(Config{}), "\n"), "saddr") {
		t.Error("a rule for host addresses without any")
	}
}

func TestParseDefaultGateways(t *testing.T) {
	table := "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth0\t00000000\t0101F40A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n" + // default via 10.244.1.1
		"eth0\t0001F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" + // 10.244.1.0/24, no gateway
		"eth1\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n" // default without a gateway
	got := parseDefaultGateways(table)
	if len(got) != 1 || got[0] != netip.MustParseAddr("10.244.1.1") {
		t.Errorf("gateways = %v, want [10.244.1.1]", got)
	}
}

func TestRules_UDPCaptureMatchesGolden(t *testing.T) {
	golden(t, "rules_udp", strings.Join(Rules(Config{CaptureUDP: true}), "\n")+"\n")
}

// TestRules_UDPCaptureIsOptIn: the default rules leave UDP alone, so a pod
// whose ztunnel does not serve 15001/udp keeps its UDP.
func TestRules_UDPCaptureIsOptIn(t *testing.T) {
	got := strings.Join(Rules(Config{}), "\n")
	for _, bad := range []string{"udp", "tproxy", "0x53a"} {
		if strings.Contains(got, bad) {
			t.Errorf("default rules mention %q:\n%s", bad, got)
		}
	}
}

func TestRules_CaptureDNSTogglesPort53Exemption(t *testing.T) {
	const exempt = "udp dport 53 return"
	for _, tc := range []struct {
		cfg        Config
		wantExempt bool
	}{
		{Config{CaptureUDP: true}, true},
		{Config{CaptureUDP: true, CaptureDNS: true}, false},
	} {
		got := strings.Join(Rules(tc.cfg), "\n")
		i, j := strings.Index(got, exempt), strings.LastIndex(got, "meta mark set")
		if j < 0 {
			t.Fatalf("%+v: no UDP marking rule:\n%s", tc.cfg, got)
		}
		if tc.wantExempt && (i < 0 || i > j) {
			t.Errorf("%+v: DNS not exempt before the marking rule:\n%s", tc.cfg, got)
		}
		if !tc.wantExempt && i >= 0 {
			t.Errorf("%+v: DNS exempt although CaptureDNS:\n%s", tc.cfg, got)
		}
	}
}

func TestRules_UDPCustomMarkAndPort(t *testing.T) {
	got := strings.Join(Rules(Config{CaptureUDP: true, OutboundPort: 25001, Mark: 0x10, MarkMask: 0xff, UDPMark: 0x20}), "\n")
	for _, want := range []string{
		"meta mark set meta mark & 0xffffff00 | 0x20",
		"meta mark & 0xff != 0x20 return",
		"meta l4proto udp tproxy ip to :25001",
		"meta l4proto udp tproxy ip6 to :25001",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("rules lack %q:\n%s", want, got)
		}
	}
}

func TestConfigValidate_RejectsUDPMarkCollision(t *testing.T) {
	for _, c := range []Config{
		{CaptureUDP: true, UDPMark: 0x539},
		{CaptureUDP: true, UDPMark: 0x1539}, // outside the mask, and 0x539 under it
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", c)
		}
	}
	if err := (Config{CaptureUDP: true}).Validate(); err != nil {
		t.Errorf("UDP defaults invalid: %v", err)
	}
}
