package cniproto

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// PodState is one pod's state file, <StateDir>/<UID>.json. See the package
// comment for its role in restart recovery.
type PodState struct {
	UID         string   `json:"uid"`
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	IPs         []string `json:"ips,omitempty"`
	ContainerID string   `json:"containerID,omitempty"` // CNI_CONTAINERID of the sandbox
	NetnsPath   string   `json:"netnsPath"`
	// NetnsInode is the inode of the namespace at ADD time. A recovered
	// path whose namespace has another inode (a reused /proc/PID path) is
	// stale. Zero means unknown.
	NetnsInode uint64 `json:"netnsInode,omitempty"`
}

const stateSuffix = ".json"

func (s PodState) validate() error {
	if err := ValidateUID(s.UID); err != nil {
		return err
	}
	if err := validatePod(s.Namespace, s.Name, s.IPs); err != nil {
		return err
	}
	return validatePath("netnsPath", s.NetnsPath)
}

// EncodeState validates s and returns its file contents.
func EncodeState(s PodState) ([]byte, error) {
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("cniproto: pod state: %w", err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("cniproto: pod state %s: %w", s.UID, err)
	}
	if len(b) > MaxStateFileSize {
		return nil, fmt.Errorf("cniproto: pod state %s: %w: %d bytes, at most %d", s.UID, ErrInvalid, len(b), MaxStateFileSize)
	}
	return append(b, '\n'), nil
}

// DecodeState parses and validates a state file's contents.
func DecodeState(b []byte) (PodState, error) {
	var s PodState
	if len(b) > MaxStateFileSize {
		return s, fmt.Errorf("cniproto: pod state: %w: %d bytes, at most %d", ErrInvalid, len(b), MaxStateFileSize)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return PodState{}, fmt.Errorf("cniproto: pod state: %w: %v", ErrInvalid, err)
	}
	if err := s.validate(); err != nil {
		return PodState{}, fmt.Errorf("cniproto: pod state: %w", err)
	}
	return s, nil
}

// StatePath is the state file of pod uid in dir.
func StatePath(dir, uid string) (string, error) {
	if err := ValidateUID(uid); err != nil {
		return "", err
	}
	return filepath.Join(dir, uid+stateSuffix), nil
}

// WriteState records s in dir atomically (temporary file, then rename),
// creating dir if needed. Files are mode 0600.
func WriteState(dir string, s PodState) error {
	b, err := EncodeState(s)
	if err != nil {
		return err
	}
	path, _ := StatePath(dir, s.UID) // UID validated by EncodeState
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cniproto: state dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+s.UID+".tmp-*")
	if err != nil {
		return fmt.Errorf("cniproto: write pod state %s: %w", s.UID, err)
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("cniproto: write pod state %s: %w", s.UID, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("cniproto: write pod state %s: %w", s.UID, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cniproto: write pod state %s: %w", s.UID, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("cniproto: write pod state %s: %w", s.UID, err)
	}
	return nil
}

// ReadState reads pod uid's state file from dir. A missing file is an
// error matching fs.ErrNotExist.
func ReadState(dir, uid string) (PodState, error) {
	path, err := StatePath(dir, uid)
	if err != nil {
		return PodState{}, err
	}
	return readStateFile(path)
}

func readStateFile(path string) (PodState, error) {
	f, err := os.Open(path)
	if err != nil {
		return PodState{}, fmt.Errorf("cniproto: read pod state: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxStateFileSize+1))
	if err != nil {
		return PodState{}, fmt.Errorf("cniproto: read pod state %s: %w", path, err)
	}
	s, err := DecodeState(b)
	if err != nil {
		return PodState{}, fmt.Errorf("%s: %w", path, err)
	}
	if want := filepath.Base(path); want != s.UID+stateSuffix {
		return PodState{}, fmt.Errorf("cniproto: pod state %s: %w: records uid %q", path, ErrInvalid, s.UID)
	}
	return s, nil
}

// RemoveState deletes pod uid's state file from dir. A missing file is not
// an error.
func RemoveState(dir, uid string) error {
	path, err := StatePath(dir, uid)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cniproto: remove pod state %s: %w", uid, err)
	}
	return nil
}

// StateEntry is one file found by ListStates: its path and either its
// state or why it could not be read.
type StateEntry struct {
	Path  string
	State PodState
	Err   error
}

// ListStates returns every state file in dir (at most limit; 0 means no
// limit), including unreadable ones with Err set. A missing dir holds no
// pods.
func ListStates(dir string, limit int) ([]StateEntry, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cniproto: list pod states: %w", err)
	}
	var out []StateEntry
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, stateSuffix) {
			continue
		}
		if limit > 0 && len(out) >= limit {
			return out, fmt.Errorf("cniproto: list pod states: more than %d files in %s", limit, dir)
		}
		path := filepath.Join(dir, name)
		s, err := readStateFile(path)
		out = append(out, StateEntry{Path: path, State: s, Err: err})
	}
	return out, nil
}
