package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/ambientmesh/ambient/ambientctl/output"
	"github.com/ambientmesh/ambient/ambientctl/waypoint"
)

func newWaypointCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "waypoint", Short: "Deploy and inspect waypoints (shared L7 proxies) as istioctl waypoint does"}
	var o waypoint.Options
	var enroll, wait bool
	var timeout time.Duration
	describe := func(c *cobra.Command) {
		c.Flags().StringVar(&o.Name, "name", waypoint.DefaultName, "the waypoint's name (its Gateway, Deployment and Service)")
		c.Flags().StringVar(&o.For, "for", "service", "the traffic it takes: "+strings.Join(waypoint.ForValues, ", ")+" (label istio.io/waypoint-for)")
	}
	gateway := func() (*waypoint.Client, error) {
		c, err := g.cluster()
		if err != nil {
			return nil, err
		}
		return waypoint.NewClient(c)
	}

	generate := &cobra.Command{
		Use: "generate", Short: "Print the waypoint's Gateway as YAML instead of applying it", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			o.Namespace = g.namespace
			gw, err := waypoint.Generate(o)
			if err != nil {
				return err
			}
			b, err := yaml.Marshal(gw)
			if err != nil {
				return err
			}
			// Drop the empty status the typed object carries.
			s := strings.Replace(string(b), "status: {}\n", "", 1)
			_, err = fmt.Fprint(g.out, s)
			return err
		},
	}
	describe(generate)

	apply := &cobra.Command{
		Use: "apply", Short: "Create or update the waypoint of a namespace (-n)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Namespace = g.namespace
			gw, err := waypoint.Generate(o)
			if err != nil {
				return err
			}
			cl, err := gateway()
			if err != nil {
				return err
			}
			if err := cl.Apply(cmd.Context(), gw); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "waypoint %s/%s applied (for %s traffic)\n", gw.Namespace, gw.Name, gw.Labels[waypoint.ForLabel])
			if enroll {
				changed, err := cl.Enroll(cmd.Context(), gw.Namespace, &gw.Name)
				if err != nil {
					return err
				}
				state := "now uses"
				if !changed {
					state = "already used"
				}
				fmt.Fprintf(g.out, "namespace/%s %s waypoint %s (label %s=%s)\n", gw.Namespace, state, gw.Name, waypoint.UseWaypointLabel, gw.Name)
			}
			if wait {
				ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
				defer cancel()
				if err := cl.Wait(ctx, gw.Namespace, gw.Name, 250*time.Millisecond); err != nil {
					return err
				}
				fmt.Fprintf(g.out, "waypoint %s/%s programmed\n", gw.Namespace, gw.Name)
			}
			return nil
		},
	}
	describe(apply)
	apply.Flags().BoolVar(&enroll, "enroll-namespace", false, "also label the namespace istio.io/use-waypoint=NAME, so its services use the waypoint")
	apply.Flags().BoolVar(&wait, "wait", false, "wait until the waypoint is programmed (its Deployment is ready)")
	apply.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long --wait waits")

	var all bool
	del := &cobra.Command{
		Use: "delete [NAME...]", Short: "Delete waypoints of a namespace (-n): the named ones, or --all",
		RunE: func(cmd *cobra.Command, names []string) error {
			if g.namespace == "" {
				return errors.New("name the namespace with -n NAMESPACE")
			}
			cl, err := gateway()
			if err != nil {
				return err
			}
			switch {
			case all && len(names) > 0:
				return errors.New("give waypoint names or --all, not both")
			case all:
				ws, err := cl.List(cmd.Context(), g.namespace)
				if err != nil {
					return err
				}
				for _, w := range ws {
					names = append(names, w.Name)
				}
			case len(names) == 0:
				names = []string{waypoint.DefaultName}
			}
			if err := cl.Delete(cmd.Context(), g.namespace, names); err != nil {
				return err
			}
			for _, n := range names {
				fmt.Fprintf(g.out, "waypoint %s/%s deleted\n", g.namespace, n)
			}
			return nil
		},
	}
	del.Flags().BoolVar(&all, "all", false, "delete every waypoint of the namespace")

	list := &cobra.Command{
		Use: "list", Short: "List waypoints (-n NAMESPACE, or -A)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, err := g.namespaceFilter()
			if err != nil {
				return err
			}
			f, err := g.format()
			if err != nil {
				return err
			}
			cl, err := gateway()
			if err != nil {
				return err
			}
			ws, err := cl.List(cmd.Context(), ns)
			if err != nil {
				return err
			}
			return output.Write(g.out, f, ws, func() error {
				t := output.Rows{Headers: []string{"NAMESPACE", "NAME", "FOR", "PROGRAMMED", "ADDRESS"}}
				for _, w := range ws {
					t.Rows = append(t.Rows, []string{w.Namespace, w.Name, w.For, w.Programmed, w.Address})
				}
				return output.WriteTable(g.out, t, "No waypoints found.")
			})
		},
	}

	status := &cobra.Command{
		Use: "status [NAME]", Short: "A waypoint's conditions (default name waypoint)", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.namespace == "" {
				return errors.New("name the namespace with -n NAMESPACE")
			}
			name := waypoint.DefaultName
			if len(args) == 1 {
				name = args[0]
			}
			f, err := g.format()
			if err != nil {
				return err
			}
			cl, err := gateway()
			if err != nil {
				return err
			}
			w, err := cl.Get(cmd.Context(), g.namespace, name)
			if err != nil {
				return err
			}
			return output.Write(g.out, f, w, func() error {
				t := output.Rows{Headers: []string{"NAMESPACE", "NAME", "CONDITION", "STATUS", "REASON", "MESSAGE"}}
				for _, c := range w.Conditions {
					t.Rows = append(t.Rows, []string{w.Namespace, w.Name, c.Type, string(c.Status), c.Reason, c.Message})
				}
				return output.WriteTable(g.out, t, fmt.Sprintf("waypoint %s/%s has no status yet: is istiod-lite running? (kubectl get pods -n istio-system)", w.Namespace, w.Name))
			})
		},
	}

	cmd.AddCommand(apply, generate, del, list, status)
	return cmd
}
