package cli

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ambientmesh/ambient/ambientctl/output"
	"github.com/ambientmesh/ambient/localcluster"
)

// newClusterCmd is `cluster up|down|status`: the local cluster (package
// localcluster).
func newClusterCmd(g *globals) *cobra.Command {
	var stateDir, name, linkCIDR, binDir string
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Run a local Kubernetes cluster with simulated nodes on this machine (root)",
	}
	cmd.PersistentFlags().StringVar(&stateDir, "state-dir", localcluster.DefaultStateDir(), "directory holding everything the local cluster creates")
	cmd.PersistentFlags().StringVar(&name, "name", "ambient", "prefix of the cluster's network namespaces and links (at most 10 characters)")
	config := func() localcluster.Config {
		return localcluster.Config{Name: name, StateDir: stateDir, ClusterStateFile: g.clusterState, Progress: g.errOut}
	}

	var nodes int
	up := &cobra.Command{
		Use:   "up",
		Short: "Start the local cluster (cleans up a previous one in the same state directory first)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodes < 1 || nodes > localcluster.MaxNodes {
				return fmt.Errorf("--nodes must be 1..%d", localcluster.MaxNodes)
			}
			cfg := config()
			cfg.Nodes = nodes
			cfg.BinDir = binDir
			if linkCIDR != "" {
				p, err := netip.ParsePrefix(linkCIDR)
				if err != nil {
					return fmt.Errorf("--link-cidr: %w", err)
				}
				cfg.LinkCIDR = p
			}
			c, err := localcluster.Up(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "local cluster up: %d nodes, apiserver %s\n", len(c.Plan.Nodes), c.Server)
			fmt.Fprintf(g.out, "export KUBECONFIG=%s\n", c.Kubeconfig)
			fmt.Fprintf(g.out, "next: ambientctl cluster status; ambientctl cluster down removes everything\n")
			return nil
		},
	}
	up.Flags().IntVar(&nodes, "nodes", 2, fmt.Sprintf("number of simulated nodes (1..%d)", localcluster.MaxNodes))
	up.Flags().StringVar(&linkCIDR, "link-cidr", localcluster.DefaultLinkCIDR.String(), "the node link, a /24 inside 172.30.0.0/16: nodes at .1, .2, ..., the apiserver at .254")
	up.Flags().StringVar(&binDir, "bin-dir", "", "the project's binaries (nodeagent, ambient-cni, images' binaries); default <repository>/bin, built when missing")

	down := &cobra.Command{
		Use:   "down",
		Short: "Stop the local cluster and remove everything it created (also after a crash)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := localcluster.Down(cmd.Context(), config()); err != nil {
				return fmt.Errorf("%w; run ambientctl cluster down again to retry", err)
			}
			fmt.Fprintf(g.out, "local cluster in %s removed\n", filepath.Clean(stateDir))
			return nil
		},
	}

	status := &cobra.Command{
		Use:   "status",
		Short: "Show the local cluster's components, nodes and addresses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := g.format()
			if err != nil {
				return err
			}
			s, err := localcluster.GetStatus(cmd.Context(), config())
			if err != nil {
				return err
			}
			return output.Write(g.out, f, s, func() error { return localcluster.WriteStatus(g.out, s) })
		},
	}
	cmd.AddCommand(up, down, status)
	return cmd
}
