package hbone

// The read side of a connection: one goroutine decoding frames.

import (
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/net/http2"
)

// readLoop reads frames until the connection fails or closes.
func (c *conn) readLoop() {
	defer close(c.done)
	err := c.readFrames()
	if h2e, ok := err.(http2.ConnectionError); ok {
		err = connError{code: http2.ErrCode(h2e), reason: "protocol error"}
	}
	var ce connError
	if errors.As(err, &ce) {
		c.writeGoAway(ce.code, ce.reason)
		// Read on briefly so the peer's pending bytes do not turn our
		// close into a TCP reset that would destroy the GOAWAY unread.
		c.nc.SetReadDeadline(time.Now().Add(lingerTime))
		io.CopyN(io.Discard, c.br, lingerBytes)
	}
	if err == io.EOF {
		err = errConnClosed
	}
	c.fail(err)
}

func (c *conn) readFrames() error {
	first := true
	for {
		fh, err := c.fr.ReadFrameHeader()
		if err != nil {
			if err == http2.ErrFrameTooLarge {
				return connError{http2.ErrCodeFrameSize, "frame too large"}
			}
			return err
		}
		if first && fh.Type != http2.FrameSettings {
			return connError{http2.ErrCodeProtocol, "first frame is not SETTINGS"}
		}
		first = false
		if fh.Type == http2.FrameData {
			if err := c.readData(fh); err != nil {
				return err
			}
			continue
		}
		f, err := c.fr.ReadFrameForHeader(fh)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				// A malformed header block for one stream: reset it.
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			return err
		}
		if err := c.handleFrame(f); err != nil {
			return err
		}
	}
}

func (c *conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.onReset(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		if !c.pings.allow(maxPeerPings) {
			return connError{http2.ErrCodeEnhanceYourCalm, "ping flood"}
		}
		return c.writeControl(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.goingAway = true
		c.lastGoodID = f.LastStreamID
		var refused []*stream
		if c.role == roleClient {
			for id, s := range c.streams {
				if id > f.LastStreamID {
					refused = append(refused, s)
				}
			}
		}
		c.mu.Unlock()
		for _, s := range refused {
			s.abort(errRefused)
		}
		return nil
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "push promise"}
	default:
		// PRIORITY, PRIORITY_UPDATE and unknown frame types are ignored.
		return nil
	}
}

// readData reads a DATA frame's payload straight into pooled buffers and
// delivers it to its stream, enforcing flow control. Large payloads are read
// and delivered in pieces, so the first bytes reach the destination while the
// rest is still being decrypted, and each piece is still in cache when written.
func (c *conn) readData(fh http2.FrameHeader) error {
	if fh.StreamID == 0 {
		return connError{http2.ErrCodeProtocol, "DATA on stream 0"}
	}
	n := int(fh.Length)
	c.mu.Lock()
	c.recvWindow -= int64(n)
	if c.recvWindow < 0 {
		c.mu.Unlock()
		return connError{http2.ErrCodeFlowControl, "connection window exceeded"}
	}
	s := c.streams[fh.StreamID]
	idle := s == nil && !c.isKnownIDLocked(fh.StreamID)
	c.mu.Unlock()
	if idle {
		return connError{http2.ErrCodeProtocol, "DATA on idle stream"}
	}
	end := fh.Flags.Has(http2.FlagDataEndStream)

	if fh.Flags.Has(http2.FlagDataPadded) {
		// Padded frames (never sent by us) are read whole, then unpadded.
		bp := getBuf(max(n, 1))
		data := (*bp)[:n]
		if _, err := io.ReadFull(c.br, data); err != nil {
			putBuf(bp)
			return err
		}
		if n == 0 || int(data[0]) >= n {
			putBuf(bp)
			return connError{http2.ErrCodeProtocol, "bad DATA padding"}
		}
		pad := int(data[0]) + 1
		c.deliver(s, bp, data[1:n-int(data[0])], n, pad, end)
		return nil
	}
	for first := true; first || n > 0; first = false {
		piece := min(n, pieceSize)
		var bp *[]byte
		var data []byte
		if piece > 0 {
			bp = getBuf(piece)
			data = (*bp)[:piece]
			if _, err := io.ReadFull(c.br, data); err != nil {
				putBuf(bp)
				return err
			}
		}
		n -= piece
		if !c.deliver(s, bp, data, piece, 0, end && n == 0) {
			s = nil // reset: the rest of the frame is read and dropped
		}
	}
	return nil
}

// pieceSize is the most of one DATA frame read before delivering it.
const pieceSize = 64 << 10

// deliver hands a received payload to s (nil: a closed stream) and returns
// the flow-control credit for what was consumed. windowLen is what the
// payload counts against the windows, pad of it is padding. It reports
// whether the stream is still receiving.
func (c *conn) deliver(s *stream, bp *[]byte, data []byte, windowLen, pad int, end bool) bool {
	if s == nil {
		putBuf(bp)
		c.returnCredit(nil, windowLen)
		return false
	}
	queued, delivered, err := s.pushData(bp, data, windowLen, end)
	if err != nil {
		putBuf(bp)
		c.returnCredit(nil, windowLen)
		c.resetStream(s.id, err.(http2.StreamError).Code)
		return false
	}
	credit := pad + delivered
	if !queued {
		putBuf(bp)
		credit = windowLen // delivered whole, or dropped because nobody will read it
	}
	if credit > 0 {
		c.returnCredit(s, credit)
	}
	if end {
		c.maybeRetire(s)
	}
	return true
}

// isKnownIDLocked reports whether id belongs to a stream that was opened at
// some point (and may now be closed). c.mu must be held.
func (c *conn) isKnownIDLocked(id uint32) bool {
	if c.role == roleServer {
		return id%2 == 1 && id <= c.maxPeerID
	}
	return id%2 == 1 && id < c.nextStreamID
}

func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if c.role == roleClient {
		c.mu.Lock()
		s := c.streams[id]
		c.mu.Unlock()
		if s == nil {
			return nil // response for a stream we gave up on
		}
		s.onResponse(f.Fields, f.StreamEnded())
		if f.StreamEnded() {
			c.maybeRetire(s)
		}
		return nil
	}
	c.mu.Lock()
	if id%2 == 0 || id <= c.maxPeerID {
		c.mu.Unlock()
		if _, ok := c.streamByID(id); ok {
			return connError{http2.ErrCodeProtocol, "trailers are not supported"}
		}
		return connError{http2.ErrCodeProtocol, "HEADERS on a closed or even stream"}
	}
	c.maxPeerID = id
	if c.goingAway || c.active >= maxConcurrentStream {
		c.mu.Unlock()
		return c.writeControl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
	}
	if f.Truncated {
		c.mu.Unlock()
		return c.writeHeaders(id, statusFields(400), true) // header list over our limit
	}
	s := c.newStreamLocked(id)
	c.active++
	c.stopIdleLocked()
	c.mu.Unlock()
	c.handler.handleStream(c, s, f.Fields, f.StreamEnded())
	return nil
}

func (c *conn) streamByID(id uint32) (*stream, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.streams[id]
	return s, ok
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if !c.settings.allow(maxPeerSettings) {
		return connError{http2.ErrCodeEnhanceYourCalm, "settings flood"}
	}
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		return connError{http2.ErrCodeProtocol, err.Error()}
	}
	c.mu.Lock()
	var withdrawn bool
	f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerWindow
			c.peerWindow = int64(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = int(s.Val)
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = int(min(s.Val, maxConcurrentStream))
		case http2.SettingEnableConnectProtocol:
			withdrawn = withdrawn || c.peerConnectProtocol && s.Val == 0
			c.peerConnectProtocol = s.Val == 1
		}
		return nil
	})
	c.sendCond.Broadcast()
	already := c.peerSettingsApplied
	c.peerSettingsApplied = true
	c.mu.Unlock()
	if withdrawn {
		// RFC 8441 §3: a sender must not turn it off once on.
		return connError{http2.ErrCodeProtocol, "ENABLE_CONNECT_PROTOCOL withdrawn"}
	}
	if !already {
		close(c.peerSettings)
	}
	return c.writeControl(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		if c.sendWindow+inc > maxWindow {
			return connError{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		c.sendWindow += inc
		c.sendCond.Broadcast()
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		return nil
	}
	if s.sendWindow+inc > maxWindow {
		go c.resetStream(s.id, http2.ErrCodeFlowControl)
		return nil
	}
	s.sendWindow += inc
	c.sendCond.Broadcast()
	return nil
}

func (c *conn) onReset(f *http2.RSTStreamFrame) error {
	s, ok := c.streamByID(f.StreamID)
	// Rapid reset: a client cancelling streams before they were answered
	// makes the server do work for nothing.
	if c.role == roleServer && (!ok || !s.answered.Load()) && !c.resets.allow(maxPeerResets) {
		return connError{http2.ErrCodeEnhanceYourCalm, "too many stream resets"}
	}
	if !ok {
		return nil
	}
	if f.ErrCode == http2.ErrCodeRefusedStream {
		s.abort(errRefused)
	} else {
		s.abort(fmt.Errorf("hbone: stream reset by peer: %v", f.ErrCode))
	}
	c.retire(s)
	return nil
}
