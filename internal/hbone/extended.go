package hbone

// Extended CONNECT (RFC 8441) for HBONE: the request side. Only
// connect-udp (RFC 9298) is served.

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"golang.org/x/net/http2/hpack"

	"github.com/ambientmesh/ambient/internal/connectudp"
)

// ProtocolConnectUDP is Request.Protocol for a UDP tunnel: :protocol
// connect-udp, the stream's DATA carrying capsules (RFC 9298, RFC 9297).
const ProtocolConnectUDP = connectudp.Protocol

// Errors from ParseRequest for extended CONNECT requests. ErrUnknownProtocol
// answers 501 (the request may be fine, this server does not implement
// that protocol); the others answer 400.
var (
	ErrUnknownProtocol        = errors.New("unsupported :protocol")
	ErrBadExtendedConnect     = errors.New("extended CONNECT needs :scheme https and a :path")
	ErrMissingCapsuleProtocol = errors.New("connect-udp without capsule-protocol: ?1")
	ErrTargetMismatch         = errors.New(":path and :authority name different targets")
)

// extendedFields are the extended CONNECT pseudo-headers of a request.
type extendedFields struct {
	protocol, scheme, path string
	seen                   uint8  // hasProtocol | hasScheme | hasPath
	first                  string // the first of them seen, for errors
}

const (
	hasProtocol uint8 = 1 << iota
	hasScheme
	hasPath
)

func (e *extendedFields) set(f hpack.HeaderField) error {
	var bit uint8
	switch f.Name {
	case ":protocol":
		bit, e.protocol = hasProtocol, f.Value
	case ":scheme":
		bit, e.scheme = hasScheme, f.Value
	default:
		bit, e.path = hasPath, f.Value
	}
	if e.seen&bit != 0 {
		return fmt.Errorf("%w: %s", ErrBadPseudoHeader, f.Name)
	}
	if e.seen == 0 {
		e.first = f.Name
	}
	e.seen |= bit
	return nil
}

func (e *extendedFields) any() bool { return e.seen != 0 }

// check validates an extended CONNECT whose :method and :authority are
// already parsed into req, and sets req.Protocol.
func (e *extendedFields) check(req *Request) error {
	if e.protocol != ProtocolConnectUDP {
		return fmt.Errorf("%w: %q", ErrUnknownProtocol, e.protocol)
	}
	if e.seen&hasScheme == 0 || e.scheme != "https" || e.seen&hasPath == 0 {
		return ErrBadExtendedConnect
	}
	target, err := connectudp.ParsePath(e.path)
	if err != nil {
		return err
	}
	target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	if target != req.Authority {
		return fmt.Errorf("%w: %s and %s", ErrTargetMismatch, target, req.Authority)
	}
	if !hasCapsuleProtocol(req.Fields) {
		return ErrMissingCapsuleProtocol
	}
	req.Protocol = ProtocolConnectUDP
	return nil
}

// hasCapsuleProtocol reports a Capsule-Protocol field that is the
// structured-field Boolean true (RFC 9297 §3.4), parameters ignored. A
// field of any other value counts as absent, as RFC 9297 says.
func hasCapsuleProtocol(fields []hpack.HeaderField) bool {
	for _, f := range fields {
		if f.Name == "capsule-protocol" && capsuleProtocolTrue(f.Value) {
			return true
		}
	}
	return false
}

func capsuleProtocolTrue(v string) bool {
	// Parameters (after ';') are ignored: RFC 9297 defines none.
	item, _, _ := strings.Cut(strings.Trim(v, " \t"), ";")
	return item == "?1"
}

// connectUDPFields are the header fields of t's connect-udp request in
// wire order: pseudo-headers, capsule-protocol, then t.Header.
func connectUDPFields(t Target) ([]hpack.HeaderField, error) {
	fields := make([]hpack.HeaderField, 0, 6+len(t.Header))
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: http.MethodConnect},
		hpack.HeaderField{Name: ":protocol", Value: ProtocolConnectUDP},
		hpack.HeaderField{Name: ":scheme", Value: "https"},
		hpack.HeaderField{Name: ":authority", Value: t.Authority.String()},
		hpack.HeaderField{Name: ":path", Value: connectudp.Path(t.Authority)},
		hpack.HeaderField{Name: "capsule-protocol", Value: "?1"})
	for k, vs := range t.Header {
		name := strings.ToLower(k)
		if name == "capsule-protocol" {
			continue
		}
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	if size := headerListSize(fields); size > maxHeaderListSize {
		return nil, fmt.Errorf("hbone: request headers are %d bytes, over the %d limit", size, maxHeaderListSize)
	}
	return fields, nil
}

// responseFields are a reply's header fields: :status, and for a
// connect-udp tunnel that opened, capsule-protocol.
func responseFields(status int, protocol string) []hpack.HeaderField {
	fields := statusFields(status)
	if status == 200 && protocol == ProtocolConnectUDP {
		fields = append(fields, hpack.HeaderField{Name: "capsule-protocol", Value: "?1"})
	}
	return fields
}
