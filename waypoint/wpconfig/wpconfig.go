// Package wpconfig reads the waypoint's --local-config file: ztunnel's
// local config (package ztunnel/localconfig: workloads, services, L4
// policies in the workload API's shape) with two more top-level lists for
// the waypoint's L7 configuration, for running a waypoint without a
// control plane (tests, demos, debugging).
//
// # File format
//
//	workloads: [...]   # as ztunnel's
//	services: [...]
//	policies: [...]
//	routes:            # ambient.waypoint.v1.ServiceRoutes, protojson
//	- service_key: shop/reviews.shop.svc.cluster.local
//	  port: 9080
//	  matches: [{rule: 0}]
//	  rules:
//	  - route: shop/reviews
//	    backends:
//	    - {destination: {service: shop/reviews-v1.shop.svc.cluster.local, port: 9080}, weight: 90}
//	    - {destination: {service: shop/reviews-v2.shop.svc.cluster.local, port: 9080}, weight: 10}
//	    timeouts: {request: 0.5s}
//	    retry: {attempts: 3, codes: [503], backoff: 0.01s}
//	authorizationPolicies:   # security.istio.io AuthorizationPolicy manifests
//	- apiVersion: security.istio.io/v1
//	  kind: AuthorizationPolicy
//	  metadata: {name: deny-admin, namespace: shop, annotations: {istio.io/dry-run: "false"}}
//	  spec:
//	    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
//	    action: DENY
//	    rules: [{to: [{operation: {paths: ["/admin"]}}]}]
//	resilience:        # ambient.waypoint.v1.ServiceResilience, protojson
//	- service_key: shop/reviews.shop.svc.cluster.local
//	  traffic_policy:
//	    load_balancer: LB_ROUND_ROBIN
//	    connection_pool: {http2_max_requests: 100}
//	    outlier_detection: {consecutive_5xx_errors: 5, base_ejection_time: 30s}
//	  local_policy:
//	    rate_limit: {requests_per_unit: 100, unit: 1s}
//	    fault: {abort: {http_status: 503, percentage: 1}}
//
// Route tables and resilience policies are the protojson form of
// ServiceRoutes and ServiceResilience (snake_case or lowerCamelCase names,
// enums by name, durations as "0.5s"); unknown fields are errors. Unlike
// istiod-lite, the file fills in no defaults: an absent limit is no limit. A policy's spec has the CRD's fields (l7authz.Spec); unknown
// fields are errors, as with a strict apply. Errors name the item.
package wpconfig

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/waypointapi"
	"github.com/ambientmesh/ambient/waypoint/l7authz"
	"github.com/ambientmesh/ambient/waypoint/proxy"
	"github.com/ambientmesh/ambient/ztunnel/localconfig"
)

// The extra top-level sections of the waypoint's file.
const (
	SectionRoutes     = "routes"
	SectionPolicies   = "authorizationPolicies"
	SectionResilience = "resilience"
)

// DryRunAnnotation marks a policy evaluated and reported, never enforced.
const DryRunAnnotation = "istio.io/dry-run"

// Parse parses a waypoint local config document.
func Parse(data []byte) (state.Snapshot, proxy.L7Config, error) {
	snap, extra, err := localconfig.ParseSections(data, SectionRoutes, SectionPolicies, SectionResilience)
	if err != nil {
		return state.Snapshot{}, proxy.L7Config{}, err
	}
	var l7 proxy.L7Config
	if raw, ok := extra[SectionRoutes]; ok {
		if l7.Routes, err = parseRoutes(raw); err != nil {
			return state.Snapshot{}, proxy.L7Config{}, fmt.Errorf("wpconfig: %w", err)
		}
	}
	if raw, ok := extra[SectionPolicies]; ok {
		if l7.Policies, err = parsePolicies(raw); err != nil {
			return state.Snapshot{}, proxy.L7Config{}, fmt.Errorf("wpconfig: %w", err)
		}
	}
	if raw, ok := extra[SectionResilience]; ok {
		if l7.Resilience, err = parseResilience(raw); err != nil {
			return state.Snapshot{}, proxy.L7Config{}, fmt.Errorf("wpconfig: %w", err)
		}
	}
	return snap, l7, nil
}

// Load reads and parses the file at path.
func Load(path string) (state.Snapshot, proxy.L7Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return state.Snapshot{}, proxy.L7Config{}, fmt.Errorf("wpconfig: %w", err)
	}
	snap, l7, err := Parse(data)
	if err != nil {
		return state.Snapshot{}, proxy.L7Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return snap, l7, nil
}

// Watch loads the file at path and calls apply with it, then again after
// every change that parses (localconfig.WatchFile: a bad edit keeps the
// last good config; the first load must succeed). apply runs on Watch's
// goroutine only.
func Watch(ctx context.Context, path string, apply func(state.Snapshot, proxy.L7Config), logger *slog.Logger) error {
	return localconfig.WatchFile(ctx, path, func(data []byte) (func(), []any, error) {
		snap, l7, err := Parse(data)
		if err != nil {
			return nil, nil, err
		}
		return func() { apply(snap, l7) }, []any{"workloads", len(snap.Workloads), "services", len(snap.Services),
			"policies", len(snap.Policies), "routes", len(l7.Routes), "authorization_policies", len(l7.Policies),
			"resilience", len(l7.Resilience)}, nil
	}, logger)
}

func parseRoutes(raw json.RawMessage) ([]*waypointapi.ServiceRoutes, error) {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("%s: want a list of ServiceRoutes tables: %v", SectionRoutes, err)
	}
	out := make([]*waypointapi.ServiceRoutes, 0, len(items))
	for i, it := range items {
		r := &waypointapi.ServiceRoutes{}
		if err := protojson.Unmarshal(it, r); err != nil {
			return nil, fmt.Errorf("%s[%d]: %s", SectionRoutes, i, strings.ReplaceAll(err.Error(), "\u00a0", " "))
		}
		if r.GetServiceKey() == "" {
			return nil, fmt.Errorf("%s[%d]: no service_key; a table is named by its parent's key", SectionRoutes, i)
		}
		out = append(out, r)
	}
	return out, nil
}

func parseResilience(raw json.RawMessage) ([]*waypointapi.ServiceResilience, error) {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("%s: want a list of ServiceResilience policies: %v", SectionResilience, err)
	}
	out := make([]*waypointapi.ServiceResilience, 0, len(items))
	for i, it := range items {
		r := &waypointapi.ServiceResilience{}
		if err := protojson.Unmarshal(it, r); err != nil {
			return nil, fmt.Errorf("%s[%d]: %s", SectionResilience, i, strings.ReplaceAll(err.Error(), "\u00a0", " "))
		}
		if r.GetServiceKey() == "" {
			return nil, fmt.Errorf("%s[%d]: no service_key; a policy is named by its service's key", SectionResilience, i)
		}
		out = append(out, r)
	}
	return out, nil
}

// manifest is an AuthorizationPolicy object as kubectl applies it.
type manifest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Annotations map[string]string `json:"annotations"`
		Labels      map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

func parsePolicies(raw json.RawMessage) ([]l7authz.Input, error) {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("%s: want a list of AuthorizationPolicy manifests: %v", SectionPolicies, err)
	}
	out := make([]l7authz.Input, 0, len(items))
	for i, it := range items {
		var m manifest
		if err := json.Unmarshal(it, &m); err != nil {
			return nil, fmt.Errorf("%s[%d]: %v", SectionPolicies, i, err)
		}
		item := fmt.Sprintf("%s[%d] (%s/%s)", SectionPolicies, i, m.Metadata.Namespace, m.Metadata.Name)
		if m.Kind != "" && m.Kind != "AuthorizationPolicy" {
			return nil, fmt.Errorf("%s: kind %q, want AuthorizationPolicy", item, m.Kind)
		}
		if v := m.APIVersion; v != "" && !strings.HasPrefix(v, "security.istio.io/") {
			return nil, fmt.Errorf("%s: apiVersion %q, want security.istio.io/v1", item, v)
		}
		if m.Metadata.Name == "" || m.Metadata.Namespace == "" {
			return nil, fmt.Errorf("%s: metadata needs a name and a namespace", item)
		}
		in := l7authz.Input{Namespace: m.Metadata.Namespace, Name: m.Metadata.Name,
			DryRun: m.Metadata.Annotations[DryRunAnnotation] == "true"}
		if len(m.Spec) > 0 {
			dec := json.NewDecoder(bytes.NewReader(m.Spec))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&in.Spec); err != nil {
				return nil, fmt.Errorf("%s: spec: %s", item, strings.TrimPrefix(err.Error(), "json: "))
			}
		}
		out = append(out, in)
	}
	return out, nil
}
