package cniproto

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func validAdd() AddPod {
	return AddPod{
		UID:       "3f0e9c2a-7d1b-4c1e-9a55-0d6f2f7f1a01",
		Namespace: "default",
		Name:      "web-0",
		IPs:       []string{"10.244.1.2", "fd00::2"},
		NetnsPath: "/var/run/netns/cni-1234",
	}
}

func TestEncodeDecode_RoundTripsEveryMessage(t *testing.T) {
	for _, m := range []Message{
		validAdd(),
		DelPod{UID: "abc"},
		Ack{OK: true},
		Ack{Error: "pod netns is not a network namespace"},
	} {
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode(%#v): %v", m, err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(%s): %v", b, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip: got %#v, want %#v", got, m)
		}
	}
}

func TestEncode_WireFormat(t *testing.T) {
	b, err := Encode(DelPod{UID: "u1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"v":1,"type":"DelPod","body":{"uid":"u1"}}`; string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
}

func TestEncode_TruncatesLongAckError(t *testing.T) {
	b, err := Encode(Ack{Error: strings.Repeat("x", MaxErrorLen+100)})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(m.(Ack).Error); got != MaxErrorLen {
		t.Errorf("Error length %d, want %d", got, MaxErrorLen)
	}
}

func TestEncode_RejectsInvalidMessages(t *testing.T) {
	mod := func(f func(*AddPod)) AddPod { m := validAdd(); f(&m); return m }
	for name, m := range map[string]Message{
		"nil":             nil,
		"empty uid":       mod(func(m *AddPod) { m.UID = "" }),
		"uid with slash":  mod(func(m *AddPod) { m.UID = "../etc" }),
		"uid dot":         mod(func(m *AddPod) { m.UID = ".." }),
		"uid too long":    mod(func(m *AddPod) { m.UID = strings.Repeat("a", MaxUIDLen+1) }),
		"no namespace":    mod(func(m *AddPod) { m.Namespace = "" }),
		"no name":         mod(func(m *AddPod) { m.Name = "" }),
		"long name":       mod(func(m *AddPod) { m.Name = strings.Repeat("n", MaxNameLen+1) }),
		"bad ip":          mod(func(m *AddPod) { m.IPs = []string{"10.0.0.300"} }),
		"too many ips":    mod(func(m *AddPod) { m.IPs = make([]string, MaxIPs+1) }),
		"relative netns":  mod(func(m *AddPod) { m.NetnsPath = "netns/x" }),
		"empty netns":     mod(func(m *AddPod) { m.NetnsPath = "" }),
		"del without uid": DelPod{},
		"ok ack w/ error": Ack{OK: true, Error: "boom"},
	} {
		if _, err := Encode(m); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Encode error %v, want ErrInvalid", name, err)
		}
	}
}

func TestDecode_RejectsMalformedPackets(t *testing.T) {
	for name, in := range map[string]string{
		"not json":      `hello`,
		"wrong version": `{"v":2,"type":"DelPod","body":{"uid":"u1"}}`,
		"no version":    `{"type":"DelPod","body":{"uid":"u1"}}`,
		"unknown type":  `{"v":1,"type":"Reboot","body":{}}`,
		"no body":       `{"v":1,"type":"DelPod"}`,
		"null body":     `{"v":1,"type":"Ack","body":null}`,
		"body type":     `{"v":1,"type":"DelPod","body":{"uid":7}}`,
		"invalid body":  `{"v":1,"type":"DelPod","body":{"uid":"a/b"}}`,
		"too large":     `{"v":1,"type":"DelPod","body":{"uid":"u1","pad":"` + strings.Repeat("p", MaxMessageSize) + `"}}`,
	} {
		if _, err := Decode([]byte(in)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Decode error %v, want ErrInvalid", name, err)
		}
	}
}

func TestDecode_IgnoresUnknownBodyFields(t *testing.T) {
	m, err := Decode([]byte(`{"v":1,"type":"DelPod","body":{"uid":"u1","reason":"evicted"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if m != (DelPod{UID: "u1"}) {
		t.Errorf("got %#v", m)
	}
}
