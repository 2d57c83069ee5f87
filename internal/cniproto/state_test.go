package cniproto

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func validState() PodState {
	return PodState{
		UID: "u-1", Namespace: "default", Name: "web-0",
		IPs: []string{"10.244.1.2"}, ContainerID: "c1",
		NetnsPath: "/var/run/netns/cni-1", NetnsInode: 4026532000,
	}
}

func TestState_EncodeDecodeRoundTrip(t *testing.T) {
	b, err := EncodeState(validState())
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, validState()) {
		t.Errorf("got %#v", got)
	}
}

func TestState_DecodeRejectsInvalid(t *testing.T) {
	for name, in := range map[string]string{
		"not json":   `{`,
		"no uid":     `{"namespace":"a","name":"b","netnsPath":"/x"}`,
		"no netns":   `{"uid":"u","namespace":"a","name":"b"}`,
		"bad ip":     `{"uid":"u","namespace":"a","name":"b","netnsPath":"/x","ips":["x"]}`,
		"traversal":  `{"uid":"../u","namespace":"a","name":"b","netnsPath":"/x"}`,
		"wrong type": `{"uid":"u","namespace":"a","name":"b","netnsPath":"/x","netnsInode":"1"}`,
	} {
		if _, err := DecodeState([]byte(in)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: error %v, want ErrInvalid", name, err)
		}
	}
}

func TestState_WriteReadListRemove(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pods")
	s := validState()
	if err := WriteState(dir, s); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "u-1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := ReadState(dir, "u-1")
	if err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("ReadState = %#v, %v", got, err)
	}

	// A file whose name disagrees with its uid, junk, and files that are
	// not state files.
	s2 := s
	s2.UID = "u-2"
	b, _ := EncodeState(s2)
	os.WriteFile(filepath.Join(dir, "u-3.json"), b, 0o600)
	os.WriteFile(filepath.Join(dir, "junk.json"), []byte("{"), 0o600)
	os.WriteFile(filepath.Join(dir, ".u-1.tmp-1"), b, 0o600)
	os.WriteFile(filepath.Join(dir, "README"), nil, 0o600)

	ents, err := ListStates(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]StateEntry{}
	for _, e := range ents {
		byName[filepath.Base(e.Path)] = e
	}
	if len(byName) != 3 {
		t.Fatalf("ListStates found %v, want junk.json, u-1.json, u-3.json", byName)
	}
	if e := byName["u-1.json"]; e.Err != nil || e.State.UID != "u-1" {
		t.Errorf("u-1.json: %+v", e)
	}
	for _, n := range []string{"u-3.json", "junk.json"} {
		if !errors.Is(byName[n].Err, ErrInvalid) {
			t.Errorf("%s: error %v, want ErrInvalid", n, byName[n].Err)
		}
	}
	if _, err := ListStates(dir, 2); err == nil {
		t.Error("ListStates with limit 2 over 3 files: no error")
	}

	if err := RemoveState(dir, "u-1"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveState(dir, "u-1"); err != nil {
		t.Errorf("removing a missing state: %v", err)
	}
	if _, err := ReadState(dir, "u-1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadState after remove: %v, want ErrNotExist", err)
	}
	if ents, err := ListStates(filepath.Join(dir, "missing"), 0); err != nil || len(ents) != 0 {
		t.Errorf("ListStates(missing dir) = %v, %v", ents, err)
	}
}
