package hbone3

import (
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/ambientmesh/ambient/internal/logtest"
)

// TestTuning_RealSocket: as root (CAP_NET_ADMIN) the buffers reach the
// wanted size even past net.core.rmem_max; otherwise the report says why.
func TestTuning_RealSocket(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	tu := tuneUDP(pc)
	t.Logf("tuning: %s", tu)
	if os.Geteuid() != 0 {
		if !tu.OK() && !strings.Contains(tu.Err.Error(), "rmem_max") {
			t.Fatalf("refusal does not say what to raise: %v", tu.Err)
		}
		return
	}
	if !tu.OK() || tu.RecvBuffer < WantedBufferSize || tu.SendBuffer < WantedBufferSize {
		t.Fatalf("as root: %s, want both buffers ≥ %d", tu, WantedBufferSize)
	}
	// A second pass finds the buffers large enough and changes nothing.
	if again := tuneUDP(pc); again.RecvBuffer != tu.RecvBuffer || again.Forced {
		t.Fatalf("second tuning: %s", again)
	}
}

// notASocket is a PacketConn whose buffers cannot be set.
type notASocket struct{ net.PacketConn }

// TestServer3_ReportsRefusedTuning: a socket the system will not tune is
// served anyway, with a warning at start-up and the report in Tuning().
func TestServer3_ReportsRefusedTuning(t *testing.T) {
	var logs logtest.Buffer
	p := newPKI(t, td)
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ts := serveOn(t, notASocket{pc}, p.Source(serverID), bundles(p), ServerConfig{
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	waitFor(t, "tuning report", func() bool { return ts.srv.Tuning().Err != nil })
	if tu := ts.srv.Tuning(); tu.GSO || tu.OK() {
		t.Fatalf("Tuning() = %s, want a refusal without GSO", tu)
	}
	waitFor(t, "warning", func() bool { return strings.Contains(logs.String(), "level=WARN") })
	if !strings.Contains(logs.String(), "tuning refused") {
		t.Fatalf("log: %s", logs.String())
	}
	// And it still serves.
	up := startUpstream(t, echo)
	raw := dialRaw(t, ts, p.Source(clientID), bundles(p))
	if got := raw.request(t, rawRequest("CONNECT", up.Addr().String(), nil)); got != 200 {
		t.Fatalf("status %d, want 200", got)
	}
}

// TestClient3_ReportsTuning: the client tunes each tunnel socket and
// reports the latest.
func TestClient3_ReportsTuning(t *testing.T) {
	up := startUpstream(t, echo)
	ts, cl := meshPair(t, ServerConfig{})
	if tu := cl.Tuning(); tu != (Tuning{}) {
		t.Fatalf("Tuning() before any connection = %s", tu)
	}
	c, err := cl.Dial(ctxT(t), target(ts, up.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if tu := cl.Tuning(); tu.RecvBuffer == 0 || tu.SendBuffer == 0 {
		t.Fatalf("Tuning() = %s", tu)
	}
	if st := ts.srv.Tuning(); st.RecvBuffer == 0 {
		t.Fatalf("server Tuning() = %s", st)
	}
	t.Logf("client: %s; server: %s", cl.Tuning(), ts.srv.Tuning())
}
