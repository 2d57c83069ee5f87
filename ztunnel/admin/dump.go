package admin

import (
	"crypto/x509"
	"encoding/pem"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// Dump is the /config_dump document, in the JSON shape of Istio ztunnel's
// config dump (what istioctl's ztunnel-config reads: field names as in
// istioctl/pkg/writer/ztunnel/configdump).
type Dump struct {
	Workloads    []Workload    `json:"workloads"`
	Services     []Service     `json:"services"`
	Policies     []Policy      `json:"policies"`
	Certificates []Certificate `json:"certificates"`
}

// Workload is a workload in Istio ztunnel's dump shape.
type Workload struct {
	UID            string          `json:"uid"`
	WorkloadIPs    []string        `json:"workloadIps"`
	Waypoint       *GatewayAddress `json:"waypoint,omitempty"`
	NetworkGateway *GatewayAddress `json:"networkGateway,omitempty"`
	Protocol       string          `json:"protocol"`
	// TunnelTransport is our extension (not in Istio's dump, which
	// istioctl ignores): how tunnels to an HBONE workload are carried, "H2"
	// or "QUIC" (Workload.tunnel_transport); empty for other protocols.
	TunnelTransport       string             `json:"tunnelTransport,omitempty"`
	Name                  string             `json:"name"`
	Namespace             string             `json:"namespace"`
	ServiceAccount        string             `json:"serviceAccount"`
	WorkloadName          string             `json:"workloadName"`
	WorkloadType          string             `json:"workloadType"`
	CanonicalName         string             `json:"canonicalName"`
	CanonicalRevision     string             `json:"canonicalRevision"`
	ClusterID             string             `json:"clusterId"`
	TrustDomain           string             `json:"trustDomain,omitempty"`
	Locality              *Locality          `json:"locality,omitempty"`
	Node                  string             `json:"node"`
	Network               string             `json:"network,omitempty"`
	Status                string             `json:"status"`
	Hostname              string             `json:"hostname"`
	NativeTunnel          bool               `json:"nativeTunnel,omitempty"`
	ApplicationTunnel     *ApplicationTunnel `json:"applicationTunnel,omitempty"`
	Services              []string           `json:"services,omitempty"`
	AuthorizationPolicies []string           `json:"authorizationPolicies,omitempty"`
}

// GatewayAddress is a waypoint or network gateway: "network/IP" or
// "namespace/hostname", and its HBONE port.
type GatewayAddress struct {
	Destination string `json:"destination"`
	Port        uint32 `json:"port,omitempty"`
}

// Locality is a workload's topology.
type Locality struct {
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	Subzone string `json:"subzone,omitempty"`
}

// ApplicationTunnel is a workload's own tunnel termination.
type ApplicationTunnel struct {
	Protocol string `json:"protocol"`
	Port     uint32 `json:"port,omitempty"`
}

// Service is a service in Istio ztunnel's dump shape.
type Service struct {
	Name            string               `json:"name"`
	Namespace       string               `json:"namespace"`
	Hostname        string               `json:"hostname"`
	VIPs            []string             `json:"vips"`
	Ports           map[string]uint32    `json:"ports"`
	LoadBalancer    *LoadBalancer        `json:"loadBalancer,omitempty"`
	Waypoint        *GatewayAddress      `json:"waypoint,omitempty"`
	Endpoints       map[string]*Endpoint `json:"endpoints"`
	SubjectAltNames []string             `json:"subjectAltNames,omitempty"`
	IPFamilies      string               `json:"ipFamilies"`
}

// LoadBalancer is a service's load balancing settings.
type LoadBalancer struct {
	Mode               string   `json:"mode"`
	RoutingPreferences []string `json:"routingPreferences"`
	HealthPolicy       string   `json:"healthPolicy"`
}

// Endpoint is one workload backing a service, keyed "uid:network/IP".
type Endpoint struct {
	WorkloadUID string            `json:"workloadUid"`
	Service     string            `json:"service"`
	Address     string            `json:"address,omitempty"`
	Port        map[string]uint32 `json:"port"`
	Status      string            `json:"status"`
}

// Policy is an authorization policy in Istio ztunnel's dump shape: rules
// are groups (ORed) of rules (ANDed) of matches (ORed).
type Policy struct {
	Name      string       `json:"name"`
	Namespace string       `json:"namespace"`
	Scope     string       `json:"scope"`
	Action    string       `json:"action"`
	Rules     [][][]*Match `json:"rules"`
	DryRun    bool         `json:"dryRun,omitempty"`
}

// Match is one match of a policy rule.
type Match struct {
	Namespaces          []StringMatch         `json:"namespaces,omitempty"`
	NotNamespaces       []StringMatch         `json:"notNamespaces,omitempty"`
	Principals          []StringMatch         `json:"principals,omitempty"`
	NotPrincipals       []StringMatch         `json:"notPrincipals,omitempty"`
	SourceIPs           []string              `json:"sourceIps,omitempty"`
	NotSourceIPs        []string              `json:"notSourceIps,omitempty"`
	DestinationIPs      []string              `json:"destinationIps,omitempty"`
	NotDestinationIPs   []string              `json:"notDestinationIps,omitempty"`
	DestinationPorts    []uint32              `json:"destinationPorts,omitempty"`
	NotDestinationPorts []uint32              `json:"notDestinationPorts,omitempty"`
	ServiceAccounts     []ServiceAccountMatch `json:"serviceAccounts,omitempty"`
	NotServiceAccounts  []ServiceAccountMatch `json:"notServiceAccounts,omitempty"`
}

// StringMatch is exactly one of its fields, capitalized as Istio's dump has it.
type StringMatch struct {
	Exact    string    `json:"Exact,omitempty"`
	Prefix   string    `json:"Prefix,omitempty"`
	Suffix   string    `json:"Suffix,omitempty"`
	Presence *struct{} `json:"Presence,omitempty"`
}

// ServiceAccountMatch matches a namespace's service account.
type ServiceAccountMatch struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
}

// Certificate is one identity's certificate state: State is "Available"
// with the chain (leaf first, root last), "Initializing" while the first
// certificate is being fetched, or "Unavailable: reason".
type Certificate struct {
	Identity  string `json:"identity"`
	State     string `json:"state"`
	CertChain []Cert `json:"certChain"`
}

// Cert is one certificate of a chain.
type Cert struct {
	PEM            string `json:"pem"`
	SerialNumber   string `json:"serialNumber"`
	ValidFrom      string `json:"validFrom"`
	ExpirationTime string `json:"expirationTime"`
}

// NewCert describes c; times are RFC 3339 in UTC, the serial in decimal.
func NewCert(c *x509.Certificate) Cert {
	return Cert{
		PEM:            string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})),
		SerialNumber:   c.SerialNumber.String(),
		ValidFrom:      c.NotBefore.UTC().Format(time.RFC3339),
		ExpirationTime: c.NotAfter.UTC().Format(time.RFC3339),
	}
}

// BuildDump renders a view and the certificates as the config dump. It is
// pure: every list is in a stable order (workloads by uid, services by
// namespace/hostname, policies by namespace/name, certificates as given).
func BuildDump(v *state.View, certs []Certificate) Dump {
	snap := v.Snapshot()
	d := Dump{
		Workloads:    make([]Workload, 0, len(snap.Workloads)),
		Services:     make([]Service, 0, len(snap.Services)),
		Policies:     make([]Policy, 0, len(snap.Policies)),
		Certificates: certs,
	}
	if d.Certificates == nil {
		d.Certificates = []Certificate{}
	}
	for _, w := range snap.Workloads {
		d.Workloads = append(d.Workloads, workloadOf(w))
	}
	for _, s := range snap.Services {
		d.Services = append(d.Services, serviceOf(v, s))
	}
	for _, p := range snap.Policies {
		d.Policies = append(d.Policies, policyOf(p))
	}
	return d
}

func workloadOf(w *workloadapi.Workload) Workload {
	out := Workload{
		UID:                   w.GetUid(),
		WorkloadIPs:           make([]string, 0, len(w.GetAddresses())),
		Waypoint:              gatewayOf(w.GetWaypoint()),
		NetworkGateway:        gatewayOf(w.GetNetworkGateway()),
		Protocol:              protocolOf(w.GetTunnelProtocol()),
		Name:                  w.GetName(),
		Namespace:             w.GetNamespace(),
		ServiceAccount:        w.GetServiceAccount(),
		WorkloadName:          w.GetWorkloadName(),
		WorkloadType:          strings.ToLower(w.GetWorkloadType().String()),
		CanonicalName:         w.GetCanonicalName(),
		CanonicalRevision:     w.GetCanonicalRevision(),
		ClusterID:             w.GetClusterId(),
		TrustDomain:           w.GetTrustDomain(),
		Node:                  w.GetNode(),
		Network:               w.GetNetwork(),
		Status:                enumTitle(w.GetStatus().String()),
		Hostname:              w.GetHostname(),
		NativeTunnel:          w.GetNativeTunnel(),
		AuthorizationPolicies: w.GetAuthorizationPolicies(),
	}
	if out.ServiceAccount == "" {
		out.ServiceAccount = "default"
	}
	if out.TrustDomain == "" {
		out.TrustDomain = "cluster.local"
	}
	if w.GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE {
		out.TunnelTransport = w.GetTunnelTransport().String()
	}
	for _, a := range w.GetAddresses() {
		out.WorkloadIPs = append(out.WorkloadIPs, ipString(a))
	}
	if l := w.GetLocality(); l != nil {
		out.Locality = &Locality{Region: l.GetRegion(), Zone: l.GetZone(), Subzone: l.GetSubzone()}
	}
	if at := w.GetApplicationTunnel(); at != nil {
		out.ApplicationTunnel = &ApplicationTunnel{Protocol: at.GetProtocol().String(), Port: at.GetPort()}
	}
	for name := range w.GetServices() {
		out.Services = append(out.Services, name)
	}
	slices.Sort(out.Services)
	return out
}

// protocolOf names a tunnel protocol as Istio's dump does: HBONE, or TCP for
// plain traffic.
func protocolOf(p workloadapi.TunnelProtocol) string {
	switch p {
	case workloadapi.TunnelProtocol_HBONE:
		return "HBONE"
	case workloadapi.TunnelProtocol_LEGACY_ISTIO_MTLS:
		return "LegacyIstioMtls"
	default:
		return "TCP"
	}
}

func gatewayOf(g *workloadapi.GatewayAddress) *GatewayAddress {
	if g == nil {
		return nil
	}
	out := &GatewayAddress{Port: g.GetHboneMtlsPort()}
	if h := g.GetHostname(); h != nil {
		out.Destination = h.GetNamespace() + "/" + h.GetHostname()
	} else if a := g.GetAddress(); a != nil {
		out.Destination = networkAddr(a.GetNetwork(), a.GetAddress())
	}
	return out
}

func serviceOf(v *state.View, s *workloadapi.Service) Service {
	key := state.ServiceKey(s)
	out := Service{
		Name:            s.GetName(),
		Namespace:       s.GetNamespace(),
		Hostname:        s.GetHostname(),
		VIPs:            make([]string, 0, len(s.GetAddresses())),
		Ports:           make(map[string]uint32, len(s.GetPorts())),
		Waypoint:        gatewayOf(s.GetWaypoint()),
		Endpoints:       make(map[string]*Endpoint),
		SubjectAltNames: s.GetSubjectAltNames(),
		IPFamilies:      ipFamiliesOf(s),
	}
	for _, a := range s.GetAddresses() {
		vip := networkAddr(a.GetNetwork(), a.GetAddress())
		if a.Length != nil {
			vip += "/" + strconv.Itoa(int(a.GetLength()))
		}
		out.VIPs = append(out.VIPs, vip)
	}
	for _, p := range s.GetPorts() {
		out.Ports[strconv.Itoa(int(p.GetServicePort()))] = p.GetTargetPort()
	}
	if lb := s.GetLoadBalancing(); lb != nil {
		out.LoadBalancer = &LoadBalancer{
			Mode:               enumTitle(lb.GetMode().String()),
			RoutingPreferences: []string{},
			HealthPolicy:       enumTitle(lb.GetHealthPolicy().String()),
		}
		for _, r := range lb.GetRoutingPreference() {
			out.LoadBalancer.RoutingPreferences = append(out.LoadBalancer.RoutingPreferences, enumTitle(r.String()))
		}
	}
	for _, w := range v.Endpoints(s) {
		ports := make(map[string]uint32, len(s.GetPorts()))
		for _, p := range s.GetPorts() {
			if t, ok := state.TargetPort(s, uint16(p.GetServicePort()), w); ok {
				ports[strconv.Itoa(int(p.GetServicePort()))] = uint32(t)
			}
		}
		ep := &Endpoint{WorkloadUID: w.GetUid(), Service: key, Port: ports, Status: enumTitle(w.GetStatus().String())}
		k := w.GetUid()
		if addrs := w.GetAddresses(); len(addrs) > 0 {
			ep.Address = networkAddr(w.GetNetwork(), addrs[0])
			k += ":" + ep.Address
		}
		out.Endpoints[k] = ep
	}
	return out
}

func ipFamiliesOf(s *workloadapi.Service) string {
	switch s.GetIpFamilies() {
	case workloadapi.IPFamilies_IPV4_ONLY:
		return "IPv4"
	case workloadapi.IPFamilies_IPV6_ONLY:
		return "IPv6"
	case workloadapi.IPFamilies_DUAL:
		return "Dual"
	}
	var v4, v6 bool
	for _, a := range s.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(a.GetAddress()); ok {
			if ip.Unmap().Is4() {
				v4 = true
			} else {
				v6 = true
			}
		}
	}
	switch {
	case v4 && v6:
		return "Dual"
	case v6:
		return "IPv6"
	default:
		return "IPv4"
	}
}

func policyOf(p *security.Authorization) Policy {
	out := Policy{
		Name:      p.GetName(),
		Namespace: p.GetNamespace(),
		Scope:     enumTitle(p.GetScope().String()),
		Action:    enumTitle(p.GetAction().String()),
		Rules:     make([][][]*Match, 0, len(p.GetGroups())),
		DryRun:    p.GetDryRun(),
	}
	for _, g := range p.GetGroups() {
		rules := make([][]*Match, 0, len(g.GetRules()))
		for _, r := range g.GetRules() {
			matches := make([]*Match, 0, len(r.GetMatches()))
			for _, m := range r.GetMatches() {
				matches = append(matches, matchOf(m))
			}
			rules = append(rules, matches)
		}
		out.Rules = append(out.Rules, rules)
	}
	return out
}

func matchOf(m *security.Match) *Match {
	return &Match{
		Namespaces:          stringMatches(m.GetNamespaces()),
		NotNamespaces:       stringMatches(m.GetNotNamespaces()),
		Principals:          stringMatches(m.GetPrincipals()),
		NotPrincipals:       stringMatches(m.GetNotPrincipals()),
		SourceIPs:           cidrs(m.GetSourceIps()),
		NotSourceIPs:        cidrs(m.GetNotSourceIps()),
		DestinationIPs:      cidrs(m.GetDestinationIps()),
		NotDestinationIPs:   cidrs(m.GetNotDestinationIps()),
		DestinationPorts:    m.GetDestinationPorts(),
		NotDestinationPorts: m.GetNotDestinationPorts(),
		ServiceAccounts:     serviceAccounts(m.GetServiceAccounts()),
		NotServiceAccounts:  serviceAccounts(m.GetNotServiceAccounts()),
	}
}

func stringMatches(in []*security.StringMatch) []StringMatch {
	var out []StringMatch
	for _, s := range in {
		switch t := s.GetMatchType().(type) {
		case *security.StringMatch_Exact:
			out = append(out, StringMatch{Exact: t.Exact})
		case *security.StringMatch_Prefix:
			out = append(out, StringMatch{Prefix: t.Prefix})
		case *security.StringMatch_Suffix:
			out = append(out, StringMatch{Suffix: t.Suffix})
		case *security.StringMatch_Presence:
			out = append(out, StringMatch{Presence: &struct{}{}})
		}
	}
	return out
}

func cidrs(in []*security.Address) []string {
	var out []string
	for _, a := range in {
		ip, ok := netip.AddrFromSlice(a.GetAddress())
		if !ok {
			out = append(out, "invalid")
			continue
		}
		out = append(out, netip.PrefixFrom(ip.Unmap(), int(a.GetLength())).String())
	}
	return out
}

func serviceAccounts(in []*security.ServiceAccountMatch) []ServiceAccountMatch {
	var out []ServiceAccountMatch
	for _, s := range in {
		out = append(out, ServiceAccountMatch{Namespace: s.GetNamespace(), ServiceAccount: s.GetServiceAccount()})
	}
	return out
}

// ipString renders a 4- or 16-byte IP; anything else is "invalid".
func ipString(b []byte) string {
	ip, ok := netip.AddrFromSlice(b)
	if !ok {
		return "invalid"
	}
	return ip.Unmap().String()
}

// networkAddr renders "network/IP" as Istio's dump does ("/IP" on the
// default network).
func networkAddr(network string, ip []byte) string {
	return network + "/" + ipString(ip)
}

// enumTitle turns a proto enum name into the UpperCamelCase Istio's dump
// uses: WORKLOAD_SELECTOR → WorkloadSelector, HEALTHY → Healthy.
func enumTitle(s string) string {
	var b strings.Builder
	for part := range strings.SplitSeq(strings.ToLower(s), "_") {
		if part == "" {
			continue
		}
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	return b.String()
}
