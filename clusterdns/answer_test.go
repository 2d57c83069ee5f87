package clusterdns

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const zoneName = "cluster.local."

func mustIPs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

// testIndex is a small cluster: a ClusterIP service, a dual-stack one, a
// headless one with hostnames, an ExternalName and a big headless one.
func testIndex() *Index {
	x := NewIndex(func() time.Time { return time.Unix(1000, 0) })
	x.SetService(Service{Namespace: "shop", Name: "web", ClusterIPs: mustIPs("10.96.0.20"),
		Ports: []Port{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}, {Protocol: "TCP", Port: 9000}}})
	x.SetService(Service{Namespace: "shop", Name: "dual", ClusterIPs: mustIPs("10.96.0.21", "fd00::21")})
	x.SetService(Service{Namespace: "shop", Name: "db", Headless: true, Ports: []Port{{Name: "pg", Protocol: "TCP", Port: 5432}}})
	x.SetSlice(Slice{Namespace: "shop", Name: "db-abc", Service: "db", Ports: []Port{{Name: "pg", Protocol: "TCP", Port: 5433}},
		Endpoints: []Endpoint{
			{IPs: mustIPs("10.0.1.5"), Hostname: "db-0", Ready: true},
			{IPs: mustIPs("10.0.2.6"), Ready: true},
			{IPs: mustIPs("10.0.2.7"), Hostname: "db-2", Ready: false},
		}})
	x.SetService(Service{Namespace: "shop", Name: "ext", ExternalName: "example.com"})
	x.SetService(Service{Namespace: "big", Name: "many", Headless: true})
	var eps []Endpoint
	for i := range 100 {
		eps = append(eps, Endpoint{IPs: mustIPs(fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)), Ready: true})
	}
	x.SetSlice(Slice{Namespace: "big", Name: "many-1", Service: "many", Endpoints: eps})
	return x
}

func query(name string, t uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, t)
	return m
}

// rrs renders records without TTL and class for comparison.
func rrs(in []dns.RR) []string {
	var out []string
	for _, rr := range in {
		f := strings.Fields(rr.String())
		out = append(out, f[0]+" "+strings.Join(f[3:], " "))
	}
	return out
}

func TestAnswer(t *testing.T) {
	x := testIndex()
	soa := "cluster.local. SOA ns.dns.cluster.local. hostmaster.cluster.local. " + fmt.Sprint(x.Serial()) + " 7200 1800 86400 5"
	for _, tc := range []struct {
		name       string
		q          string
		qtype      uint16
		rcode      int
		answer, ns []string
		extra      []string
		notAuth    bool
	}{
		{name: "ServiceA", q: "web.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeSuccess,
			answer: []string{"web.shop.svc.cluster.local. A 10.96.0.20"}},
		{name: "CaseInsensitiveKeepsAskedCase", q: "WeB.Shop.SVC.Cluster.Local.", qtype: dns.TypeA, rcode: dns.RcodeSuccess,
			answer: []string{"WeB.Shop.SVC.Cluster.Local. A 10.96.0.20"}},
		{name: "IPv4OnlyServiceAAAAIsNoData", q: "web.shop.svc.cluster.local.", qtype: dns.TypeAAAA, rcode: dns.RcodeSuccess,
			ns: []string{soa}},
		{name: "DualStackAAAA", q: "dual.shop.svc.cluster.local.", qtype: dns.TypeAAAA, rcode: dns.RcodeSuccess,
			answer: []string{"dual.shop.svc.cluster.local. AAAA fd00::21"}},
		{name: "DualStackA", q: "dual.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeSuccess,
			answer: []string{"dual.shop.svc.cluster.local. A 10.96.0.21"}},
		{name: "HeadlessReadyEndpointsOnly", q: "db.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeSuccess,
			answer: []string{"db.shop.svc.cluster.local. A 10.0.1.5", "db.shop.svc.cluster.local. A 10.0.2.6"}},
		{name: "EndpointHostname", q: "db-0.db.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeSuccess,
			answer: []string{"db-0.db.shop.svc.cluster.local. A 10.0.1.5"}},
		{name: "EndpointDashedIP", q: "10-0-2-6.db.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeSuccess,
			answer: []string{"10-0-2-6.db.shop.svc.cluster.local. A 10.0.2.6"}},
		{name: "NotReadyEndpointHostnameIsNXDOMAIN", q: "db-2.db.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError,
			ns: []string{soa}},
		{name: "SRVClusterIP", q: "_http._tcp.web.shop.svc.cluster.local.", qtype: dns.TypeSRV, rcode: dns.RcodeSuccess,
			answer: []string{"_http._tcp.web.shop.svc.cluster.local. SRV 0 100 80 web.shop.svc.cluster.local."},
			extra:  []string{"web.shop.svc.cluster.local. A 10.96.0.20"}},
		{name: "SRVProtocolMatters", q: "_dns._udp.web.shop.svc.cluster.local.", qtype: dns.TypeSRV, rcode: dns.RcodeSuccess,
			answer: []string{"_dns._udp.web.shop.svc.cluster.local. SRV 0 100 53 web.shop.svc.cluster.local."},
			extra:  []string{"web.shop.svc.cluster.local. A 10.96.0.20"}},
		{name: "SRVWrongProtocolIsNXDOMAIN", q: "_http._udp.web.shop.svc.cluster.local.", qtype: dns.TypeSRV, rcode: dns.RcodeNameError,
			ns: []string{soa}},
		{name: "SRVHeadlessPerEndpointWithEndpointPort", q: "_pg._tcp.db.shop.svc.cluster.local.", qtype: dns.TypeSRV, rcode: dns.RcodeSuccess,
			answer: []string{
				"_pg._tcp.db.shop.svc.cluster.local. SRV 0 50 5433 db-0.db.shop.svc.cluster.local.",
				"_pg._tcp.db.shop.svc.cluster.local. SRV 0 50 5433 10-0-2-6.db.shop.svc.cluster.local.",
			},
			extra: []string{"db-0.db.shop.svc.cluster.local. A 10.0.1.5", "10-0-2-6.db.shop.svc.cluster.local. A 10.0.2.6"}},
		{name: "SRVNameAskedForAIsNoData", q: "_http._tcp.web.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeSuccess,
			ns: []string{soa}},
		{name: "ExternalNameCNAME", q: "ext.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeSuccess,
			answer: []string{"ext.shop.svc.cluster.local. CNAME example.com."}},
		{name: "UnknownServiceNXDOMAINWithSOA", q: "nope.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError,
			ns: []string{soa}},
		{name: "UnknownNamespaceNXDOMAIN", q: "web.nope.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError,
			ns: []string{soa}},
		{name: "KnownNamespaceIsNoData", q: "shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeSuccess,
			ns: []string{soa}},
		{name: "NotUnderSvcNXDOMAIN", q: "web.shop.pod.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError,
			ns: []string{soa}},
		{name: "ApexSOA", q: "cluster.local.", qtype: dns.TypeSOA, rcode: dns.RcodeSuccess,
			answer: []string{soa}},
		{name: "OutsideDomainREFUSED", q: "example.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused, notAuth: true},
		{name: "SuffixLookalikeREFUSED", q: "web.notcluster.local.", qtype: dns.TypeA, rcode: dns.RcodeRefused, notAuth: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := query(tc.q, tc.qtype)
			resp := Answer(req, false, zoneName, x)
			if resp.Rcode != tc.rcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode])
			}
			if resp.Id != req.Id || !resp.Response || len(resp.Question) != 1 {
				t.Errorf("not a reply to the query: %v", resp)
			}
			if resp.Authoritative == tc.notAuth {
				t.Errorf("authoritative = %v", resp.Authoritative)
			}
			for _, c := range []struct {
				sec       string
				got, want []string
			}{{"answer", rrs(resp.Answer), tc.answer}, {"authority", rrs(resp.Ns), tc.ns}, {"additional", rrs(resp.Extra), tc.extra}} {
				if !slices.Equal(c.got, c.want) {
					t.Errorf("%s:\n got %q\nwant %q", c.sec, c.got, c.want)
				}
			}
		})
	}
}

func TestAnswer_BigAnswerTruncatedOverUDPWholeOverTCP(t *testing.T) {
	x := testIndex()
	q := "many.big.svc.cluster.local."
	udp := Answer(query(q, dns.TypeA), false, zoneName, x)
	if !udp.Truncated {
		t.Errorf("UDP answer with %d records not truncated", len(udp.Answer))
	}
	if b, err := udp.Pack(); err != nil || len(b) > dns.MinMsgSize {
		t.Errorf("UDP answer packs to %d bytes (%v), want <= %d", len(b), err, dns.MinMsgSize)
	}
	tcp := Answer(query(q, dns.TypeA), true, zoneName, x)
	if tcp.Truncated || len(tcp.Answer) != 100 {
		t.Errorf("TCP answer: truncated %v, %d records, want all 100", tcp.Truncated, len(tcp.Answer))
	}
	// EDNS0 raises the UDP limit.
	req := query(q, dns.TypeA)
	req.SetEdns0(4096, false)
	edns := Answer(req, false, zoneName, x)
	if edns.Truncated || len(edns.Answer) != 100 || edns.IsEdns0() == nil {
		t.Errorf("EDNS0 4096 answer: truncated %v, %d records, opt %v", edns.Truncated, len(edns.Answer), edns.IsEdns0())
	}
}

func TestAnswer_MalformedQueries(t *testing.T) {
	x := testIndex()
	none := new(dns.Msg)
	none.Id = 7
	if r := Answer(none, false, zoneName, x); r.Rcode != dns.RcodeFormatError {
		t.Errorf("no question: %s, want FORMERR", dns.RcodeToString[r.Rcode])
	}
	upd := query("web.shop.svc.cluster.local.", dns.TypeA)
	upd.Opcode = dns.OpcodeUpdate
	if r := Answer(upd, false, zoneName, x); r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("update: %s, want NOTIMP", dns.RcodeToString[r.Rcode])
	}
}

func TestIndex_SliceMovesAndDeletes(t *testing.T) {
	x := testIndex()
	s0 := x.Serial()
	x.SetSlice(Slice{Namespace: "shop", Name: "db-abc", Service: "web"})
	if _, sl, _ := x.Lookup("shop", "db"); len(sl) != 0 {
		t.Errorf("slice moved to another service still listed under db: %v", sl)
	}
	if x.Serial() <= s0 {
		t.Errorf("serial %d did not grow from %d", x.Serial(), s0)
	}
	x.DeleteSlice("shop", "db-abc")
	if _, sl, _ := x.Lookup("shop", "web"); len(sl) != 0 {
		t.Errorf("deleted slice still listed: %v", sl)
	}
	x.DeleteService("big", "many")
	if x.HasNamespace("big") {
		t.Error("namespace without services still known")
	}
}
