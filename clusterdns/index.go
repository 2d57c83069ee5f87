package clusterdns

import (
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Service is what DNS needs of a Kubernetes Service.
type Service struct {
	Namespace, Name string
	// ClusterIPs are the service's virtual IPs; empty for a headless
	// service (clusterIP None) and for ExternalName.
	ClusterIPs []netip.Addr
	Headless   bool
	// ExternalName, if set, is answered with a CNAME.
	ExternalName string
	// PublishNotReady answers a headless service with not-ready endpoints
	// too (spec.publishNotReadyAddresses).
	PublishNotReady bool
	Ports           []Port
}

// Port is a named service or endpoint port.
type Port struct {
	Name     string
	Protocol string // TCP, UDP, SCTP
	Port     uint16
}

// Slice is what DNS needs of an EndpointSlice.
type Slice struct {
	Namespace, Name string
	Service         string // kubernetes.io/service-name
	Ports           []Port
	Endpoints       []Endpoint
}

// Endpoint is one endpoint of a slice.
type Endpoint struct {
	IPs      []netip.Addr
	Hostname string
	Ready    bool
}

// ServiceFromAPI converts a Service; ok is false for one DNS ignores
// (no name).
func ServiceFromAPI(s *v1.Service) (Service, bool) {
	if s == nil || s.Name == "" {
		return Service{}, false
	}
	out := Service{Namespace: s.Namespace, Name: s.Name, PublishNotReady: s.Spec.PublishNotReadyAddresses}
	switch {
	case s.Spec.Type == v1.ServiceTypeExternalName:
		out.ExternalName = s.Spec.ExternalName
	case s.Spec.ClusterIP == v1.ClusterIPNone:
		out.Headless = true
	default:
		ips := s.Spec.ClusterIPs
		if len(ips) == 0 && s.Spec.ClusterIP != "" {
			ips = []string{s.Spec.ClusterIP}
		}
		for _, ip := range ips {
			if a, err := netip.ParseAddr(ip); err == nil {
				out.ClusterIPs = append(out.ClusterIPs, a)
			}
		}
	}
	for _, p := range s.Spec.Ports {
		out.Ports = append(out.Ports, Port{Name: p.Name, Protocol: protocol(p.Protocol), Port: uint16(p.Port)})
	}
	return out, true
}

// SliceFromAPI converts an EndpointSlice; ok is false for one that
// belongs to no service or holds FQDN addresses.
func SliceFromAPI(s *discoveryv1.EndpointSlice) (Slice, bool) {
	if s == nil || s.AddressType == discoveryv1.AddressTypeFQDN {
		return Slice{}, false
	}
	svc := s.Labels[discoveryv1.LabelServiceName]
	if svc == "" {
		return Slice{}, false
	}
	out := Slice{Namespace: s.Namespace, Name: s.Name, Service: svc}
	for _, p := range s.Ports {
		if p.Port == nil {
			continue
		}
		pr := v1.ProtocolTCP
		if p.Protocol != nil {
			pr = *p.Protocol
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		out.Ports = append(out.Ports, Port{Name: name, Protocol: protocol(pr), Port: uint16(*p.Port)})
	}
	for _, e := range s.Endpoints {
		ep := Endpoint{Ready: e.Conditions.Ready == nil || *e.Conditions.Ready}
		if e.Hostname != nil {
			ep.Hostname = strings.ToLower(*e.Hostname)
		}
		for _, a := range e.Addresses {
			if ip, err := netip.ParseAddr(a); err == nil {
				ep.IPs = append(ep.IPs, ip)
			}
		}
		out.Endpoints = append(out.Endpoints, ep)
	}
	return out, true
}

func protocol(p v1.Protocol) string {
	if p == "" {
		return string(v1.ProtocolTCP)
	}
	return string(p)
}

// View is what Answer reads: the services and endpoints of the cluster.
type View interface {
	// Lookup returns a service and the slices that belong to it.
	Lookup(namespace, name string) (Service, []Slice, bool)
	// HasNamespace reports whether any service lives in namespace.
	HasNamespace(namespace string) bool
	// Serial is the zone's SOA serial, which changes with the index.
	Serial() uint32
}

type nsName struct{ ns, name string }

// Index is the View the informers keep current. Its methods are safe
// for concurrent use.
type Index struct {
	now func() time.Time

	mu       sync.RWMutex // guards the fields below
	services map[nsName]Service
	slices   map[nsName]map[string]Slice // by service, then slice name
	sliceSvc map[nsName]string           // slice → its service, to move slices
	nsCount  map[string]int              // services per namespace
	serial   uint32
}

// NewIndex returns an empty index; now stamps the SOA serial (nil:
// time.Now).
func NewIndex(now func() time.Time) *Index {
	if now == nil {
		now = time.Now
	}
	return &Index{
		now:      now,
		services: map[nsName]Service{},
		slices:   map[nsName]map[string]Slice{},
		sliceSvc: map[nsName]string{},
		nsCount:  map[string]int{},
		serial:   uint32(now().Unix()),
	}
}

// SetService adds or replaces a service.
func (x *Index) SetService(s Service) {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := nsName{s.Namespace, s.Name}
	if _, ok := x.services[k]; !ok {
		x.nsCount[s.Namespace]++
	}
	x.services[k] = s
	x.bumpLocked()
}

// DeleteService removes a service.
func (x *Index) DeleteService(namespace, name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := nsName{namespace, name}
	if _, ok := x.services[k]; !ok {
		return
	}
	delete(x.services, k)
	if x.nsCount[namespace]--; x.nsCount[namespace] <= 0 {
		delete(x.nsCount, namespace)
	}
	x.bumpLocked()
}

// SetSlice adds or replaces an endpoint slice.
func (x *Index) SetSlice(s Slice) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.deleteSliceLocked(s.Namespace, s.Name)
	svc := nsName{s.Namespace, s.Service}
	if x.slices[svc] == nil {
		x.slices[svc] = map[string]Slice{}
	}
	x.slices[svc][s.Name] = s
	x.sliceSvc[nsName{s.Namespace, s.Name}] = s.Service
	x.bumpLocked()
}

// DeleteSlice removes an endpoint slice.
func (x *Index) DeleteSlice(namespace, name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.deleteSliceLocked(namespace, name)
	x.bumpLocked()
}

func (x *Index) deleteSliceLocked(namespace, name string) {
	k := nsName{namespace, name}
	svc, ok := x.sliceSvc[k]
	if !ok {
		return
	}
	delete(x.sliceSvc, k)
	sk := nsName{namespace, svc}
	delete(x.slices[sk], name)
	if len(x.slices[sk]) == 0 {
		delete(x.slices, sk)
	}
}

func (x *Index) bumpLocked() {
	s := uint32(x.now().Unix())
	if s <= x.serial {
		s = x.serial + 1
	}
	x.serial = s
}

// Lookup implements View; slices come in name order.
func (x *Index) Lookup(namespace, name string) (Service, []Slice, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	k := nsName{namespace, name}
	s, ok := x.services[k]
	if !ok {
		return Service{}, nil, false
	}
	var out []Slice
	for _, sl := range x.slices[k] {
		out = append(out, sl)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return s, out, true
}

// HasNamespace implements View.
func (x *Index) HasNamespace(namespace string) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.nsCount[namespace] > 0
}

// Serial implements View.
func (x *Index) Serial() uint32 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.serial
}
