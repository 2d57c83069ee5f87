// Package zc merges the config dumps of every node's ztunnel and renders
// them as `istioctl ztunnel-config` does: workloads, services, policies and
// certificates, deduplicated across nodes (workloads by uid, services by
// namespace/hostname, policies by namespace/name, certificates by identity
// and serial; a service's endpoints are united), filtered by namespace and node, in a stable order. It is pure.
package zc

import (
	"cmp"
	"crypto/x509"
	"encoding/pem"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ambientmesh/ambient/ambientctl/output"
	"github.com/ambientmesh/ambient/ambientctl/ztunnels"
	"github.com/ambientmesh/ambient/ztunnel/admin"
)

// Filter selects what to show; empty fields select everything.
type Filter struct {
	Namespace string
	// Node keeps workloads on that node (the dumps should already come only
	// from that node's ztunnel).
	Node string
}

// Workloads merges the dumps' workloads, sorted by namespace, name, uid.
func Workloads(dumps []ztunnels.NodeDump, f Filter) []admin.Workload {
	seen := map[string]bool{}
	out := []admin.Workload{}
	for _, d := range dumps {
		for _, w := range d.Dump.Workloads {
			if seen[w.UID] || (f.Namespace != "" && w.Namespace != f.Namespace) || (f.Node != "" && w.Node != f.Node) {
				continue
			}
			seen[w.UID] = true
			out = append(out, w)
		}
	}
	slices.SortFunc(out, func(a, b admin.Workload) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
	})
	return out
}

// Services merges the dumps' services, sorted by namespace and name; a
// service's endpoints are the union of what every node knows.
func Services(dumps []ztunnels.NodeDump, f Filter) []admin.Service {
	at := map[string]int{}
	out := []admin.Service{}
	for _, d := range dumps {
		for _, s := range d.Dump.Services {
			if f.Namespace != "" && s.Namespace != f.Namespace {
				continue
			}
			k := s.Namespace + "/" + s.Hostname
			i, ok := at[k]
			if !ok {
				at[k] = len(out)
				s.Endpoints = maps.Clone(s.Endpoints)
				if s.Endpoints == nil {
					s.Endpoints = map[string]*admin.Endpoint{}
				}
				out = append(out, s)
				continue
			}
			for ek, e := range s.Endpoints {
				if _, ok := out[i].Endpoints[ek]; !ok {
					out[i].Endpoints[ek] = e
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b admin.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Hostname, b.Hostname))
	})
	return out
}

// Policies merges the dumps' policies, sorted by namespace and name.
func Policies(dumps []ztunnels.NodeDump, f Filter) []admin.Policy {
	seen := map[string]bool{}
	out := []admin.Policy{}
	for _, d := range dumps {
		for _, p := range d.Dump.Policies {
			k := p.Namespace + "/" + p.Name
			if seen[k] || (f.Namespace != "" && p.Namespace != f.Namespace) {
				continue
			}
			seen[k] = true
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b admin.Policy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// Certificate is one certificate of an identity's chain as a row.
type Certificate struct {
	Identity     string `json:"identity"`
	Node         string `json:"node"` // the first node holding it
	Type         string `json:"type"` // Leaf, Intermediate, Root
	State        string `json:"state"`
	SerialNumber string `json:"serialNumber"`
	NotBefore    string `json:"validFrom"`
	NotAfter     string `json:"expirationTime"`
	PEM          string `json:"pem,omitempty"`
}

// Certificates flattens the dumps' certificate chains, deduplicated by
// identity and serial, sorted by identity then chain order. An identity
// without a certificate yet gives one row with its state.
func Certificates(dumps []ztunnels.NodeDump, f Filter) []Certificate {
	seen := map[string]bool{}
	type ordered struct {
		c   Certificate
		pos int
	}
	var rows []ordered
	for _, d := range dumps {
		for _, c := range d.Dump.Certificates {
			if f.Namespace != "" && identityNamespace(c.Identity) != f.Namespace {
				continue
			}
			if len(c.CertChain) == 0 {
				k := c.Identity + "|" + c.State
				if !seen[k] {
					seen[k] = true
					rows = append(rows, ordered{Certificate{Identity: c.Identity, Node: d.Node, State: c.State}, 0})
				}
				continue
			}
			for i, cert := range c.CertChain {
				k := c.Identity + "|" + cert.SerialNumber
				if seen[k] {
					continue
				}
				seen[k] = true
				rows = append(rows, ordered{Certificate{
					Identity: c.Identity, Node: d.Node, Type: certType(cert, i, len(c.CertChain)), State: c.State,
					SerialNumber: cert.SerialNumber, NotBefore: cert.ValidFrom, NotAfter: cert.ExpirationTime, PEM: cert.PEM,
				}, i})
			}
		}
	}
	slices.SortStableFunc(rows, func(a, b ordered) int {
		return cmp.Or(cmp.Compare(a.c.Identity, b.c.Identity), cmp.Compare(a.pos, b.pos), cmp.Compare(a.c.NotBefore, b.c.NotBefore))
	})
	out := make([]Certificate, len(rows))
	for i, r := range rows {
		out[i] = r.c
	}
	return out
}

// certType is Leaf for the first certificate, Root for a self-signed one,
// else Intermediate (the last of a chain is the root when undecodable).
func certType(c admin.Cert, i, n int) string {
	if i == 0 {
		return "Leaf"
	}
	if b, _ := pem.Decode([]byte(c.PEM)); b != nil {
		if x, err := x509.ParseCertificate(b.Bytes); err == nil {
			if x.CheckSignatureFrom(x) == nil {
				return "Root"
			}
			return "Intermediate"
		}
	}
	if i == n-1 {
		return "Root"
	}
	return "Intermediate"
}

// identityNamespace is the ns of spiffe://td/ns/NS/sa/SA.
func identityNamespace(id string) string {
	_, rest, ok := strings.Cut(id, "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

// WorkloadsTable renders workloads as istioctl ztunnel-config workloads.
func WorkloadsTable(ws []admin.Workload) output.Rows {
	t := output.Rows{Headers: []string{"NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL", "TRANSPORT"}}
	for _, w := range ws {
		t.Rows = append(t.Rows, []string{w.Namespace, w.Name, strings.Join(w.WorkloadIPs, ","), w.Node, waypointName(w.Waypoint), w.Protocol, transportName(w.TunnelTransport)})
	}
	return t
}

// transportName is the TRANSPORT column, our addition to istioctl's table:
// how tunnels to an HBONE workload are carried, "-" for other workloads.
func transportName(t string) string {
	if t == "" {
		return "-"
	}
	return t
}

// ServicesTable renders services as istioctl ztunnel-config services.
func ServicesTable(ss []admin.Service) output.Rows {
	t := output.Rows{Headers: []string{"NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"}}
	for _, s := range ss {
		vips := make([]string, len(s.VIPs))
		for i, v := range s.VIPs {
			vips[i] = strings.TrimPrefix(v, "/") // default network
		}
		healthy := 0
		for _, e := range s.Endpoints {
			if e.Status == "Healthy" {
				healthy++
			}
		}
		t.Rows = append(t.Rows, []string{s.Namespace, s.Name, strings.Join(vips, ","), waypointName(s.Waypoint),
			strconv.Itoa(healthy) + "/" + strconv.Itoa(len(s.Endpoints))})
	}
	return t
}

// PoliciesTable renders policies as istioctl ztunnel-config policies.
func PoliciesTable(ps []admin.Policy) output.Rows {
	t := output.Rows{Headers: []string{"NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"}}
	for _, p := range ps {
		action := p.Action
		if p.DryRun {
			action += " (dry-run)"
		}
		t.Rows = append(t.Rows, []string{p.Namespace, p.Name, action, p.Scope})
	}
	return t
}

// CertificatesTable renders certificates as istioctl ztunnel-config
// certificates; VALID CERT says whether now is within the validity.
func CertificatesTable(cs []Certificate, now time.Time) output.Rows {
	t := output.Rows{Headers: []string{"CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"}}
	for _, c := range cs {
		valid := "false"
		nb, err1 := time.Parse(time.RFC3339, c.NotBefore)
		na, err2 := time.Parse(time.RFC3339, c.NotAfter)
		if err1 == nil && err2 == nil && !now.Before(nb) && now.Before(na) {
			valid = "true"
		}
		if c.SerialNumber == "" {
			valid = ""
		}
		t.Rows = append(t.Rows, []string{c.Identity, c.Type, c.State, valid, c.SerialNumber, c.NotAfter, c.NotBefore})
	}
	return t
}

// waypointName is a gateway's destination, or "None".
func waypointName(g *admin.GatewayAddress) string {
	if g == nil || g.Destination == "" {
		return "None"
	}
	return strings.TrimPrefix(g.Destination, "/")
}
