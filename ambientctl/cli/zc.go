package cli

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/ambientmesh/ambient/ambientctl/output"
	"github.com/ambientmesh/ambient/ambientctl/zc"
	"github.com/ambientmesh/ambient/ambientctl/ztunnels"
)

func newZcCmd(g *globals) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:     "zc",
		Aliases: []string{"ztunnel-config"},
		Short:   "Show what the ztunnels hold, merged from every node's /config_dump",
	}
	cmd.PersistentFlags().StringVar(&node, "node", "", "read only this node's ztunnel (and, for workloads, show only its pods)")
	kind := func(use, short string, render func(dumps []ztunnels.NodeDump, f zc.Filter, fmt output.Format) error) *cobra.Command {
		return &cobra.Command{
			Use: use, Short: short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				ns, err := g.namespaceFilter()
				if err != nil {
					return err
				}
				f, err := g.format()
				if err != nil {
					return err
				}
				d, where, err := g.dialer()
				if err != nil {
					return err
				}
				defer d.Close()
				ts, err := g.targets(cmd.Context(), d, where, node)
				if err != nil {
					return err
				}
				dumps, errs := ztunnels.Dumps(cmd.Context(), d, ts)
				if len(dumps) == 0 {
					return allFailed(where, errs)
				}
				for _, e := range errs {
					g.warn(e)
				}
				return render(dumps, zc.Filter{Namespace: ns, Node: node}, f)
			},
		}
	}
	cmd.AddCommand(
		kind("workloads", "Workloads (pods) the ztunnels know", func(d []ztunnels.NodeDump, fl zc.Filter, f output.Format) error {
			ws := zc.Workloads(d, fl)
			return output.Write(g.out, f, ws, func() error { return output.WriteTable(g.out, zc.WorkloadsTable(ws), "No workloads found.") })
		}),
		kind("services", "Services the ztunnels know", func(d []ztunnels.NodeDump, fl zc.Filter, f output.Format) error {
			ss := zc.Services(d, fl)
			return output.Write(g.out, f, ss, func() error { return output.WriteTable(g.out, zc.ServicesTable(ss), "No services found.") })
		}),
		kind("policies", "Authorization policies the ztunnels enforce", func(d []ztunnels.NodeDump, fl zc.Filter, f output.Format) error {
			ps := zc.Policies(d, fl)
			return output.Write(g.out, f, ps, func() error { return output.WriteTable(g.out, zc.PoliciesTable(ps), "No policies found.") })
		}),
		kind("certs", "Certificates the ztunnels hold, per identity", func(d []ztunnels.NodeDump, fl zc.Filter, f output.Format) error {
			cs := zc.Certificates(d, fl)
			return output.Write(g.out, f, cs, func() error {
				return output.WriteTable(g.out, zc.CertificatesTable(cs, time.Now()), "No certificates found.")
			})
		}),
	)
	for _, c := range cmd.Commands() {
		c.Aliases = map[string][]string{
			"workloads": {"workload", "w"}, "services": {"service", "svc"},
			"policies": {"policy", "authorizationpolicies"}, "certs": {"certificates", "certificate"},
		}[c.Name()]
	}
	return cmd
}
