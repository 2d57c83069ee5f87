package cniproto

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
)

// Kind names a message type on the wire.
type Kind string

// Message kinds.
const (
	KindAddPod Kind = "AddPod"
	KindDelPod Kind = "DelPod"
	KindAck    Kind = "Ack"
)

// Message is one of AddPod, DelPod or Ack.
type Message interface {
	Kind() Kind
	// FDs is the number of file descriptors the message carries.
	FDs() int
	validate() error
}

// AddPod announces a pod's network namespace. It travels with the
// namespace's file descriptor.
type AddPod struct {
	UID       string   `json:"uid"`
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	IPs       []string `json:"ips,omitempty"`
	NetnsPath string   `json:"netnsPath"`
}

// DelPod says a pod is gone.
type DelPod struct {
	UID string `json:"uid"`
}

// Ack answers a request.
type Ack struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Kind implements Message.
func (AddPod) Kind() Kind { return KindAddPod }

// Kind implements Message.
func (DelPod) Kind() Kind { return KindDelPod }

// Kind implements Message.
func (Ack) Kind() Kind { return KindAck }

// FDs implements Message: AddPod carries the pod's netns descriptor.
func (AddPod) FDs() int { return 1 }

// FDs implements Message.
func (DelPod) FDs() int { return 0 }

// FDs implements Message.
func (Ack) FDs() int { return 0 }

func (m AddPod) validate() error {
	if err := ValidateUID(m.UID); err != nil {
		return err
	}
	if err := validatePod(m.Namespace, m.Name, m.IPs); err != nil {
		return err
	}
	return validatePath("netnsPath", m.NetnsPath)
}

func (m DelPod) validate() error { return ValidateUID(m.UID) }

func (m Ack) validate() error {
	if m.OK && m.Error != "" {
		return fmt.Errorf("%w: Ack with ok=true and an error", ErrInvalid)
	}
	return nil
}

func validatePod(namespace, name string, ips []string) error {
	for _, f := range []struct{ what, v string }{{"namespace", namespace}, {"name", name}} {
		if f.v == "" {
			return fmt.Errorf("%w: empty pod %s", ErrInvalid, f.what)
		}
		if len(f.v) > MaxNameLen {
			return fmt.Errorf("%w: pod %s longer than %d bytes", ErrInvalid, f.what, MaxNameLen)
		}
	}
	if len(ips) > MaxIPs {
		return fmt.Errorf("%w: %d pod IPs, at most %d", ErrInvalid, len(ips), MaxIPs)
	}
	for _, ip := range ips {
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Errorf("%w: pod IP %q: %v", ErrInvalid, ip, err)
		}
	}
	return nil
}

func validatePath(what, p string) error {
	if p == "" || !filepath.IsAbs(p) {
		return fmt.Errorf("%w: %s %q is not an absolute path", ErrInvalid, what, p)
	}
	if len(p) > MaxPathLen {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, MaxPathLen)
	}
	return nil
}

type envelope struct {
	V    int             `json:"v"`
	Type Kind            `json:"type"`
	Body json.RawMessage `json:"body"`
}

// Encode validates m and returns its wire form. An Ack's Error is
// truncated to MaxErrorLen bytes.
func Encode(m Message) ([]byte, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: nil message", ErrInvalid)
	}
	if a, ok := m.(Ack); ok && len(a.Error) > MaxErrorLen {
		a.Error = a.Error[:MaxErrorLen]
		m = a
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("cniproto: encode %s: %w", m.Kind(), err)
	}
	body, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("cniproto: encode %s: %w", m.Kind(), err)
	}
	b, err := json.Marshal(envelope{V: Version, Type: m.Kind(), Body: body})
	if err != nil {
		return nil, fmt.Errorf("cniproto: encode %s: %w", m.Kind(), err)
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("cniproto: encode %s: %w: %d bytes, at most %d", m.Kind(), ErrInvalid, len(b), MaxMessageSize)
	}
	return b, nil
}

// Decode parses and validates one message in wire form.
func Decode(b []byte) (Message, error) {
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("cniproto: decode: %w: %d bytes, at most %d", ErrInvalid, len(b), MaxMessageSize)
	}
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("cniproto: decode: %w: %v", ErrInvalid, err)
	}
	if env.V != Version {
		return nil, fmt.Errorf("cniproto: decode: %w: protocol version %d, this side speaks %d (upgrade ztunnel and ambient-cni together)", ErrInvalid, env.V, Version)
	}
	var (
		m   Message
		err error
	)
	switch env.Type {
	case KindAddPod:
		var v AddPod
		err = unmarshalBody(env.Body, &v)
		m = v
	case KindDelPod:
		var v DelPod
		err = unmarshalBody(env.Body, &v)
		m = v
	case KindAck:
		var v Ack
		err = unmarshalBody(env.Body, &v)
		m = v
	default:
		return nil, fmt.Errorf("cniproto: decode: %w: unknown message type %q", ErrInvalid, env.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("cniproto: decode %s: %w", env.Type, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("cniproto: decode %s: %w", env.Type, err)
	}
	return m, nil
}

func unmarshalBody(body json.RawMessage, v any) error {
	if len(bytes.TrimSpace(body)) == 0 || bytes.Equal(bytes.TrimSpace(body), []byte("null")) {
		return fmt.Errorf("%w: missing body", ErrInvalid)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}
