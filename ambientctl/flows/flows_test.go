package flows_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ambientmesh/ambient/ambientctl/flows"
	"github.com/ambientmesh/ambient/ambientctl/output"
	"github.com/ambientmesh/ambient/ambientctl/ztunnels"
	"github.com/ambientmesh/ambient/internal/telemetry"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func line(t *testing.T, node string, f telemetry.Flow) ztunnels.Line {
	b, err := f.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return ztunnels.Line{Node: node, Data: b}
}

func peer(ns, name, sa string) telemetry.Peer {
	return telemetry.Peer{Workload: name, Namespace: ns, Identity: "spiffe://cluster.local/ns/" + ns + "/sa/" + sa}
}

// records: frontend → reviews seen by both ends, a denial, and a legacy
// plaintext flow, gathered from two nodes out of order.
func records(t *testing.T) []flows.Record {
	fe, rv, db := peer("shop", "frontend-1", "frontend"), peer("shop", "reviews-v1-1", "reviews"), telemetry.Peer{Addr: "10.244.1.4:5432"}
	rv.Service = "reviews.shop.svc.cluster.local"
	var out []flows.Record
	for _, l := range []ztunnels.Line{
		line(t, "node-2", telemetry.Flow{Start: t0.Add(2 * time.Second), Reporter: "destination", Src: fe, Dst: rv, Decision: "deny", Policy: "shop/deny-frontend", Error: "denied by policy"}),
		line(t, "node-1", telemetry.Flow{Start: t0, Reporter: "source", Src: fe, Dst: rv, Decision: "allow", BytesSent: 512, BytesRecv: 2048, Duration: 12500 * time.Microsecond}),
		line(t, "node-2", telemetry.Flow{Start: t0.Add(time.Millisecond), Reporter: "destination", Src: fe, Dst: rv, Decision: "allow", Policy: "shop/allow-frontend", BytesSent: 512, BytesRecv: 2048, Duration: 11 * time.Millisecond}),
		line(t, "node-1", telemetry.Flow{Start: t0.Add(time.Second), Reporter: "source", Src: telemetry.Peer{Workload: "db-client", Namespace: "legacy"}, Dst: db, Decision: "allow", BytesSent: 10, BytesRecv: 20, Duration: time.Second}),
	} {
		r, err := flows.Parse(l)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func TestTable_SortedByTimeMatchesGolden(t *testing.T) {
	rs := records(t)
	flows.Sort(rs)
	var b bytes.Buffer
	output.WriteTable(&b, flows.Table(rs), "")
	path := "testdata/flows.golden.txt"
	if *update {
		os.WriteFile(path, b.Bytes(), 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), b.String()); diff != "" {
		t.Errorf("flows table (-want +got):\n%s", diff)
	}
}

func TestFilter_EitherEndMatches(t *testing.T) {
	rs := records(t)
	count := func(f flows.Filter) int {
		n := 0
		for _, r := range rs {
			if f.Match(r) {
				n++
			}
		}
		return n
	}
	for _, tc := range []struct {
		f    flows.Filter
		want int
	}{
		{flows.Filter{}, 4},
		{flows.Filter{Namespace: "shop"}, 3},
		{flows.Filter{Namespace: "legacy"}, 1},
		{flows.Filter{Identity: "spiffe://cluster.local/ns/shop/sa/reviews"}, 3},
		{flows.Filter{Namespace: "legacy", Identity: "spiffe://cluster.local/ns/shop/sa/reviews"}, 0},
		{flows.Filter{Namespace: "other"}, 0},
	} {
		if got := count(tc.f); got != tc.want {
			t.Errorf("%+v matches %d, want %d", tc.f, got, tc.want)
		}
	}
}

func TestJSONLine_IsTheFlowLineWithTheNodeAdded(t *testing.T) {
	r := records(t)[1]
	var got, orig map[string]any
	if err := json.Unmarshal(flows.JSONLine(r), &got); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(r.Line, &orig)
	if got["node"] != "node-1" {
		t.Errorf("node = %v", got["node"])
	}
	delete(got, "node")
	if diff := cmp.Diff(orig, got); diff != "" {
		t.Errorf("line changed (-orig +got):\n%s", diff)
	}
}
