// Package localconfig reads ztunnel's --local-config file: a YAML file that
// describes the mesh in the shape of the workload API, for running ztunnel
// without a control plane (tests, demos, debugging), in the spirit of Istio
// ztunnel's local config file.
//
// # File format
//
// The top level has three optional lists and nothing else:
//
//	workloads:   # istio.workload.Workload, keyed by uid
//	- uid: cluster1//v1/Pod/shop/frontend-1
//	  name: frontend-1
//	  namespace: shop
//	  service_account: frontend
//	  node: node-1
//	  addresses: ["10.244.1.5"]
//	  tunnel_protocol: HBONE
//	  tunnel_transport: QUIC  # our extension: clients tunnel over HTTP/3 (default H2)
//	  services:
//	    shop/backend.shop.svc.cluster.local: {ports: [{service_port: 80, target_port: 8080}]}
//	services:    # istio.workload.Service, keyed by namespace/hostname
//	- name: backend
//	  namespace: shop
//	  hostname: backend.shop.svc.cluster.local
//	  addresses: [{network: "", address: "10.96.0.10"}]
//	  ports: [{service_port: 80, target_port: 8080}]
//	policies:    # istio.security.Authorization, keyed by namespace/name
//	- name: allow-frontend
//	  namespace: shop
//	  scope: NAMESPACE
//	  action: ALLOW
//	  groups: [{rules: [{matches: [{principals: [{exact: "cluster.local/ns/shop/sa/frontend"}]}]}]}]
//
// Each item is the protojson form of its message: field names in snake_case
// (the proto name) or lowerCamelCase (the JSON name), enums by name. Unknown
// fields are errors, so a typo cannot silently drop a setting. The one
// departure from protojson is that IP addresses, bytes on the wire, are
// written as strings:
//
//   - Workload.addresses: "10.244.1.5" or "fd00::5";
//   - NetworkAddress.address (service VIPs, waypoint and gateway addresses):
//     "10.96.0.10"; a whole NetworkAddress may also be written as the string
//     "IP" or "network/IP", e.g. addresses: ["10.96.0.10"];
//   - istio.security.Address (source_ips, destination_ips, ...): either
//     {address: "10.0.0.0", length: 8} or the string "10.0.0.0/8"; a bare IP
//     means the single host.
//
// IPv4-mapped IPv6 addresses are stored as IPv4.
//
// Every workload needs a uid, every service a hostname and every policy a
// name, and names must be unique within their list. Errors name the item,
// as in `workloads[2] (uid "x"): addresses[0]: "10.0.0.300" is not an IP
// address`; YAML syntax errors name the line.
//
// [Watch] re-reads the file when it changes and keeps the last good config
// when an edit is invalid.
package localconfig

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/proto/workloadapi"
	"github.com/ambientmesh/ambient/proto/workloadapi/security"
)

// Load reads and parses the file at path.
func Load(path string) (state.Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return state.Snapshot{}, fmt.Errorf("localconfig: %w", err)
	}
	snap, err := parse(data)
	if err != nil {
		return state.Snapshot{}, fmt.Errorf("localconfig: %s: %w", path, err)
	}
	return snap, nil
}

// Parse parses a local config document. The result has passed the same
// validation as [state.NewView], so [state.Store.Replace] accepts it.
func Parse(data []byte) (state.Snapshot, error) {
	snap, err := parse(data)
	if err != nil {
		return state.Snapshot{}, fmt.Errorf("localconfig: %w", err)
	}
	return snap, nil
}

// ParseSections parses a local config document that may carry, besides the
// mesh, the extra top-level sections named (another proxy's own settings,
// such as the waypoint's routes). It returns the mesh, validated as
// [Parse] does, and each extra section present, as JSON, for the caller to
// decode. Any other top-level key is an error, as in [Parse].
func ParseSections(data []byte, sections ...string) (state.Snapshot, map[string]json.RawMessage, error) {
	snap, extra, err := parseDoc(data, sections)
	if err != nil {
		return state.Snapshot{}, nil, fmt.Errorf("localconfig: %w", err)
	}
	return snap, extra, nil
}

// file is the top level of the document.
type file struct {
	Workloads []json.RawMessage `json:"workloads"`
	Services  []json.RawMessage `json:"services"`
	Policies  []json.RawMessage `json:"policies"`
}

func parse(data []byte) (state.Snapshot, error) {
	snap, _, err := parseDoc(data, nil)
	return snap, err
}

// parseDoc parses a document whose top level has the mesh's three lists and
// the extra sections named, which it returns undecoded.
func parseDoc(data []byte, sections []string) (state.Snapshot, map[string]json.RawMessage, error) {
	var snap state.Snapshot
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return snap, nil, err // names the line
	}
	if t := bytes.TrimSpace(j); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return snap, nil, nil // empty document: an empty mesh
	}
	want := "want a mapping with only workloads, services and policies lists"
	if len(sections) > 0 {
		want = "want a mapping with only workloads, services, policies, " + strings.Join(sections, ", ")
	}
	if j = bytes.TrimSpace(j); j[0] != '{' {
		return snap, nil, fmt.Errorf("top level: %s", want)
	}
	var extra map[string]json.RawMessage
	if len(sections) > 0 {
		var top map[string]json.RawMessage
		if err := json.Unmarshal(j, &top); err != nil {
			return snap, nil, fmt.Errorf("top level: %s (%s)", strings.TrimPrefix(err.Error(), "json: "), want)
		}
		for _, name := range sections {
			if raw, ok := top[name]; ok {
				if extra == nil {
					extra = map[string]json.RawMessage{}
				}
				extra[name] = raw
				delete(top, name)
			}
		}
		if j, err = json.Marshal(top); err != nil {
			return snap, nil, err
		}
	}
	var f file
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return snap, nil, fmt.Errorf("top level: %s (%s)", strings.TrimPrefix(err.Error(), "json: "), want)
	}
	snap, err = parseMesh(f)
	return snap, extra, err
}

// parseMesh decodes and checks the mesh's lists.
func parseMesh(f file) (state.Snapshot, error) {
	var snap state.Snapshot

	uids := map[string]int{}
	for i, raw := range f.Workloads {
		w := &workloadapi.Workload{}
		item, err := parseItem("workloads", i, raw, w, "uid")
		if err != nil {
			return snap, err
		}
		if w.GetUid() == "" {
			return snap, fmt.Errorf("%s: no uid; every workload needs a unique uid", item)
		}
		if first, dup := uids[w.GetUid()]; dup {
			return snap, fmt.Errorf("%s: duplicate uid, also used by workloads[%d]", item, first)
		}
		uids[w.GetUid()] = i
		snap.Workloads = append(snap.Workloads, w)
	}
	svcs := map[string]int{}
	for i, raw := range f.Services {
		s := &workloadapi.Service{}
		item, err := parseItem("services", i, raw, s, "hostname")
		if err != nil {
			return snap, err
		}
		if s.GetHostname() == "" {
			return snap, fmt.Errorf("%s: no hostname; a service is named namespace/hostname", item)
		}
		k := state.ServiceKey(s)
		if first, dup := svcs[k]; dup {
			return snap, fmt.Errorf("%s: duplicate service %q, also defined by services[%d]", item, k, first)
		}
		svcs[k] = i
		snap.Services = append(snap.Services, s)
	}
	pols := map[string]int{}
	for i, raw := range f.Policies {
		p := &security.Authorization{}
		item, err := parseItem("policies", i, raw, p, "name")
		if err != nil {
			return snap, err
		}
		if p.GetName() == "" {
			return snap, fmt.Errorf("%s: no name; a policy is named namespace/name", item)
		}
		k := state.PolicyKey(p)
		if first, dup := pols[k]; dup {
			return snap, fmt.Errorf("%s: duplicate policy %q, also defined by policies[%d]", item, k, first)
		}
		pols[k] = i
		snap.Policies = append(snap.Policies, p)
	}
	if _, err := state.NewView(snap, 0); err != nil { // anything the checks above missed
		return state.Snapshot{}, err
	}
	return snap, nil
}

// parseItem unmarshals the list item raw into m. It returns the item's name
// for error messages: list[i], with the value of idField when present.
func parseItem(list string, i int, raw json.RawMessage, m proto.Message, idField string) (string, error) {
	item := fmt.Sprintf("%s[%d]", list, i)
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return item, fmt.Errorf("%s: %v", item, err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return item, fmt.Errorf("%s: want a mapping of %s fields, got %s", item, m.ProtoReflect().Descriptor().FullName(), raw)
	}
	if id, ok := obj[idField].(string); ok && id != "" {
		item = fmt.Sprintf("%s (%s %q)", item, idField, id)
	}
	if _, err := rewriteMessage(m.ProtoReflect().Descriptor(), obj, ""); err != nil {
		return item, fmt.Errorf("%s: %v", item, err)
	}
	j, err := json.Marshal(obj)
	if err != nil {
		return item, fmt.Errorf("%s: %v", item, err)
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(j, m); err != nil {
		return item, fmt.Errorf("%s: %s", item, cleanProtoErr(err))
	}
	return item, nil
}

// protoErrPrefix matches protojson's "proto: (line 1:23): " prefix, whose
// position refers to the JSON we generated, not to the user's YAML.
var protoErrPrefix = regexp.MustCompile(`^proto:[\s\x{00a0}]*(\(line \d+:\d+\):\s*)?`)

func cleanProtoErr(err error) string {
	return protoErrPrefix.ReplaceAllString(err.Error(), "")
}

// Messages whose whole value may be written as a string.
const (
	securityAddress = protoreflect.FullName("istio.security.Address")
	networkAddress  = protoreflect.FullName("istio.workload.NetworkAddress")
)

// rewriteMessage turns the friendly forms of v, the JSON value of a message
// of type md, into protojson: IP strings in bytes fields become base64, and
// string shorthands of address messages become objects. It returns the new
// value; maps and slices are rewritten in place. Values of the wrong JSON type
// are left for protojson to report.
func rewriteMessage(md protoreflect.MessageDescriptor, v any, path string) (any, error) {
	if s, ok := v.(string); ok {
		switch md.FullName() {
		case securityAddress:
			return cidrObject(s, path)
		case networkAddress:
			return networkAddressObject(s, path)
		}
	}
	if !strings.HasPrefix(string(md.FullName()), "istio.") {
		return v, nil // well-known types (Any, wrappers) keep protojson's form
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return v, nil
	}
	fields := md.Fields()
	for k, fv := range obj {
		fd := fields.ByName(protoreflect.Name(k))
		if fd == nil {
			fd = fields.ByJSONName(k)
		}
		if fd == nil {
			continue // protojson reports unknown fields
		}
		nv, err := rewriteField(fd, fv, joinPath(path, k))
		if err != nil {
			return nil, err
		}
		obj[k] = nv
	}
	return obj, nil
}

func rewriteField(fd protoreflect.FieldDescriptor, v any, path string) (any, error) {
	switch {
	case fd.IsMap():
		m, ok := v.(map[string]any)
		if !ok || fd.MapValue().Kind() != protoreflect.MessageKind {
			return v, nil
		}
		for k, mv := range m {
			nv, err := rewriteMessage(fd.MapValue().Message(), mv, path+"["+strconv.Quote(k)+"]")
			if err != nil {
				return nil, err
			}
			m[k] = nv
		}
		return m, nil
	case fd.IsList():
		l, ok := v.([]any)
		if !ok {
			return v, nil
		}
		for i, e := range l {
			nv, err := rewriteValue(fd, e, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			l[i] = nv
		}
		return l, nil
	}
	return rewriteValue(fd, v, path)
}

func rewriteValue(fd protoreflect.FieldDescriptor, v any, path string) (any, error) {
	switch fd.Kind() {
	case protoreflect.BytesKind: // in the workload API, every bytes field is an IP
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%s: want an IP address as a string, got %v", path, v)
		}
		a, err := parseIP(s, path)
		if err != nil {
			return nil, err
		}
		return base64.StdEncoding.EncodeToString(a.AsSlice()), nil
	case protoreflect.MessageKind:
		return rewriteMessage(fd.Message(), v, path)
	}
	return v, nil
}

func parseIP(s, path string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%s: %q is not an IP address (want e.g. 10.0.0.1 or fd00::1)", path, s)
	}
	return a.Unmap(), nil
}

// cidrObject expands "10.0.0.0/8" or "10.0.0.1" to an istio.security.Address.
func cidrObject(s, path string) (any, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return nil, fmt.Errorf("%s: %q is not an IP or CIDR (want e.g. 10.0.0.0/8)", path, s)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
	} else {
		a, err := parseIP(s, path)
		if err != nil {
			return nil, err
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return map[string]any{
		"address": base64.StdEncoding.EncodeToString(p.Addr().AsSlice()),
		"length":  p.Bits(),
	}, nil
}

// networkAddressObject expands "IP" or "network/IP" to an
// istio.workload.NetworkAddress.
func networkAddressObject(s, path string) (any, error) {
	network, ipStr := "", s
	if i := strings.LastIndex(s, "/"); i >= 0 {
		network, ipStr = s[:i], s[i+1:]
	}
	a, err := parseIP(ipStr, path)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"network": network,
		"address": base64.StdEncoding.EncodeToString(a.AsSlice()),
	}, nil
}

func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}
