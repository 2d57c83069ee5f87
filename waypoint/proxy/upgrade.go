package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// Protocol upgrades (RFC 9110 §7.8), WebSocket above all: an HTTP/1.1
// request with "Connection: upgrade" and an Upgrade header is forwarded
// with both, after the same policy, routing and rate limits as any
// request; a 101 answer turns the request into a byte stream both ways
// for as long as either side keeps it. The route's timeouts bound the
// handshake only, as for Envoy's upgraded connections. HTTP/2 clients
// (extended CONNECT, RFC 8441) are not upgraded: their Upgrade header is
// dropped as a connection-specific field.

// upgradeType is the protocol r asks to switch to, or "".
func upgradeType(r *http.Request) string {
	if r.ProtoMajor != 1 || !httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") {
		return ""
	}
	return r.Header.Get("Upgrade")
}

// switchProtocols completes an upgrade the upstream accepted (101): the
// client's connection is taken over, told 101 with the upstream's headers,
// and joined to the upstream connection until both directions end.
func (p *Proxy) switchProtocols(rec *reqRecord, resp *http.Response, want string) {
	upConn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok || !strings.EqualFold(resp.Header.Get("Upgrade"), want) {
		resp.Body.Close()
		rec.flow.Error = "upstream switched to " + resp.Header.Get("Upgrade") + ", not the requested " + want
		p.respond(rec, http.StatusBadGateway, bodyConnFailed, flagConnFailure)
		return
	}
	defer upConn.Close()
	down, brw, err := http.NewResponseController(&rec.w).Hijack()
	if err != nil {
		rec.flow.Error = "taking over the client's connection: " + err.Error()
		p.respond(rec, http.StatusInternalServerError, "", flagNone)
		return
	}
	defer down.Close()
	rec.w.code = http.StatusSwitchingProtocols

	h := resp.Header.Clone()
	for _, k := range hopByHop {
		if k != "Connection" && k != "Upgrade" {
			delete(h, k)
		}
	}
	h["Connection"] = []string{"Upgrade"}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	h.Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		rec.flags = flagDownstreamReset
		return
	}
	toUp, toDown := joinStreams(down, brw.Reader, upConn)
	rec.body.n += toUp
	rec.w.n += toDown
}

// joinStreams copies client → upstream (starting with what the client's
// reader already buffered) and upstream → client until both directions
// end, half-closing each side's write when its source ends.
func joinStreams(down net.Conn, downR *bufio.Reader, up io.ReadWriteCloser) (toUp, toDown int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		toDown, _ = io.Copy(down, up)
		closeWrite(down)
	}()
	toUp, _ = io.Copy(up, downR)
	closeWrite(up)
	wg.Wait()
	return toUp, toDown
}

// closeWrite half-closes c, or closes it when it cannot half-close.
func closeWrite(c io.Closer) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		return
	}
	c.Close()
}
