package ztunnels

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultAdminAddr is ztunnel's admin address inside its network namespace.
const DefaultAdminAddr = "127.0.0.1:15000"

// ClusterState is the local cluster's state file (see the package doc).
type ClusterState struct {
	Name             string      `json:"name"`
	Server           string      `json:"server"`
	Kubeconfig       string      `json:"kubeconfig,omitempty"`
	ZtunnelAdminAddr string      `json:"ztunnelAdminAddr,omitempty"`
	Nodes            []StateNode `json:"nodes"`
}

// StateNode is one simulated node.
type StateNode struct {
	Name  string `json:"name"`
	Netns string `json:"netns"`
	IP    string `json:"ip,omitempty"`
}

// DefaultStatePath is $AMBIENT_CLUSTER_STATE, else
// $XDG_STATE_HOME/ambient/cluster.json, else
// ~/.local/state/ambient/cluster.json.
func DefaultStatePath() string {
	if p := os.Getenv("AMBIENT_CLUSTER_STATE"); p != "" {
		return p
	}
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		dir = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(dir, "ambient", "cluster.json")
}

// LoadState reads and checks a state file. A missing file is reported with
// an error satisfying errors.Is(err, os.ErrNotExist).
func LoadState(path string) (*ClusterState, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cluster state %s: %w", path, err)
	}
	var s ClusterState
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("cluster state %s: %w", path, err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("cluster state %s: %w", path, err)
	}
	return &s, nil
}

// Validate checks the required fields.
func (s *ClusterState) Validate() error {
	var errs []error
	if s.Server == "" {
		errs = append(errs, errors.New("server is required"))
	}
	seen := map[string]bool{}
	for i, n := range s.Nodes {
		if n.Name == "" || n.Netns == "" {
			errs = append(errs, fmt.Errorf("nodes[%d]: name and netns are required", i))
		}
		if seen[n.Name] {
			errs = append(errs, fmt.Errorf("nodes[%d]: duplicate name %q", i, n.Name))
		}
		seen[n.Name] = true
	}
	return errors.Join(errs...)
}

// Describes reports whether s is the cluster behind the API server URL
// server (trailing slashes ignored).
func (s *ClusterState) Describes(server string) bool {
	return server != "" && strings.TrimRight(s.Server, "/") == strings.TrimRight(server, "/")
}

// WriteState writes s atomically to path (0600), creating the directory.
func WriteState(path string, s *ClusterState) error {
	if err := s.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
