// Package poddns decides a pod's /etc/resolv.conf the way a kubelet does
// (pkg/kubelet/network/dns), as a pure function of the pod, the node's
// cluster DNS settings and the node's own resolv.conf.
//
// By dnsPolicy:
//
//	ClusterFirst (the default)  nameserver = the cluster DNS, search
//	                            <ns>.svc.<domain> svc.<domain> <domain> then
//	                            the node's search domains, options ndots:5;
//	                            a hostNetwork pod gets the node's file instead
//	ClusterFirstWithHostNet     the cluster file, hostNetwork or not
//	Default                     the node's file
//	None                        only spec.dnsConfig
//
// spec.dnsConfig is merged on top (nameservers and searches appended
// without duplicates, options replaced by name). With no cluster DNS
// configured, the ClusterFirst policies fall back to Default, as a
// kubelet without --cluster-dns does.
package poddns

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// Limits a kubelet applies (and glibc reads).
const (
	maxNameservers = 3
	maxSearches    = 32
)

// Cluster is the node's DNS configuration.
type Cluster struct {
	Nameservers []string // the cluster DNS service's IPs; empty: none
	Domain      string   // e.g. cluster.local
}

// Conf is a parsed or generated resolv.conf.
type Conf struct {
	Nameservers []string
	Searches    []string
	Options     []string // "ndots:5", "edns0", ...
}

// Parse reads a resolv.conf (nameserver, search/domain, options lines).
func Parse(b []byte) Conf {
	var c Conf
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) > 1 {
				c.Nameservers = append(c.Nameservers, f[1])
			}
		case "search", "domain":
			c.Searches = append([]string(nil), f[1:]...) // the last one wins
		case "options":
			c.Options = mergeOptions(c.Options, f[1:])
		}
	}
	return c
}

// Render writes c as a resolv.conf.
func (c Conf) Render() []byte {
	var b bytes.Buffer
	for _, n := range c.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", n)
	}
	if len(c.Searches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(c.Searches, " "))
	}
	if len(c.Options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(c.Options, " "))
	}
	return b.Bytes()
}

// ForPod returns the pod's resolv.conf; host is the node's. useHost is
// true when the pod simply sees the node's file (nothing to mount).
func ForPod(pod *v1.Pod, cluster Cluster, host []byte) (conf Conf, useHost bool, err error) {
	policy := pod.Spec.DNSPolicy
	if policy == "" {
		policy = v1.DNSClusterFirst
	}
	hasCluster := len(cluster.Nameservers) > 0
	switch policy {
	case v1.DNSClusterFirst:
		if pod.Spec.HostNetwork || !hasCluster {
			policy = v1.DNSDefault
		}
	case v1.DNSClusterFirstWithHostNet:
		if !hasCluster {
			policy = v1.DNSDefault
		}
	case v1.DNSDefault, v1.DNSNone:
	default:
		return Conf{}, false, fmt.Errorf("poddns: unknown dnsPolicy %q", policy)
	}
	hostConf := Parse(host)
	switch policy {
	case v1.DNSDefault:
		if pod.Spec.DNSConfig == nil {
			return hostConf, true, nil
		}
		conf = hostConf
	case v1.DNSNone:
		if pod.Spec.DNSConfig == nil {
			return Conf{}, false, fmt.Errorf("poddns: dnsPolicy None needs spec.dnsConfig")
		}
	default: // the cluster's
		d := strings.TrimSuffix(cluster.Domain, ".")
		conf = Conf{
			Nameservers: slices.Clone(cluster.Nameservers),
			Searches:    append([]string{pod.Namespace + ".svc." + d, "svc." + d, d}, hostConf.Searches...),
			Options:     []string{"ndots:5"},
		}
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		conf.Nameservers = appendNew(conf.Nameservers, dc.Nameservers)
		conf.Searches = appendNew(conf.Searches, dc.Searches)
		var opts []string
		for _, o := range dc.Options {
			if o.Value != nil {
				opts = append(opts, o.Name+":"+*o.Value)
			} else {
				opts = append(opts, o.Name)
			}
		}
		conf.Options = mergeOptions(conf.Options, opts)
	}
	if len(conf.Nameservers) > maxNameservers {
		conf.Nameservers = conf.Nameservers[:maxNameservers]
	}
	if len(conf.Searches) > maxSearches {
		conf.Searches = conf.Searches[:maxSearches]
	}
	return conf, false, nil
}

func appendNew(to, from []string) []string {
	for _, s := range from {
		if !slices.Contains(to, s) {
			to = append(to, s)
		}
	}
	return to
}

// mergeOptions adds opts to base, an option with the same name replacing
// the earlier one.
func mergeOptions(base, opts []string) []string {
	out := slices.Clone(base)
	for _, o := range opts {
		name, _, _ := strings.Cut(o, ":")
		if i := slices.IndexFunc(out, func(x string) bool { n, _, _ := strings.Cut(x, ":"); return n == name }); i >= 0 {
			out[i] = o
		} else {
			out = append(out, o)
		}
	}
	return out
}
