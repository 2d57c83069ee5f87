package clusterdns

import (
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// TTL is the time to live of every answer, in seconds (CoreDNS's
// kubernetes plugin default).
const TTL = 5

// ednsSize is the UDP payload size this server advertises in EDNS0.
const ednsSize = 1232

// Answer is the server's decision: the response to req for the zone of
// the cluster domain (a lower-case FQDN such as "cluster.local.") as view
// holds it. tcp says the query came over TCP, which lifts the UDP size
// limit; an answer too big for UDP comes back truncated with the TC bit.
func Answer(req *dns.Msg, tcp bool, domain string, view View) *dns.Msg {
	resp := new(dns.Msg)
	if req.Response || len(req.Question) != 1 {
		return resp.SetRcodeFormatError(req)
	}
	if req.Opcode != dns.OpcodeQuery {
		return resp.SetRcode(req, dns.RcodeNotImplemented)
	}
	resp.SetReply(req)
	resp.Compress = true
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(domain, name) || (q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY) {
		// No upstream here: see the package comment.
		resp.Rcode = dns.RcodeRefused
		return finish(req, resp, tcp)
	}
	resp.Authoritative = true
	z := zone{domain: domain, view: view, qname: q.Name, qtype: q.Qtype}
	rcode, answer, extra := z.resolve(labelsOf(name, domain))
	resp.Rcode = rcode
	resp.Answer, resp.Extra = answer, extra
	if len(answer) == 0 {
		resp.Ns = []dns.RR{z.soa()}
	}
	return finish(req, resp, tcp)
}

// finish adds EDNS0 when the query had it and truncates to the size the
// transport allows.
func finish(req, resp *dns.Msg, tcp bool) *dns.Msg {
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(ednsSize, false)
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
	}
	if tcp {
		size = dns.MaxMsgSize
	}
	resp.Truncate(size)
	return resp
}

// labelsOf returns the labels of name below domain, the last one first:
// "web.shop.svc.cluster.local." → [svc shop web].
func labelsOf(name, domain string) []string {
	rel := strings.TrimSuffix(strings.TrimSuffix(name, domain), ".")
	if rel == "" {
		return nil
	}
	l := strings.Split(rel, ".")
	for i, j := 0, len(l)-1; i < j; i, j = i+1, j-1 {
		l[i], l[j] = l[j], l[i]
	}
	return l
}

type zone struct {
	domain string
	view   View
	qname  string // as asked (case kept: resolvers match 0x20 answers)
	qtype  uint16
}

func (z zone) hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: TTL}
}

func (z zone) soa() dns.RR {
	return &dns.SOA{
		Hdr:     z.hdr(z.domain, dns.TypeSOA),
		Ns:      "ns.dns." + z.domain,
		Mbox:    "hostmaster." + z.domain,
		Serial:  z.view.Serial(),
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  TTL,
	}
}

func (z zone) wants(t uint16) bool { return z.qtype == t || z.qtype == dns.TypeANY }

// resolve answers the labels below the domain, last label first.
func (z zone) resolve(l []string) (rcode int, answer, extra []dns.RR) {
	switch {
	case len(l) == 0: // the apex
		if z.wants(dns.TypeSOA) {
			answer = append(answer, z.soa())
		}
		if z.wants(dns.TypeNS) {
			answer = append(answer, &dns.NS{Hdr: z.hdr(z.qname, dns.TypeNS), Ns: "ns.dns." + z.domain})
		}
		return dns.RcodeSuccess, answer, nil
	case l[0] != "svc":
		return dns.RcodeNameError, nil, nil
	case len(l) == 1:
		return dns.RcodeSuccess, nil, nil // svc.<domain>: an empty non-terminal
	case len(l) == 2:
		if z.view.HasNamespace(l[1]) {
			return dns.RcodeSuccess, nil, nil
		}
		return dns.RcodeNameError, nil, nil
	}
	svc, slices, ok := z.view.Lookup(l[1], l[2])
	if !ok {
		return dns.RcodeNameError, nil, nil
	}
	switch len(l) {
	case 3:
		return dns.RcodeSuccess, z.serviceRRs(svc, slices), nil
	case 4:
		ips := endpointIPs(svc, slices, l[3])
		if len(ips) == 0 {
			return dns.RcodeNameError, nil, nil
		}
		return dns.RcodeSuccess, z.addrRRs(z.qname, ips), nil
	case 5:
		port, proto := l[4], l[3]
		if !strings.HasPrefix(port, "_") || !strings.HasPrefix(proto, "_") {
			return dns.RcodeNameError, nil, nil
		}
		return z.srv(svc, slices, port[1:], proto[1:])
	}
	return dns.RcodeNameError, nil, nil
}

// addrRRs are the A and AAAA records of ips the query asks for.
func (z zone) addrRRs(owner string, ips []netip.Addr) []dns.RR {
	var out []dns.RR
	for _, ip := range ips {
		switch {
		case ip.Is4() && z.wants(dns.TypeA):
			out = append(out, &dns.A{Hdr: z.hdr(owner, dns.TypeA), A: ip.AsSlice()})
		case ip.Is6() && z.wants(dns.TypeAAAA):
			out = append(out, &dns.AAAA{Hdr: z.hdr(owner, dns.TypeAAAA), AAAA: ip.AsSlice()})
		}
	}
	return out
}

func (z zone) serviceRRs(svc Service, slices []Slice) []dns.RR {
	switch {
	case svc.ExternalName != "":
		return []dns.RR{&dns.CNAME{Hdr: z.hdr(z.qname, dns.TypeCNAME), Target: dns.Fqdn(svc.ExternalName)}}
	case svc.Headless:
		var ips []netip.Addr
		seen := map[netip.Addr]bool{}
		for _, sl := range slices {
			for _, e := range sl.Endpoints {
				if !e.Ready && !svc.PublishNotReady {
					continue
				}
				for _, ip := range e.IPs {
					if !seen[ip] {
						seen[ip] = true
						ips = append(ips, ip)
					}
				}
			}
		}
		return z.addrRRs(z.qname, ips)
	default:
		return z.addrRRs(z.qname, svc.ClusterIPs)
	}
}

// endpointIPs are the addresses of the endpoints named host: by their
// hostname, or by their address with dashes (10-0-1-5) when they have none.
func endpointIPs(svc Service, slices []Slice, host string) []netip.Addr {
	var out []netip.Addr
	for _, sl := range slices {
		for _, e := range sl.Endpoints {
			if !e.Ready && !svc.PublishNotReady {
				continue
			}
			for _, ip := range e.IPs {
				if endpointLabel(e, ip) == host {
					out = append(out, ip)
				}
			}
		}
	}
	return out
}

// endpointLabel is the first label of an endpoint's name.
func endpointLabel(e Endpoint, ip netip.Addr) string {
	if e.Hostname != "" {
		return e.Hostname
	}
	return strings.NewReplacer(".", "-", ":", "-").Replace(ip.String())
}

// srv answers _<port>._<proto>.<svc>.<ns>.svc: the service's name for a
// service with a cluster IP, each ready endpoint for a headless one; the
// targets' addresses go in the additional section.
func (z zone) srv(svc Service, slices []Slice, port, proto string) (int, []dns.RR, []dns.RR) {
	match := func(p Port) bool {
		return p.Name != "" && strings.EqualFold(p.Name, port) && strings.EqualFold(p.Protocol, proto)
	}
	svcName := svc.Name + "." + svc.Namespace + ".svc." + z.domain
	type target struct {
		name string
		port uint16
		ips  []netip.Addr
	}
	var targets []target
	if !svc.Headless {
		for _, p := range svc.Ports {
			if match(p) {
				targets = append(targets, target{svcName, p.Port, svc.ClusterIPs})
			}
		}
	} else {
		for _, sl := range slices {
			for _, p := range sl.Ports {
				if !match(p) {
					continue
				}
				for _, e := range sl.Endpoints {
					if !e.Ready && !svc.PublishNotReady {
						continue
					}
					for _, ip := range e.IPs {
						targets = append(targets, target{endpointLabel(e, ip) + "." + svcName, p.Port, []netip.Addr{ip}})
					}
				}
			}
		}
	}
	if len(targets) == 0 {
		return dns.RcodeNameError, nil, nil
	}
	if !z.wants(dns.TypeSRV) {
		return dns.RcodeSuccess, nil, nil
	}
	weight := uint16(max(100/len(targets), 1))
	var answer, extra []dns.RR
	all := z
	all.qtype = dns.TypeANY
	for _, t := range targets {
		answer = append(answer, &dns.SRV{Hdr: z.hdr(z.qname, dns.TypeSRV), Priority: 0, Weight: weight, Port: t.port, Target: t.name})
		extra = append(extra, all.addrRRs(t.name, t.ips)...)
	}
	return dns.RcodeSuccess, answer, extra
}
