package nodeagent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEnsurePrimaryConf_WritesOnlyIntoAnEmptyDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d")
	conf, err := renderConfList(DefaultConfList, confListParams{PodCIDR: "10.244.1.0/24", IPAMDir: "/ipam", NodeName: "n1", StateDir: "/s"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ensurePrimaryConf(dir, conf); err != nil {
		t.Fatal(err)
	}
	got, err := primaryConfList(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), "10.244.1.0/24") {
		t.Fatalf("primary configuration is not the rendered template: %s", got)
	}

	// An installer chains a plugin into it; a restarted agent keeps that.
	chained := strings.Replace(string(conf), `"plugins": [`, `"plugins": [{"type": "ambient-cni"},`, 1)
	if err := os.WriteFile(filepath.Join(dir, PrimaryConfName), []byte(chained), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ensurePrimaryConf(dir, conf); err != nil {
		t.Fatal(err)
	}
	got, err = primaryConfList(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), "ambient-cni") {
		t.Fatalf("the agent overwrote the chained configuration: %s", got)
	}
}

func TestPrimaryConfList_LexicallyFirstFileAndSingleConf(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("20-other.conflist", `{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}`)
	write("05-single.conf", `{"cniVersion":"1.0.0","name":"single","type":"ptp"}`)
	write("README", "not a configuration")
	got, err := primaryConfList(dir)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Name    string `json:"name"`
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(got, &list); err != nil {
		t.Fatalf("%v: %s", err, got)
	}
	if list.Name != "single" || len(list.Plugins) != 1 || list.Plugins[0].Type != "ptp" {
		t.Fatalf("primary = %s, want 05-single.conf as a one-plugin list", got)
	}
}

func TestPrimaryConfList_ClearErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := primaryConfList(dir); err == nil || !strings.Contains(err.Error(), "no CNI network configuration in "+dir) {
		t.Fatalf("empty directory: err = %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "10-bad.conflist"), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := primaryConfList(dir); err == nil || !strings.Contains(err.Error(), "CNI configuration") {
		t.Fatalf("invalid file: err = %v", err)
	}
}
