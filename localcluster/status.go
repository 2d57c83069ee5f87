package localcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ErrNotRunning is returned by Status when the state directory holds no
// cluster.
var ErrNotRunning = errors.New("no local cluster in this state directory")

// Status is what `ambientctl cluster status` shows.
type Status struct {
	Name       string            `json:"name"`
	Server     string            `json:"server"`
	Kubeconfig string            `json:"kubeconfig"`
	Components []ComponentStatus `json:"components"`
	Nodes      []NodeStatus      `json:"nodes"`
	// APIError is set when the apiserver could not be asked about nodes.
	APIError string `json:"apiError,omitempty"`
}

// ComponentStatus is one recorded process.
type ComponentStatus struct {
	Name  string `json:"name"`
	Pid   int    `json:"pid"`
	Alive bool   `json:"alive"`
}

// NodeStatus is one Node as the apiserver reports it.
type NodeStatus struct {
	Name    string `json:"name"`
	IP      string `json:"ip"`
	Netns   string `json:"netns"`
	Ready   bool   `json:"ready"`
	PodCIDR string `json:"podCIDR"`
}

// Healthy reports whether every component is alive and every node Ready.
func (s *Status) Healthy() bool {
	for _, c := range s.Components {
		if !c.Alive {
			return false
		}
	}
	for _, n := range s.Nodes {
		if !n.Ready {
			return false
		}
	}
	return s.APIError == "" && len(s.Nodes) > 0
}

// GetStatus reads the record in cfg.StateDir and asks the apiserver about
// the nodes.
func GetStatus(ctx context.Context, cfg Config) (*Status, error) {
	cfg = cfg.withDefaults()
	rec, err := loadRecord(cfg.StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("localcluster: %s: %w; start one with: ambientctl cluster up", cfg.StateDir, ErrNotRunning)
	}
	if err != nil {
		return nil, err
	}
	s := &Status{Name: rec.Name, Server: rec.Server, Kubeconfig: filepath.Join(cfg.StateDir, "kubeconfig")}
	for _, p := range rec.Procs {
		s.Components = append(s.Components, ComponentStatus{Name: p.Name, Pid: p.Pid, Alive: p.alive()})
	}
	var nodeNames []string
	for _, ns := range rec.Netns {
		if strings.HasPrefix(ns, rec.Name+"-node-") {
			nodeNames = append(nodeNames, ns)
		}
	}
	cs, err := clientFor(s.Kubeconfig)
	if err != nil {
		s.APIError = err.Error()
		return s, nil
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		s.APIError = err.Error()
	}
	for _, name := range nodeNames {
		ns := NodeStatus{Name: name, Netns: NetnsPath(name)}
		if nodes != nil {
			if n := findNode(nodes.Items, name); n != nil {
				ns.Ready = nodeReady(n)
				ns.PodCIDR = n.Spec.PodCIDR
				for _, a := range n.Status.Addresses {
					if a.Type == "InternalIP" {
						ns.IP = a.Address
					}
				}
			}
		}
		s.Nodes = append(s.Nodes, ns)
	}
	return s, nil
}

// WriteStatus writes s as tables.
func WriteStatus(w io.Writer, s *Status) error {
	fmt.Fprintf(w, "cluster %s  server %s\nkubeconfig %s\n\n", s.Name, s.Server, s.Kubeconfig)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tPID\tSTATUS")
	for _, c := range s.Components {
		st := "running"
		if !c.Alive {
			st = "exited"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", c.Name, c.Pid, st)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tREADY\tINTERNAL-IP\tPOD-CIDR\tNETNS")
	for _, n := range s.Nodes {
		fmt.Fprintf(tw, "%s\t%t\t%s\t%s\t%s\n", n.Name, n.Ready, dash(n.IP), dash(n.PodCIDR), n.Netns)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if s.APIError != "" {
		fmt.Fprintf(w, "\napiserver: %s\n", s.APIError)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
