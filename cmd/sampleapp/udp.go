package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"
)

// UDP: the sample also answers datagrams on its HTTP port number (UDP), so
// UDP through the mesh can be shown with the same services. Each datagram
// gets one back: the Reply JSON, RemoteAddr the datagram's source and
// Proto "udp". /call?url=udp://host:port sends one datagram and shows the
// answer.

// maxDatagram bounds what the sample reads and answers.
const maxDatagram = 8 << 10

// serveUDP answers datagrams on pc until ctx ends; it closes pc.
func (s *Server) serveUDP(ctx context.Context, pc net.PacketConn) {
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	defer pc.Close()
	buf := make([]byte, maxDatagram)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("udp read failed; no longer answering UDP", "err", err)
			}
			return
		}
		rep := Reply{Service: s.cfg.Name, Version: s.cfg.Version, Pod: s.cfg.Pod, Namespace: s.cfg.Namespace,
			Node: s.cfg.Node, RemoteAddr: from.String(), Proto: "udp"}
		b, _ := json.Marshal(rep)
		if _, err := pc.WriteTo(b, from); err != nil {
			s.log.Debug("udp reply", "to", from.String(), "err", err)
		}
	}
}

// callUDP sends one datagram to hostport and waits for the answer.
func (s *Server) callUDP(ctx context.Context, hostport string, up Upstream) Upstream {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", hostport)
	if err != nil {
		up.Error = err.Error()
		return up
	}
	defer c.Close()
	if deadline, ok := ctx.Deadline(); ok {
		c.SetDeadline(deadline)
	} else {
		c.SetDeadline(time.Now().Add(s.cfg.CallTimeout))
	}
	if _, err := c.Write([]byte("ping from " + s.cfg.Name)); err != nil {
		up.Error = err.Error()
		return up
	}
	buf := make([]byte, maxDatagram)
	n, err := c.Read(buf)
	if err != nil {
		up.Error = err.Error()
		s.log.Info("upstream call failed", "url", "udp://"+hostport, "err", err)
		return up
	}
	up.Status = http.StatusOK
	if json.Valid(buf[:n]) {
		up.Body = append(json.RawMessage(nil), buf[:n]...)
	} else {
		up.Body, _ = json.Marshal(string(buf[:n]))
	}
	return up
}
