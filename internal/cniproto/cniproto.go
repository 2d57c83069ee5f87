// Package cniproto is the protocol between the ambient-cni plugin
// (cmd/ambient-cni) and ztunnel's CNI server (ztunnel/cniserver), and the
// format of the pod state files they share.
//
// # Transport
//
// ztunnel listens on a unix socket of type SOCK_SEQPACKET (Go network
// "unixpacket"), by default /var/run/ambient/ztunnel.sock, mode 0600. The
// plugin dials it once per request: it sends one request packet, reads one
// Ack packet, and closes the connection. SOCK_SEQPACKET keeps message
// boundaries, so every packet is exactly one message and a file descriptor
// passed with SCM_RIGHTS is attached to exactly that message.
//
// # Messages
//
// Every packet is one JSON object of at most MaxMessageSize bytes:
//
//	{"v":1,"type":"AddPod","body":{"uid":"…","namespace":"…","name":"…","ips":["10.244.1.2"],"netnsPath":"/var/run/netns/cni-…"}}
//	{"v":1,"type":"DelPod","body":{"uid":"…"}}
//	{"v":1,"type":"Ack","body":{"ok":false,"error":"…"}}
//
// An AddPod packet carries exactly one file descriptor in an SCM_RIGHTS
// control message: the pod's network namespace, opened read-only by the
// plugin. The descriptor, not netnsPath, is authoritative; netnsPath is for
// logs and for the state file. DelPod and Ack carry no descriptor; a packet
// with the wrong number of descriptors is rejected and any descriptors it
// carried are closed. A version other than Version is rejected. Unknown
// fields in a body are ignored, so fields may be added without a version
// bump; removing or changing the meaning of one needs a new version.
//
// The server answers every request with an Ack. OK=false means the request
// was understood and refused (Error says why); the plugin reports it. A
// plugin that cannot connect, or gets no answer within its timeout, treats
// ztunnel as unavailable (ErrUnavailable) and relies on the state file.
//
// # State files
//
// Next to the socket protocol the plugin records every pod it set up in a
// state directory (by default /var/run/ambient/pods), one JSON file per pod
// named <uid>.json (PodState), written atomically on ADD and removed on
// DEL. The state directory is how ztunnel recovers its pods after a
// restart, or learns of pods added while it was not running: on start the
// server re-opens every recorded network namespace that still exists and
// deletes the entries whose namespace is gone.
package cniproto

import (
	"errors"
	"fmt"
	"regexp"
)

// Version is the protocol version carried in every message.
const Version = 1

// Limits. Messages and state files larger than these are rejected.
const (
	MaxMessageSize   = 16 << 10 // bytes of one packet's JSON
	MaxStateFileSize = 16 << 10 // bytes of one state file
	MaxIPs           = 16       // addresses per pod
	MaxUIDLen        = 128
	MaxNameLen       = 253 // Kubernetes object names (DNS subdomain)
	MaxPathLen       = 4096
	MaxErrorLen      = 1024 // Ack.Error is truncated to this on encode
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrInvalid marks a malformed message, state file or field.
	ErrInvalid = errors.New("cniproto: invalid")
	// ErrUnavailable marks a request that could not reach ztunnel: the
	// socket is missing, nobody listens, or no answer came in time.
	ErrUnavailable = errors.New("cniproto: ztunnel unavailable")
	// ErrRejected marks a request that ztunnel answered with OK=false.
	ErrRejected = errors.New("cniproto: ztunnel rejected the request")
)

// uidRE admits Kubernetes UIDs (UUIDs) and similar opaque ids. It excludes
// '/' and a leading '.', so a valid UID is always a safe file name.
var uidRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ValidateUID reports whether uid can name a pod on the wire and in the
// state directory.
func ValidateUID(uid string) error {
	if uid == "" {
		return fmt.Errorf("%w: empty pod uid", ErrInvalid)
	}
	if len(uid) > MaxUIDLen {
		return fmt.Errorf("%w: pod uid longer than %d bytes", ErrInvalid, MaxUIDLen)
	}
	if !uidRE.MatchString(uid) {
		return fmt.Errorf("%w: pod uid %q: want letters, digits, '.', '_' or '-'", ErrInvalid, uid)
	}
	return nil
}
