package hbone

import (
	"encoding/json"
	"testing"
	"time"
)

func TestTunnelStats_JSONShowsMicroseconds(t *testing.T) {
	ts := TunnelStats{Transport: "hbone", Peer: "spiffe://cluster.local/ns/shop/sa/server", Remote: "10.0.2.2:15008", Streams: 1,
		Path: &PathStats{Congestion: "cubic", SmoothedRTT: 1500 * time.Microsecond, MinRTT: 80 * time.Microsecond, CongestionWindow: 65536, Sent: 100, Lost: 1}}
	b, err := json.Marshal(ts)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"transport":"hbone","source":"","peer":"spiffe://cluster.local/ns/shop/sa/server","remote":"10.0.2.2:15008","streams":1,` +
		`"path":{"congestion":"cubic","srttUs":1500,"minRttUs":80,"cwndBytes":65536,"sent":100,"lost":1}}`
	if string(b) != want {
		t.Errorf("JSON =\n%s\nwant\n%s", b, want)
	}
	b, _ = json.Marshal(TunnelStats{Transport: "hbone3"})
	if want := `{"transport":"hbone3","source":"","peer":"","remote":"","streams":0}`; string(b) != want {
		t.Errorf("JSON without a path = %s, want %s", b, want)
	}
}
