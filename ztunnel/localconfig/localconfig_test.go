package localconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json")

// dump renders a snapshot as stable, indented JSON: protojson's own spacing
// is deliberately unstable, so each message is compacted and re-indented.
func dump(t *testing.T, snap state.Snapshot) []byte {
	t.Helper()
	msgs := func(list []proto.Message) []json.RawMessage {
		out := []json.RawMessage{}
		for _, m := range list {
			b, err := protojson.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			var c bytes.Buffer
			if err := json.Compact(&c, b); err != nil {
				t.Fatal(err)
			}
			out = append(out, c.Bytes())
		}
		return out
	}
	var w, s, p []proto.Message
	for _, x := range snap.Workloads {
		w = append(w, x)
	}
	for _, x := range snap.Services {
		s = append(s, x)
	}
	for _, x := range snap.Policies {
		p = append(p, x)
	}
	b, err := json.MarshalIndent(map[string][]json.RawMessage{"workloads": msgs(w), "services": msgs(s), "policies": msgs(p)}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestLoad_ExampleMatchesGolden(t *testing.T) {
	snap, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := dump(t, snap)
	golden := "testdata/example.golden.json"
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("parsed example differs from %s (-want +got); run go test -update if intended:\n%s", golden, diff)
	}
}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func TestParse_FriendlyForms(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want state.Snapshot
	}{
		{
			name: "empty document is an empty mesh",
			yaml: "# nothing yet\n",
			want: state.Snapshot{},
		},
		{
			name: "snake_case and lowerCamel names, enums by name, IPs unmapped",
			yaml: `workloads:
- {uid: a, service_account: sa, networkMode: HOST_NETWORK, addresses: ["::ffff:10.0.0.1", "fd00::1"], tunnel_protocol: HBONE}`,
			want: state.Snapshot{Workloads: []*workloadapi.Workload{{
				Uid: "a", ServiceAccount: "sa", NetworkMode: workloadapi.NetworkMode_HOST_NETWORK,
				Addresses: [][]byte{ip("10.0.0.1"), ip("fd00::1")}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
			}}},
		},
		{
			name: "tunnel transport extension, by either name",
			yaml: `workloads:
- {uid: a, tunnel_protocol: HBONE, tunnel_transport: QUIC}
- {uid: b, tunnelProtocol: HBONE, tunnelTransport: H2}`,
			want: state.Snapshot{Workloads: []*workloadapi.Workload{
				{Uid: "a", TunnelProtocol: workloadapi.TunnelProtocol_HBONE, TunnelTransport: workloadapi.TunnelTransport_QUIC},
				{Uid: "b", TunnelProtocol: workloadapi.TunnelProtocol_HBONE, TunnelTransport: workloadapi.TunnelTransport_H2},
			}},
		},
		{
			name: "NetworkAddress as object, IP string and network/IP string",
			yaml: `services:
- hostname: h
  addresses: [{network: n1, address: 10.96.0.1}, "10.96.0.2", "n2/fd00::3"]
  waypoint: {address: "n1/10.96.0.50", hbone_mtls_port: 15008}`,
			want: state.Snapshot{Services: []*workloadapi.Service{{
				Hostname: "h",
				Addresses: []*workloadapi.NetworkAddress{
					{Network: "n1", Address: ip("10.96.0.1")},
					{Address: ip("10.96.0.2")},
					{Network: "n2", Address: ip("fd00::3")},
				},
				Waypoint: &workloadapi.GatewayAddress{
					Destination:   &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Network: "n1", Address: ip("10.96.0.50")}},
					HboneMtlsPort: 15008,
				},
			}}},
		},
		{
			name: "security addresses as CIDR strings, bare IPs and objects",
			yaml: `policies:
- name: p
  groups: [{rules: [{matches: [{source_ips: ["10.0.0.0/8", "10.1.2.3", {address: "fd00::", length: 8}]}]}]}]`,
			want: state.Snapshot{Policies: []*security.Authorization{{
				Name: "p",
				Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{SourceIps: []*security.Address{
					{Address: ip("10.0.0.0"), Length: 8},
					{Address: ip("10.1.2.3"), Length: 32},
					{Address: ip("fd00::"), Length: 8},
				}}}}}}},
			}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParse_RejectsWithAClearError(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error
	}{
		{"invalid YAML names the line", "workloads:\n- uid: a\n  name: [unclosed\n", []string{"line"}},
		{"duplicate YAML key", "workloads:\n- uid: a\n  uid: b\n", []string{`"uid" already set`}},
		{"unknown top-level key", "workload:\n- uid: a\n", []string{"top level", `unknown field "workload"`}},
		{"top level is a list", "- uid: a\n", []string{"top level"}},
		{"item is not a mapping", "workloads:\n- just-a-string\n", []string{"workloads[0]", "want a mapping"}},
		{"unknown field names the item", "workloads:\n- uid: a\n- uid: b\n  servce_account: x\n", []string{`workloads[1] (uid "b")`, `unknown field "servce_account"`}},
		{"bad enum", "workloads:\n- {uid: a, tunnel_protocol: HBONEX}\n", []string{`workloads[0] (uid "a")`, "HBONEX"}},
		{"bad tunnel transport", "workloads:\n- {uid: a, tunnel_transport: quic}\n", []string{`workloads[0] (uid "a")`, "quic"}},
		{"bad workload IP", "workloads:\n- {uid: a, addresses: [10.0.0.1, 10.0.0.300]}\n", []string{`workloads[0] (uid "a")`, `addresses[1]: "10.0.0.300" is not an IP address`}},
		{"IP with zone", "workloads:\n- {uid: a, addresses: [\"fe80::1%eth0\"]}\n", []string{`"fe80::1%eth0" is not an IP address`}},
		{"IP as number", "workloads:\n- {uid: a, addresses: [42]}\n", []string{"addresses[0]: want an IP address as a string"}},
		{"bad service VIP", "services:\n- {hostname: h, addresses: [{address: nope}]}\n", []string{`services[0] (hostname "h")`, `addresses[0].address: "nope" is not an IP address`}},
		{"bad CIDR", "policies:\n- name: p\n  groups: [{rules: [{matches: [{source_ips: [\"10.0.0.0/33\"]}]}]}]\n", []string{`policies[0] (name "p")`, `"10.0.0.0/33" is not an IP or CIDR`}},
		{"bad map value IP path", "services:\n- {hostname: h, waypoint: {address: {address: \"1.2.3\"}}}\n", []string{`waypoint.address.address: "1.2.3"`}},
		{"workload without uid", "workloads:\n- uid: a\n- name: frontend-2\n", []string{"workloads[1]", "no uid"}},
		{"duplicate uid", "workloads:\n- uid: a\n- uid: b\n- uid: a\n", []string{`workloads[2] (uid "a")`, "duplicate uid, also used by workloads[0]"}},
		{"service without hostname", "services:\n- {name: x, namespace: shop}\n", []string{"services[0]", "no hostname"}},
		{"duplicate service", "services:\n- {namespace: shop, hostname: h}\n- {namespace: shop, hostname: h}\n", []string{"services[1]", `duplicate service "shop/h", also defined by services[0]`}},
		{"policy without name", "policies:\n- {namespace: shop}\n", []string{"policies[0]", "no name"}},
		{"duplicate policy", "policies:\n- {namespace: shop, name: p}\n- {namespace: shop, name: p}\n", []string{"policies[1]", `duplicate policy "shop/p"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			if !strings.HasPrefix(err.Error(), "localconfig: ") {
				t.Errorf("error %q does not say where it comes from", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoad_NamesTheFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want ErrNotExist", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("workloads:\n- name: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("err = %v, want it to name %s", err, bad)
	}
}

// TestLoad_ExampleRoundTripsIntoStateLookups feeds the example into a Store
// and asks the data-path questions of it.
func TestLoad_ExampleRoundTripsIntoStateLookups(t *testing.T) {
	snap, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := state.NewStore()
	if err := s.Replace(snap); err != nil {
		t.Fatal(err)
	}
	v := s.Current()
	ap := netip.MustParseAddrPort

	dst := v.Resolve("", ap("10.96.0.10:80"))
	if dst.Kind != state.ToService || dst.Service.GetHostname() != "backend.shop.svc.cluster.local" || dst.ServicePort.GetTargetPort() != 8080 {
		t.Fatalf("Resolve(VIP) = %+v", dst)
	}
	if d := v.Resolve("", ap("[fd00:96::10]:80")); d.Service != dst.Service {
		t.Errorf("IPv6 VIP resolved to %+v", d)
	}
	// backend-2 is unhealthy, so every pick is backend-1.
	r := rand.New(rand.NewPCG(1, 1))
	for range 20 {
		ep, err := v.PickEndpoint(dst.Service, 80, r)
		if err != nil {
			t.Fatal(err)
		}
		if ep.Workload.GetName() != "backend-1" || ep.Addr != ap("10.244.1.6:8080") {
			t.Fatalf("PickEndpoint = %s %v, want backend-1 10.244.1.6:8080", ep.Workload.GetName(), ep.Addr)
		}
	}

	fe := v.Resolve("", ap("10.244.1.5:9000"))
	if fe.Kind != state.ToWorkload || fe.Workload.GetServiceAccount() != "frontend" || !state.Enrolled(fe.Workload) {
		t.Errorf("Resolve(frontend IP) = %+v", fe)
	}
	db := v.WorkloadByAddr("", netip.MustParseAddr("10.244.2.8"))
	if db == nil || state.Enrolled(db) {
		t.Errorf("db-0 = %v, want found and not enrolled", db)
	}
	if got := v.Resolve("", ap("8.8.8.8:53")).Kind; got != state.Passthrough {
		t.Errorf("Resolve(8.8.8.8) kind = %v, want passthrough", got)
	}

	var names []string
	for _, w := range v.WorkloadsOnNode("node-1") {
		names = append(names, w.GetName())
	}
	if diff := cmp.Diff([]string{"backend-1", "frontend-1"}, names); diff != "" {
		t.Errorf("node-1 workloads (-want +got):\n%s", diff)
	}

	var pols []string
	for _, p := range v.PoliciesFor(v.Workload("cluster1//v1/Pod/shop/backend-1")) {
		pols = append(pols, state.PolicyKey(p))
	}
	if diff := cmp.Diff([]string{"istio-system/deny-outside", "shop/allow-frontend", "shop/backend-only-get-port"}, pols); diff != "" {
		t.Errorf("PoliciesFor(backend-1) (-want +got):\n%s", diff)
	}
}
