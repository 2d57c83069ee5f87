package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseConfig_DefaultsAndOverrides(t *testing.T) {
	conf, err := parseConfig([]byte(`{"cniVersion":"1.0.0","name":"net","type":"ambient-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.ZtunnelSocket != DefaultZtunnelSocket || conf.StateDir != DefaultStateDir || conf.Timeout != DefaultZtunnelTimeout {
		t.Errorf("defaults: %+v", conf)
	}
	if conf.Name != "net" || conf.Type != "ambient-cni" || conf.CNIVersion != "1.0.0" {
		t.Errorf("standard fields: %+v", conf.PluginConf)
	}

	conf, err = parseConfig([]byte(`{"cniVersion":"1.0.0","name":"net","type":"ambient-cni",
		"ztunnelSocket":"/run/z.sock","stateDir":"/run/pods","ztunnelTimeout":"500ms"}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.ZtunnelSocket != "/run/z.sock" || conf.StateDir != "/run/pods" || conf.Timeout != 500*time.Millisecond {
		t.Errorf("overrides: %+v", conf)
	}
}

func TestParseConfig_Errors(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		"not json":        {`{"cniVersion":`, "parse network configuration"},
		"relative socket": {`{"ztunnelSocket":"z.sock"}`, "ztunnelSocket"},
		"relative state":  {`{"stateDir":"pods"}`, "stateDir"},
		"bad timeout":     {`{"ztunnelTimeout":"soon"}`, "ztunnelTimeout"},
		"zero timeout":    {`{"ztunnelTimeout":"0s"}`, "ztunnelTimeout"},
		"huge timeout":    {`{"ztunnelTimeout":"1h"}`, "ztunnelTimeout"},
		"wrong type":      {`{"stateDir":7}`, "parse network configuration"},
	} {
		_, err := parseConfig([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one mentioning %q", name, err, tc.want)
		}
	}
}

func TestParsePrevResult_RequiredAndValidated(t *testing.T) {
	conf, _ := parseConfig([]byte(`{"cniVersion":"1.0.0"}`))
	if err := parsePrevResult(conf); err == nil || !strings.Contains(err.Error(), "chained plugin") {
		t.Errorf("missing prevResult: %v", err)
	}
	conf, _ = parseConfig([]byte(`{"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"not-an-ip"}]}}`))
	if err := parsePrevResult(conf); err == nil {
		t.Error("malformed prevResult: no error")
	}
}

func TestPodIPs_KeepsSandboxAddressesOnly(t *testing.T) {
	for name, tc := range map[string]struct {
		conf string
		want []string
	}{
		"1.0.0 with host and pod interfaces": {`{"cniVersion":"1.0.0","prevResult":{
			"interfaces":[{"name":"veth1"},{"name":"eth0","sandbox":"/var/run/netns/x"}],
			"ips":[{"address":"10.244.1.1/32","interface":0},{"address":"10.244.1.2/32","interface":1},
			       {"address":"fd00::2/128","interface":1},{"address":"10.244.1.2/32","interface":1}]}}`,
			[]string{"10.244.1.2", "fd00::2"}},
		"no interfaces": {`{"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"10.244.1.2/24"}]}}`,
			[]string{"10.244.1.2"}},
		"0.4.0 result": {`{"cniVersion":"0.4.0","prevResult":{"cniVersion":"0.4.0",
			"interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"4","address":"10.244.1.3/32","interface":0}]}}`,
			[]string{"10.244.1.3"}},
	} {
		conf, err := parseConfig([]byte(tc.conf))
		if err != nil {
			t.Fatal(err)
		}
		if err := parsePrevResult(conf); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := podIPs(conf.PrevResult)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: podIPs = %v, %v; want %v", name, got, err, tc.want)
		}
	}
}

func TestParsePodArgs(t *testing.T) {
	const uid = "3f0e9c2a-7d1b-4c1e-9a55-0d6f2f7f1a01"
	kubelet := "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=" + uid
	for name, tc := range map[string]struct {
		in      string
		want    podArgs
		ok      bool
		wantErr string
	}{
		"as kubelet passes them": {in: kubelet, want: podArgs{"default", "web-0", uid}, ok: true},
		"trailing separator":     {in: kubelet + ";", want: podArgs{"default", "web-0", uid}, ok: true},
		"empty":                  {in: ""},
		"no pod keys":            {in: "IgnoreUnknown=1;FOO=bar"},
		"pair without '='":       {in: "IgnoreUnknown=1;K8S_POD_NAME", wantErr: "malformed pair"},
		"empty key":              {in: "=x", wantErr: "malformed pair"},
		"missing uid":            {in: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0", wantErr: "K8S_POD_UID missing"},
		"empty name":             {in: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=;K8S_POD_UID=" + uid, wantErr: "K8S_POD_NAME missing"},
		"repeated key":           {in: kubelet + ";K8S_POD_NAME=other", wantErr: "given twice"},
		"uid with a slash":       {in: "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_UID=../etc", wantErr: "K8S_POD_UID"},
		"value with '='":         {in: "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b=c;K8S_POD_UID=" + uid, want: podArgs{"a", "b=c", uid}, ok: true},
	} {
		got, ok, err := parsePodArgs(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want one mentioning %q", name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || ok != tc.ok || got != tc.want {
			t.Errorf("%s: got %+v, %v, %v; want %+v, %v", name, got, ok, err, tc.want, tc.ok)
		}
	}
}
