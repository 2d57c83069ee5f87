package localcluster

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// Config configures a local cluster. Only StateDir is required.
type Config struct {
	// Name prefixes the namespaces and links (default "ambient").
	Name string
	// Nodes is the number of simulated nodes (default 2).
	Nodes int
	// StateDir holds everything the cluster creates; see the package doc.
	StateDir string
	// ClusterStateFile is ambientctl's cluster-state file (default
	// ztunnels.DefaultStatePath()).
	ClusterStateFile string

	// Address plan; defaults DefaultPodCIDR, DefaultServiceCIDR,
	// DefaultNodeCIDR, DefaultLinkCIDR.
	PodCIDR, ServiceCIDR, NodeCIDR, LinkCIDR netip.Prefix

	// RepoRoot is the repository (for hack/ scripts and go build);
	// default: `go list -m` from the working directory.
	RepoRoot string
	// K8sBinDir holds kube-apiserver, ... (default: hack/build-k8s.sh).
	K8sBinDir string
	// CNIBinDir holds ptp and host-local (default: hack/build-cni-plugins.sh).
	CNIBinDir string
	// BinDir holds the project's binaries: nodeagent, ambient-cni and the
	// images' binaries (clusterdns, sampleapp, ...; default <RepoRoot>/bin;
	// built when one of them is missing).
	BinDir string
	// ClusterManifests is the kustomization of the cluster's add-ons (the
	// cluster DNS), applied at the end of Up (default
	// <RepoRoot>/manifests/cluster).
	ClusterManifests string
	// Etcd is the etcd binary (default: etcd from $PATH).
	Etcd string

	// ReadyTimeout bounds the wait for the apiserver and the nodes
	// (default 2 minutes).
	ReadyTimeout time.Duration
	// Progress receives one line per step of Up and Down (default: none).
	Progress io.Writer
	// Logger gets details (default: discard).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = "ambient"
	}
	if c.Nodes == 0 {
		c.Nodes = 2
	}
	if !c.PodCIDR.IsValid() {
		c.PodCIDR = DefaultPodCIDR
	}
	if !c.ServiceCIDR.IsValid() {
		c.ServiceCIDR = DefaultServiceCIDR
	}
	if !c.NodeCIDR.IsValid() {
		c.NodeCIDR = DefaultNodeCIDR
	}
	if !c.LinkCIDR.IsValid() {
		c.LinkCIDR = DefaultLinkCIDR
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 2 * time.Minute
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.StateDir != "" {
		if abs, err := filepath.Abs(c.StateDir); err == nil {
			c.StateDir = abs
		}
	}
	return c
}

// DefaultStateDir is $XDG_STATE_HOME/ambient/cluster, else
// ~/.local/state/ambient/cluster.
func DefaultStateDir() string {
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		dir = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(dir, "ambient", "cluster")
}
