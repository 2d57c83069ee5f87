package zc_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ambientmesh/ambient/ambientctl/output"
	"github.com/ambientmesh/ambient/ambientctl/zc"
	"github.com/ambientmesh/ambient/ambientctl/ztunnels"
	"github.com/ambientmesh/ambient/ambientctl/ztunnels/ztunnelstest"
	"github.com/ambientmesh/ambient/ztunnel/admin"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// fixedCerts are what a node holds: its identities' leaves and the shared
// root, with fixed serials and times.
func fixedCerts(ids ...string) []admin.Certificate {
	var out []admin.Certificate
	for i, id := range ids {
		out = append(out, admin.Certificate{Identity: id, State: "Available", CertChain: []admin.Cert{
			{SerialNumber: "100" + string(rune('1'+i)) + id[len(id)-1:], ValidFrom: "2026-11-25T12:00:00Z", ExpirationTime: "2026-11-26T12:00:00Z"},
			{SerialNumber: "1", ValidFrom: "2026-01-01T00:00:00Z", ExpirationTime: "2036-01-01T00:00:00Z"},
		}})
	}
	return out
}

func twoNodes(t *testing.T) []ztunnels.NodeDump {
	return []ztunnels.NodeDump{
		{Node: "node-1", Dump: ztunnelstest.Dump(t, "testdata/node-1.yaml", fixedCerts(
			"spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/shop/sa/reviews"))},
		{Node: "node-2", Dump: ztunnelstest.Dump(t, "testdata/node-2.yaml", append(fixedCerts(
			"spiffe://cluster.local/ns/shop/sa/reviews"),
			admin.Certificate{Identity: "spiffe://cluster.local/ns/legacy/sa/default", State: "Initializing"}))},
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", path, diff)
	}
}

func table(t *testing.T, rows output.Rows) []byte {
	var b bytes.Buffer
	if err := output.WriteTable(&b, rows, ""); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestTables_MergeEveryNodeAndMatchGolden(t *testing.T) {
	dumps := twoNodes(t)
	now := time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		rows output.Rows
	}{
		{"workloads.golden.txt", zc.WorkloadsTable(zc.Workloads(dumps, zc.Filter{}))},
		{"workloads-shop-node-1.golden.txt", zc.WorkloadsTable(zc.Workloads(dumps, zc.Filter{Namespace: "shop", Node: "node-1"}))},
		{"services.golden.txt", zc.ServicesTable(zc.Services(dumps, zc.Filter{}))},
		{"policies.golden.txt", zc.PoliciesTable(zc.Policies(dumps, zc.Filter{}))},
		{"certs.golden.txt", zc.CertificatesTable(zc.Certificates(dumps, zc.Filter{}), now)},
		{"certs-legacy.golden.txt", zc.CertificatesTable(zc.Certificates(dumps, zc.Filter{Namespace: "legacy"}), now)},
	} {
		t.Run(tc.name, func(t *testing.T) { golden(t, tc.name, table(t, tc.rows)) })
	}
}

func TestWorkloads_DedupedByUIDAcrossNodes(t *testing.T) {
	ws := zc.Workloads(twoNodes(t), zc.Filter{})
	var names []string
	for _, w := range ws {
		names = append(names, w.Namespace+"/"+w.Name)
	}
	want := []string{"legacy/db-0", "shop/frontend-1", "shop/reviews-v1-1", "shop/reviews-v2-1"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("merged workloads (-want +got):\n%s", diff)
	}
}

func TestCertificates_SharedRootListedOncePerIdentity(t *testing.T) {
	cs := zc.Certificates(twoNodes(t), zc.Filter{Namespace: "shop"})
	var got []string
	for _, c := range cs {
		got = append(got, c.Identity+" "+c.Type+" "+c.SerialNumber+" "+c.Node)
	}
	want := []string{
		"spiffe://cluster.local/ns/shop/sa/frontend Leaf 1001d node-1",
		"spiffe://cluster.local/ns/shop/sa/frontend Root 1 node-1",
		"spiffe://cluster.local/ns/shop/sa/reviews Leaf 1002s node-1",
		"spiffe://cluster.local/ns/shop/sa/reviews Leaf 1001s node-2",
		"spiffe://cluster.local/ns/shop/sa/reviews Root 1 node-1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("certificates (-want +got):\n%s", diff)
	}
}
