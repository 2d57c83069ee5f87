// Package cli is ambientctl's command tree (cobra), kubectl-like in feel:
// global --kubeconfig, --context, -n/--namespace, -A/--all-namespaces and
// -o table|json|yaml; `ambient enable|disable|status`, `zc
// workloads|services|policies|certs`, `flows`, and `cluster up|down|status`
// (the local cluster, package localcluster). cmd/ambientctl is its
// main; tests run the same tree in process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ambientmesh/ambient/ambientctl/kube"
	"github.com/ambientmesh/ambient/ambientctl/output"
	"github.com/ambientmesh/ambient/ambientctl/ztunnels"
)

// globals are the flags every command shares.
type globals struct {
	kubeconfig    string
	context       string
	namespace     string
	allNamespaces bool
	output        string
	clusterState  string

	out, errOut io.Writer
	kc          *kube.Cluster // set once loaded
}

// NewRoot returns the ambientctl command writing to out and errOut.
func NewRoot(out, errOut io.Writer) *cobra.Command {
	g := &globals{out: out, errOut: errOut}
	root := &cobra.Command{
		Use:           "ambientctl",
		Short:         "Operate an ambient mesh: enroll namespaces, inspect ztunnels, read flows",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	pf := root.PersistentFlags()
	pf.StringVar(&g.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default $KUBECONFIG, else ~/.kube/config)")
	pf.StringVar(&g.context, "context", "", "the kubeconfig context to use (default the current one)")
	pf.StringVarP(&g.namespace, "namespace", "n", "", "the namespace (required by enable/disable; status, zc and flows show all namespaces without it)")
	pf.BoolVarP(&g.allNamespaces, "all-namespaces", "A", false, "all namespaces")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	pf.StringVar(&g.clusterState, "cluster-state", "", "the local cluster's state file (default $AMBIENT_CLUSTER_STATE, else $XDG_STATE_HOME/ambient/cluster.json); when given, ztunnels are reached through the node network namespaces it lists")
	root.AddCommand(newAmbientCmd(g), newZcCmd(g), newFlowsCmd(g), newWaypointCmd(g), newClusterCmd(g))
	return root
}

// Main runs ambientctl with args and returns the exit code.
func Main(ctx context.Context, args []string, out, errOut io.Writer) int {
	root := NewRoot(out, errOut)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(errOut, "error:", err)
		return 1
	}
	return 0
}

func (g *globals) format() (output.Format, error) { return output.ParseFormat(g.output) }

func (g *globals) cluster() (*kube.Cluster, error) {
	if g.kc != nil {
		return g.kc, nil
	}
	c, err := kube.Load(kube.Options{Kubeconfig: g.kubeconfig, Context: g.context})
	g.kc = c
	return c, err
}

// namespaceFilter is "" for all namespaces (the default, or -A), else -n.
func (g *globals) namespaceFilter() (string, error) {
	if g.allNamespaces && g.namespace != "" {
		return "", errors.New("-n and -A contradict each other: give one of them")
	}
	if g.allNamespaces {
		return "", nil
	}
	return g.namespace, nil
}

func (g *globals) warn(err error) { fmt.Fprintln(g.errOut, "warning:", err) }

// dialer chooses how to reach the ztunnels: through node network
// namespaces when the current cluster is the local one (or --cluster-state
// is given), else by port-forward through the API server.
func (g *globals) dialer() (ztunnels.Dialer, string, error) {
	if g.clusterState != "" {
		st, err := ztunnels.LoadState(g.clusterState)
		if err != nil {
			return nil, "", fmt.Errorf("%w; give the file `ambientctl cluster up` wrote, or drop --cluster-state for a real cluster", err)
		}
		return &ztunnels.Netns{State: st}, "local cluster " + st.Name + " (state file " + g.clusterState + ")", nil
	}
	c, err := g.cluster()
	if err != nil {
		return nil, "", err
	}
	if path := ztunnels.DefaultStatePath(); path != "" {
		st, err := ztunnels.LoadState(path)
		switch {
		case err == nil && st.Describes(c.Server):
			return &ztunnels.Netns{State: st}, "local cluster " + st.Name + " (state file " + path + ")", nil
		case err != nil && !errors.Is(err, os.ErrNotExist):
			g.warn(fmt.Errorf("%w; ignoring it", err))
		}
	}
	return &ztunnels.PortForward{Config: c.Config, Client: c.Client}, "cluster " + c.Server + " (context " + c.Context + ")", nil
}

// targets lists the ztunnels to read, only node's when set.
func (g *globals) targets(ctx context.Context, d ztunnels.Dialer, where, node string) ([]ztunnels.Target, error) {
	ts, err := d.Targets(ctx)
	if err != nil {
		if _, pf := d.(*ztunnels.PortForward); pf && !errors.Is(err, ztunnels.ErrNoZtunnel) && g.kc != nil {
			return nil, g.kc.Explain(err, "finding the ztunnel pods")
		}
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if node != "" {
		var keep []ztunnels.Target
		var nodes []string
		for _, t := range ts {
			nodes = append(nodes, t.Node)
			if t.Node == node {
				keep = append(keep, t)
			}
		}
		if len(keep) == 0 {
			return nil, fmt.Errorf("no ztunnel on node %q in %s; nodes with one: %s", node, where, strings.Join(nodes, ", "))
		}
		ts = keep
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("%s has no nodes with a ztunnel; install the mesh with: kubectl apply -k manifests/", where)
	}
	return ts, nil
}

// allFailed explains that no ztunnel answered.
func allFailed(where string, errs []error) error {
	return fmt.Errorf("no ztunnel answered in %s: %w; check that ztunnel runs on the nodes (ambientctl ambient status), or install the mesh with: kubectl apply -k manifests/",
		where, errors.Join(errs...))
}
