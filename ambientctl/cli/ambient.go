package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ambientmesh/ambient/ambientctl/ambient"
	"github.com/ambientmesh/ambient/ambientctl/output"
)

func newAmbientCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ambient", Short: "Enroll namespaces in ambient mode and check the mesh"}
	toggle := func(use, short string, enable bool) *cobra.Command {
		return &cobra.Command{
			Use: use, Short: short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if g.namespace == "" || g.allNamespaces {
					return errors.New("name one namespace with -n NAMESPACE")
				}
				c, err := g.cluster()
				if err != nil {
					return err
				}
				op, state := ambient.Disable, "removed: its pods leave the mesh (no restart needed)"
				if enable {
					op, state = ambient.Enable, "enabled: ztunnel now captures its pods (no restart needed)"
				}
				changed, err := op(cmd.Context(), c, g.namespace)
				if err != nil {
					return err
				}
				if !changed {
					if enable {
						state = "was already enabled"
					} else {
						state = "was not enabled"
					}
				}
				label := ambient.DataplaneModeLabel + "=" + ambient.DataplaneAmbient
				fmt.Fprintf(g.out, "namespace/%s: ambient mode %s (label %s)\n", g.namespace, state, label)
				return nil
			},
		}
	}
	status := &cobra.Command{
		Use: "status", Short: "Namespaces' dataplane mode and the mesh's health (istiod-lite, ztunnel per node)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, err := g.namespaceFilter()
			if err != nil {
				return err
			}
			f, err := g.format()
			if err != nil {
				return err
			}
			c, err := g.cluster()
			if err != nil {
				return err
			}
			st, err := ambient.GetStatus(cmd.Context(), c, ns)
			if err != nil {
				return err
			}
			return output.Write(g.out, f, st, func() error {
				for i, t := range st.Tables() {
					if i > 0 {
						fmt.Fprintln(g.out)
					}
					if err := output.WriteTable(g.out, t, ""); err != nil {
						return err
					}
				}
				if h := st.Hint(); h != "" {
					fmt.Fprintln(g.out, "\n"+h)
				}
				return nil
			})
		},
	}
	cmd.AddCommand(
		toggle("enable", "Label the namespace (-n) istio.io/dataplane-mode=ambient", true),
		toggle("disable", "Remove the namespace's (-n) istio.io/dataplane-mode label", false),
		status,
	)
	return cmd
}
