package proxy

import (
	"errors"
	"fmt"
	"sync"

	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/waypoint/l7authz"
	"github.com/ambientmesh/ambient/waypoint/route"
)

// L7Config is the waypoint's own configuration besides the mesh: the
// routing tables (istiod-lite's ServiceRoutes), the AuthorizationPolicies
// with targetRefs and the services' resilience policies (istiod-lite's
// ServiceResilience). It is compiled off the request path by [Compile] and
// swapped in atomically by [Proxy.SetL7].
type L7Config struct {
	Routes     []*waypointapi.ServiceRoutes
	Policies   []l7authz.Input
	Resilience []*waypointapi.ServiceResilience
}

// Compiled is an immutable, compiled L7Config.
type Compiled struct {
	src      L7Config
	tables   map[string]*route.Table // by waypointapi.ResourceName
	policies []*l7authz.Policy
	// resilience holds the compiled policies by service key; a service
	// without one has [defaultPolicy]. The state they drive lives in the
	// Proxy (resilience.go), which carries it across configurations.
	resilience map[string]*svcPolicy
	errs       []error

	// applicable caches l7authz.Applicable per destination (a pure
	// function of policies and the target), filled on first use, by
	// "namespace/name" of the destination Service ("/" for a workload).
	applicableMu sync.RWMutex // guards applicable
	applicable   map[string][]*l7authz.Policy
}

// Compile compiles c. An item that does not compile is left out (a route
// table: its parent gets the default route; a policy: it is not enforced,
// which for an ALLOW policy means its targets may allow more — the error
// says which) and reported in the returned errors; the rest is in force.
func Compile(c L7Config) (*Compiled, []error) {
	out := &Compiled{src: c, tables: make(map[string]*route.Table, len(c.Routes))}
	for i, r := range c.Routes {
		name := r.Name()
		if _, dup := out.tables[name]; dup {
			out.errs = append(out.errs, fmt.Errorf("routes[%d] %s: duplicate table; the first one is kept", i, name))
			continue
		}
		t, err := route.Compile(r)
		if err != nil {
			out.errs = append(out.errs, fmt.Errorf("routes[%d] %s: %w", i, name, err))
			continue
		}
		out.tables[name] = t
	}
	for i, in := range c.Policies {
		p, err := l7authz.Compile(in)
		if err != nil {
			out.errs = append(out.errs, fmt.Errorf("authorizationPolicies[%d] %s/%s: %w", i, in.Namespace, in.Name, err))
			continue
		}
		out.policies = append(out.policies, p)
	}
	out.resilience = make(map[string]*svcPolicy, len(c.Resilience))
	for i, r := range c.Resilience {
		key := r.GetServiceKey()
		if _, dup := out.resilience[key]; dup {
			out.errs = append(out.errs, fmt.Errorf("resilience[%d] %s: duplicate policy; the first one is kept", i, key))
			continue
		}
		pol, err := compilePolicy(r)
		if err != nil {
			out.errs = append(out.errs, fmt.Errorf("resilience[%d] %s: %w; the service has the defaults", i, key, err))
			continue
		}
		out.resilience[key] = pol
	}
	return out, out.errs
}

// policy is the resilience policy of the service with key svcKey.
func (c *Compiled) policy(svcKey string) *svcPolicy {
	if p := c.resilience[svcKey]; p != nil {
		return p
	}
	return defaultPolicy
}

// Errors lists what did not compile.
func (c *Compiled) Errors() []error { return c.errs }

// Source is the configuration c was compiled from.
func (c *Compiled) Source() L7Config { return c.src }

// errNoTable: the destination has no routing table.
var errNoTable = errors.New("no routing table")

// table finds the routing table for a request to service key svcKey (empty
// for a workload-addressed request) on port, from a client in namespace
// clientNS: consumer routes of the client's namespace first (GEP-1294),
// then the service's own, each for the port and then for every port; then
// the waypoint Gateway's. gateway says the table found is the Gateway's.
func (c *Compiled) table(svcKey string, port uint32, clientNS, gwKey string) (t *route.Table, gateway bool) {
	if len(c.tables) == 0 {
		return nil, false
	}
	if svcKey != "" {
		if clientNS != "" {
			if t := c.lookup(svcKey, port, clientNS); t != nil {
				return t, false
			}
			if t := c.lookup(svcKey, 0, clientNS); t != nil {
				return t, false
			}
		}
		if t := c.lookup(svcKey, port, ""); t != nil {
			return t, false
		}
		if t := c.lookup(svcKey, 0, ""); t != nil {
			return t, false
		}
	}
	if gwKey != "" {
		if t := c.lookup(gwKey, port, ""); t != nil {
			return t, true
		}
		if t := c.lookup(gwKey, 0, ""); t != nil {
			return t, true
		}
	}
	return nil, false
}

// lookup is c.tables[waypointapi.ResourceName(key, port, consumerNS)],
// the name built on the stack (a map index by string(bytes) copies
// nothing).
func (c *Compiled) lookup(key string, port uint32, consumerNS string) *route.Table {
	var buf [128]byte
	return c.tables[string(waypointapi.AppendResourceName(buf[:0], key, port, consumerNS))]
}

// policiesFor returns the policies that apply at this waypoint to a
// destination: those targeting its Gateway or GatewayClass, and those
// targeting the destination Service (svcNS/svcName, empty for a workload).
func (c *Compiled) policiesFor(t targets, svcNS, svcName string) []*l7authz.Policy {
	if len(c.policies) == 0 {
		return nil
	}
	var buf [128]byte
	key := append(append(append(buf[:0], svcNS...), '/'), svcName...)
	c.applicableMu.RLock()
	ps, ok := c.applicable[string(key)] // no copy of key
	c.applicableMu.RUnlock()
	if ok {
		return ps
	}
	refs := []l7authz.TargetRef{l7authz.GatewayTarget(t.gatewayNS, t.gatewayName), l7authz.GatewayClassTarget(t.gatewayClass)}
	if svcName != "" {
		refs = append(refs, l7authz.ServiceTarget(svcNS, svcName))
	}
	ps = l7authz.Applicable(c.policies, t.rootNS, refs...)
	c.applicableMu.Lock()
	if c.applicable == nil {
		c.applicable = make(map[string][]*l7authz.Policy)
	}
	c.applicable[string(key)] = ps
	c.applicableMu.Unlock()
	return ps
}

// targets are the waypoint's own names that policies may target.
type targets struct {
	gatewayNS, gatewayName, gatewayClass, rootNS string
}
