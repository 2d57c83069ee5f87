package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// Resource type URLs served by the server.
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
	// TypeServiceRoutes carries the waypoints' routing tables, named by
	// waypointapi.ResourceName; only waypoints subscribe to it.
	TypeServiceRoutes = waypointapi.TypeURL
	// TypeWaypointPolicy carries the AuthorizationPolicies with targetRefs
	// (named "namespace/name"), which only waypoints enforce.
	TypeWaypointPolicy = waypointapi.PolicyTypeURL
	// TypeServiceResilience carries each Service's resilience policy
	// (DestinationRule + LocalTrafficPolicy), named by the service key
	// "namespace/hostname"; only waypoints subscribe to it.
	TypeServiceResilience = waypointapi.ResilienceTypeURL
)

// AddressName is the resource name of an Address: the workload's uid, or
// "namespace/hostname" for a service. It returns "" for an empty Address.
func AddressName(a *workloadapi.Address) string {
	switch t := a.GetType().(type) {
	case *workloadapi.Address_Workload:
		return t.Workload.GetUid()
	case *workloadapi.Address_Service:
		return t.Service.GetNamespace() + "/" + t.Service.GetHostname()
	}
	return ""
}

// AuthorizationName is the resource name of an Authorization:
// "namespace/name".
func AuthorizationName(p *security.Authorization) string {
	return p.GetNamespace() + "/" + p.GetName()
}

// Version is the version of a resource: the first 16 hex digits of the
// SHA-256 of its deterministic encoding.
func Version(m proto.Message) (string, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("xds: marshal %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}

// entry is one versioned resource, encoded once and shared by all streams.
type entry struct {
	version string
	body    *anypb.Any
}

// watcher receives the names changed by every [Cache.Update]. It must not
// block: it is called with the cache lock held.
type watcher interface {
	changed(typeURL string, names []string)
}

// Cache is the in-memory resource source of the server: per type URL, a map
// from resource name to versioned resource. It is safe for concurrent use.
type Cache struct {
	// mu guards the fields below.
	mu        sync.Mutex
	resources map[string]map[string]entry
	watchers  map[watcher]struct{}
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{
		resources: make(map[string]map[string]entry),
		watchers:  make(map[watcher]struct{}),
	}
}

// Update removes the names in removals and inserts or replaces upserts, as
// one change. Each message's type must match typeURL. A resource whose
// content (hence [Version]) did not change is not pushed again. On error the
// cache is unchanged.
func (c *Cache) Update(typeURL string, upserts map[string]proto.Message, removals []string) error {
	enc := make(map[string]entry, len(upserts))
	for name, m := range upserts {
		if name == "" || m == nil {
			return fmt.Errorf("xds: update %s: empty name or nil resource %q", typeURL, name)
		}
		body, err := anypb.New(m)
		if err != nil {
			return fmt.Errorf("xds: update %s: encode %q: %w", typeURL, name, err)
		}
		if body.GetTypeUrl() != typeURL {
			return fmt.Errorf("xds: update %s: resource %q has type %s", typeURL, name, body.GetTypeUrl())
		}
		v, err := Version(m)
		if err != nil {
			return err
		}
		enc[name] = entry{version: v, body: body}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.resources[typeURL]
	if m == nil {
		m = make(map[string]entry)
		c.resources[typeURL] = m
	}
	var changed []string
	for _, name := range removals {
		if _, ok := enc[name]; ok {
			continue // removed then re-added: the upsert decides
		}
		if _, ok := m[name]; ok {
			delete(m, name)
			changed = append(changed, name)
		}
	}
	for name, e := range enc {
		if old, ok := m[name]; ok && old.version == e.version {
			continue
		}
		m[name] = e
		changed = append(changed, name)
	}
	if len(changed) > 0 {
		for w := range c.watchers {
			w.changed(typeURL, changed)
		}
	}
	return nil
}

// get returns the current entry of one resource.
func (c *Cache) get(typeURL, name string) (entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.resources[typeURL][name]
	return e, ok
}

// snapshot returns a copy of every entry of a type.
func (c *Cache) snapshot(typeURL string) map[string]entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.resources[typeURL])
}

// Len returns the number of resources of a type.
func (c *Cache) Len(typeURL string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.resources[typeURL])
}

func (c *Cache) watch(w watcher) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watchers[w] = struct{}{}
}

func (c *Cache) unwatch(w watcher) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.watchers, w)
}
