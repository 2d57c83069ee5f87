package podenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// DefaultHostPathPassthrough are the hostPath prefixes a HostPathMap
// leaves on the real host: the network namespaces (pods' state files and
// ztunnel name them by their real paths) and the kernel's file systems.
var DefaultHostPathPassthrough = []string{"/run/netns", "/var/run/netns", "/proc", "/sys", "/dev", "/lib/modules"}

// HostPathMap places a node's hostPath volumes. Simulated nodes share the
// machine's root file system, so two nodes' pods using one hostPath (the
// ztunnel DaemonSet's /var/run/ambient) would share a directory; with a
// Root each node gets its own tree: hostPath P is Root/P, except paths
// at or under a Passthrough prefix, which stay real.
type HostPathMap struct {
	// Root is the node's host-path root; empty: every path is real.
	Root string
	// Passthrough are absolute path prefixes (matched by whole path
	// components) that are never mapped.
	Passthrough []string
}

// Map returns where hostPath p lives on this node.
func (m HostPathMap) Map(p string) string {
	p = filepath.Clean(p)
	if m.Root == "" || !filepath.IsAbs(p) {
		return p
	}
	for _, pt := range m.Passthrough {
		pt = filepath.Clean(pt)
		if p == pt || strings.HasPrefix(p, pt+"/") || pt == "/" {
			return p
		}
	}
	return filepath.Join(m.Root, p)
}

// prepare creates what a hostPath volume's type asks for, at its mapped
// path: the directory for DirectoryOrCreate, an empty file for
// FileOrCreate (with its parent directories when the path is mapped: the
// node's root starts empty). Other types are used as they are.
func (m HostPathMap) prepare(hp *v1.HostPathVolumeSource) error {
	if hp.Type == nil {
		return nil
	}
	p := m.Map(hp.Path)
	switch *hp.Type {
	case v1.HostPathDirectoryOrCreate:
		return os.MkdirAll(p, 0o755)
	case v1.HostPathFileOrCreate:
		if p != filepath.Clean(hp.Path) {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
		}
		f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		return f.Close()
	}
	return nil
}

// ParsePassthrough splits a comma-separated passthrough list, checking
// that every entry is absolute.
func ParsePassthrough(s string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("host path passthrough %q is not absolute", p)
		}
		out = append(out, filepath.Clean(p))
	}
	return out, nil
}
