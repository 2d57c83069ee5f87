package hbone3

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambientmesh/ambient/internal/identity"
)

// rawClient speaks HTTP/3 to a tunnel server with arbitrary requests.
type rawClient struct {
	cc      *http3.ClientConn
	timeout time.Duration // per request
}

func dialRaw(t testing.TB, ts *tunnelServer, svids x509svid.Source, trust x509bundle.Source) *rawClient {
	t.Helper()
	tlsCfg := identity.ClientConfig(svids, trust, serverID, identity.WithNextProtos(identity.ALPNHTTP3))
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pc}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	qc, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(ts.addr), tlsCfg, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		qc.CloseWithError(0, "")
		tr.Close()
		pc.Close()
	})
	return &rawClient{cc: (&http3.Transport{DisableCompression: true}).NewClientConn(qc), timeout: testTimeout}
}

func rawRequest(method, authority string, h http.Header) *http.Request {
	if h == nil {
		h = http.Header{}
	}
	u := &url.URL{Host: authority}
	if method != http.MethodConnect {
		u.Scheme, u.Path = "https", "/"
	}
	return &http.Request{Method: method, Host: authority, URL: u, Header: h, Proto: "HTTP/1.1"}
}

// request sends req on a new stream and returns the status, or -1 when the
// stream failed without one.
func (rc *rawClient) request(t testing.TB, req *http.Request) int {
	t.Helper()
	status, err := rc.try(req)
	if err != nil {
		t.Fatal(err)
	}
	return status
}

// try is request reporting a request the client could not send as an error.
func (rc *rawClient) try(req *http.Request) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rc.timeout)
	defer cancel()
	rs, err := rc.cc.OpenRequestStream(ctx)
	if err != nil {
		return 0, err
	}
	defer func() {
		rs.CancelRead(codeCancel)
		rs.CancelWrite(codeCancel)
	}()
	rs.SetDeadline(time.Now().Add(rc.timeout))
	if err := rs.SendRequestHeader(req); err != nil {
		return 0, err
	}
	resp, err := rs.ReadResponse()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, fmt.Errorf("no response within %v: %w", rc.timeout, err)
	}
	if err != nil {
		return -1, nil
	}
	return resp.StatusCode, nil
}
