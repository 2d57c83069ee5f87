package hbone

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/net/http2/hpack"
)

// Request is a parsed HBONE CONNECT request.
type Request struct {
	// Authority is the original destination the tunnel is for.
	Authority netip.AddrPort
	// Protocol is the extended CONNECT protocol (RFC 8441 :protocol): ""
	// for a classic CONNECT carrying a TCP connection, ProtocolConnectUDP
	// for UDP datagrams carried as capsules (RFC 9298).
	Protocol string
	// Fields are the regular (non-pseudo) header fields as received. They
	// live as long as the stream, so they are kept compact; Header builds
	// the map form.
	Fields []hpack.HeaderField
}

// Header returns the regular request headers, canonicalized.
func (r Request) Header() http.Header {
	h := make(http.Header, len(r.Fields))
	for _, f := range r.Fields {
		k := http.CanonicalHeaderKey(f.Name)
		h[k] = append(h[k], f.Value)
	}
	return h
}

// Errors from ParseRequest; each maps to a 400 reply.
var (
	ErrNotConnect       = errors.New("method is not CONNECT")
	ErrBadAuthority     = errors.New(":authority is not ip:port")
	ErrBadPseudoHeader  = errors.New("unexpected or repeated pseudo-header")
	ErrForbiddenHeader  = errors.New("connection-specific header")
	ErrMissingAuthority = errors.New("missing :authority")
)

// ParseRequest validates the decoded header fields of a CONNECT request
// and returns the request. A classic CONNECT (RFC 9113 §8.5) has only
// :method and :authority; an extended CONNECT (RFC 8441) adds :protocol,
// :scheme and :path, checked by extendedFields.check (extended.go).
// The framer has already checked field names, values and pseudo-header order.
func ParseRequest(fields []hpack.HeaderField) (Request, error) {
	var (
		method, authority string
		seenMethod        bool
		seenAuthority     bool
		ext               extendedFields
		req               Request
	)
	for _, f := range fields {
		switch f.Name {
		case ":method":
			if seenMethod {
				return Request{}, fmt.Errorf("%w: %s", ErrBadPseudoHeader, f.Name)
			}
			seenMethod, method = true, f.Value
		case ":authority":
			if seenAuthority {
				return Request{}, fmt.Errorf("%w: %s", ErrBadPseudoHeader, f.Name)
			}
			seenAuthority, authority = true, f.Value
		case ":protocol", ":scheme", ":path":
			if err := ext.set(f); err != nil {
				return Request{}, err
			}
		default:
			if strings.HasPrefix(f.Name, ":") {
				return Request{}, fmt.Errorf("%w: %s", ErrBadPseudoHeader, f.Name)
			}
			if isConnectionSpecific(f) {
				return Request{}, fmt.Errorf("%w: %s", ErrForbiddenHeader, f.Name)
			}
			req.Fields = append(req.Fields, f)
		}
	}
	if ext.any() && ext.seen&hasProtocol == 0 {
		// :scheme or :path without :protocol: refused as before extended
		// CONNECT existed.
		return Request{}, fmt.Errorf("%w: %s", ErrBadPseudoHeader, ext.first)
	}
	if method != http.MethodConnect {
		return Request{}, fmt.Errorf("%w: %q", ErrNotConnect, method)
	}
	if !seenAuthority {
		return Request{}, ErrMissingAuthority
	}
	ap, err := ParseAuthority(authority)
	if err != nil {
		return Request{}, err
	}
	req.Authority = ap
	if ext.any() {
		if err := ext.check(&req); err != nil {
			return Request{}, err
		}
	}
	return req, nil
}

// ParseAuthority parses an HBONE :authority: a literal IP address and a
// non-zero port ("10.0.0.1:80", "[fd00::1]:443"). Host names are refused:
// the tunnel carries connections to addresses, never to names.
func ParseAuthority(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%w: %q", ErrBadAuthority, s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// isConnectionSpecific reports header fields HTTP/2 forbids (RFC 9113 §8.2.2).
func isConnectionSpecific(f hpack.HeaderField) bool {
	switch f.Name {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
		return true
	case "te":
		return f.Value != "trailers"
	}
	return false
}

// MaxHeaderListSize is the largest CONNECT request header list an HBONE
// server accepts, counted as RFC 9113 §6.5.2 does (HTTP/3 counts the same
// way, RFC 9114 §4.2.2).
const MaxHeaderListSize = maxHeaderListSize

// RequestFields returns the header fields of t's CONNECT request in wire
// order (:method, :authority, then t.Header lower-cased), or an error when
// they are over MaxHeaderListSize. Every transport sends these fields.
func (t Target) RequestFields() ([]hpack.HeaderField, error) {
	fields := requestFields(t.Authority, t.Header)
	if size := headerListSize(fields); size > maxHeaderListSize {
		return nil, fmt.Errorf("hbone: request headers are %d bytes, over the %d limit", size, maxHeaderListSize)
	}
	return fields, nil
}

// requestFields encodes a CONNECT request's header fields in wire order.
func requestFields(authority netip.AddrPort, h http.Header) []hpack.HeaderField {
	fields := make([]hpack.HeaderField, 0, 2+len(h))
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: http.MethodConnect},
		hpack.HeaderField{Name: ":authority", Value: authority.String()})
	for k, vs := range h {
		name := strings.ToLower(k)
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	return fields
}

// headerListSize is the HTTP/2 size of a header list (RFC 9113 §6.5.2).
func headerListSize(fields []hpack.HeaderField) int {
	n := 0
	for _, f := range fields {
		n += int(f.Size())
	}
	return n
}

// parseStatus extracts :status from a response header block.
func parseStatus(fields []hpack.HeaderField) (int, error) {
	for _, f := range fields {
		if f.Name == ":status" {
			code, err := strconv.Atoi(f.Value)
			if err != nil || code < 100 || code > 999 {
				return 0, fmt.Errorf("hbone: bad :status %q", f.Value)
			}
			return code, nil
		}
	}
	return 0, errors.New("hbone: response without :status")
}
