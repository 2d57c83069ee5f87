package cli

import (
	"encoding/json"
	"errors"
	"sync"

	"github.com/spf13/cobra"

	"github.com/ambientmesh/ambient/ambientctl/flows"
	"github.com/ambientmesh/ambient/ambientctl/output"
)

func newFlowsCmd(g *globals) *cobra.Command {
	var follow bool
	var identity, node string
	cmd := &cobra.Command{
		Use:   "flows",
		Short: "Identity-tagged flow records from every node's ztunnel, merged by time",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, err := g.namespaceFilter()
			if err != nil {
				return err
			}
			f, err := g.format()
			if err != nil {
				return err
			}
			if follow && f == output.YAML {
				return errors.New("-o yaml cannot stream; use -o json (one JSON object per line) with --follow")
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
			filter := flows.Filter{Namespace: ns, Identity: identity}
			if !follow {
				rs, errs := flows.Gather(cmd.Context(), d, ts, filter)
				if len(errs) == len(ts) {
					return allFailed(where, errs)
				}
				for _, e := range errs {
					g.warn(e)
				}
				switch f {
				case output.JSON:
					for _, r := range rs {
						if err := flows.WriteJSON(g.out, r); err != nil {
							return err
						}
					}
					return nil
				case output.YAML:
					lines := make([]map[string]any, 0, len(rs))
					for _, r := range rs {
						lines = append(lines, recordMap(r))
					}
					return output.Write(g.out, f, lines, nil)
				}
				return output.WriteTable(g.out, flows.Table(rs), "No flows found.")
			}
			// Following: print each record as it comes, the table's
			// header first; columns grow as wider cells arrive.
			var mu sync.Mutex
			table := output.NewStream(g.out, 12, 12, 40, 40, 8, 8, 9, 8)
			if f == output.Table {
				table.Row(flows.Headers...)
			}
			return flows.Follow(cmd.Context(), d, ts, filter, func(r flows.Record) {
				mu.Lock()
				defer mu.Unlock()
				if f == output.JSON {
					flows.WriteJSON(g.out, r)
					return
				}
				table.Row(flows.Row(r)...)
			}, func(err error) {
				mu.Lock()
				defer mu.Unlock()
				g.warn(err)
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep streaming new flows")
	cmd.Flags().StringVar(&identity, "identity", "", "only flows whose source or destination has this SPIFFE ID")
	cmd.Flags().StringVar(&node, "node", "", "only flows reported by this node's ztunnel")
	return cmd
}

// recordMap is r's JSON line as a map, for YAML.
func recordMap(r flows.Record) map[string]any {
	m := map[string]any{}
	json.Unmarshal(flows.JSONLine(r), &m)
	return m
}
