// Package wirecompat compares two sets of proto definitions for wire
// compatibility: ours under proto/ against the upstream Istio files they
// must match.
//
// Two definitions are wire-compatible here when, within the proto packages
// the reference defines, both sides have the same messages, enums and
// services, and for each message the same fields (name, number, kind,
// cardinality, message or enum type, JSON name, real oneof, explicit
// presence, packing, map-ness), the same enum values and the same RPC
// methods. Our side may add fields numbered ExtensionFieldMin or higher, and
// may reserve more than the reference does, but must reserve everything the
// reference reserves. Comments, option values other than those above, Go
// package names and file names are ignored.
//
// The test in this package runs Diff against the reference files pinned in
// wirecompat_test.go; see there for how they are found.
package wirecompat

import (
	"fmt"
	"sort"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// ExtensionFieldMin is the lowest field number our side may use for fields the
// reference does not have.
const ExtensionFieldMin protoreflect.FieldNumber = 1000

// Diff reports every way ours differs on the wire from ref, one sorted line
// per difference. An empty result means compatible. Only declarations in the
// proto packages of ref's files are compared.
func Diff(ref, ours []protoreflect.FileDescriptor) []string {
	packages := map[protoreflect.FullName]bool{}
	for _, f := range ref {
		packages[f.Package()] = true
	}
	r, o := index(ref, packages), index(ours, packages)
	d := &differ{}

	compareSets(d, "message", r.messages, o.messages, d.message)
	compareSets(d, "enum", r.enums, o.enums, d.enum)
	compareSets(d, "service", r.services, o.services, d.service)
	sort.Strings(d.diffs)
	return d.diffs
}

// Counts reports how many messages, fields, enum values and methods Diff
// compares for ref, so a caller can tell a real comparison from an empty one.
func Counts(ref []protoreflect.FileDescriptor) (messages, fields, enumValues, methods int) {
	packages := map[protoreflect.FullName]bool{}
	for _, f := range ref {
		packages[f.Package()] = true
	}
	ix := index(ref, packages)
	for _, m := range ix.messages {
		messages++
		fields += m.Fields().Len()
	}
	for _, e := range ix.enums {
		enumValues += e.Values().Len()
	}
	for _, s := range ix.services {
		methods += s.Methods().Len()
	}
	return messages, fields, enumValues, methods
}

type declarations struct {
	messages map[protoreflect.FullName]protoreflect.MessageDescriptor
	enums    map[protoreflect.FullName]protoreflect.EnumDescriptor
	services map[protoreflect.FullName]protoreflect.ServiceDescriptor
}

// index collects every message (nested ones and map entries included), enum
// and service of files whose package is in packages.
func index(files []protoreflect.FileDescriptor, packages map[protoreflect.FullName]bool) declarations {
	ix := declarations{
		messages: map[protoreflect.FullName]protoreflect.MessageDescriptor{},
		enums:    map[protoreflect.FullName]protoreflect.EnumDescriptor{},
		services: map[protoreflect.FullName]protoreflect.ServiceDescriptor{},
	}
	type container interface {
		Messages() protoreflect.MessageDescriptors
		Enums() protoreflect.EnumDescriptors
	}
	var walk func(c container)
	walk = func(c container) {
		for i := 0; i < c.Enums().Len(); i++ {
			e := c.Enums().Get(i)
			ix.enums[e.FullName()] = e
		}
		for i := 0; i < c.Messages().Len(); i++ {
			m := c.Messages().Get(i)
			ix.messages[m.FullName()] = m
			walk(m)
		}
	}
	for _, f := range files {
		if !packages[f.Package()] {
			continue
		}
		walk(f)
		for i := 0; i < f.Services().Len(); i++ {
			s := f.Services().Get(i)
			ix.services[s.FullName()] = s
		}
	}
	return ix
}

type differ struct{ diffs []string }

func (d *differ) addf(format string, args ...any) {
	d.diffs = append(d.diffs, fmt.Sprintf(format, args...))
}

func (d *differ) message(ref, ours protoreflect.MessageDescriptor) {
	if ref.IsMapEntry() != ours.IsMapEntry() {
		d.addf("message %s: map entry %v, want %v", ref.FullName(), ours.IsMapEntry(), ref.IsMapEntry())
	}
	for i := 0; i < ref.Fields().Len(); i++ {
		rf := ref.Fields().Get(i)
		of := ours.Fields().ByNumber(rf.Number())
		if of == nil {
			if byName := ours.Fields().ByName(rf.Name()); byName != nil {
				d.addf("field %s: number %d, want %d", rf.FullName(), byName.Number(), rf.Number())
			} else {
				d.addf("field %s = %d: missing in ours", rf.FullName(), rf.Number())
			}
			continue
		}
		d.field(rf, of)
	}
	for i := 0; i < ours.Fields().Len(); i++ {
		of := ours.Fields().Get(i)
		if ref.Fields().ByNumber(of.Number()) != nil {
			continue
		}
		if of.Number() < ExtensionFieldMin {
			d.addf("field %s = %d: not in the reference; our own fields must be numbered %d or higher", of.FullName(), of.Number(), ExtensionFieldMin)
		}
		if ref.ReservedRanges().Has(of.Number()) || ref.ReservedNames().Has(of.Name()) {
			d.addf("field %s = %d: uses a number or name the reference reserves", of.FullName(), of.Number())
		}
	}
	d.reserved(string(ref.FullName()), fieldSpans(ref.ReservedRanges()), fieldSpans(ours.ReservedRanges()), ref.ReservedNames(), ours.ReservedNames())
}

func (d *differ) field(ref, ours protoreflect.FieldDescriptor) {
	at := fmt.Sprintf("field %s = %d", ref.FullName(), ref.Number())
	if ref.Name() != ours.Name() {
		d.addf("%s: named %s, want %s", at, ours.Name(), ref.Name())
	}
	if ref.Kind() != ours.Kind() {
		d.addf("%s: type %v, want %v", at, ours.Kind(), ref.Kind())
	}
	if ref.Cardinality() != ours.Cardinality() {
		d.addf("%s: label %v, want %v", at, ours.Cardinality(), ref.Cardinality())
	}
	if rt, ot := typeName(ref), typeName(ours); rt != ot {
		d.addf("%s: type %s, want %s", at, ot, rt)
	}
	if ref.JSONName() != ours.JSONName() {
		d.addf("%s: JSON name %q, want %q", at, ours.JSONName(), ref.JSONName())
	}
	if ro, oo := oneofName(ref), oneofName(ours); ro != oo {
		d.addf("%s: in oneof %q, want %q", at, oo, ro)
	}
	if ref.HasPresence() != ours.HasPresence() {
		d.addf("%s: explicit presence %v, want %v", at, ours.HasPresence(), ref.HasPresence())
	}
	if ref.HasOptionalKeyword() != ours.HasOptionalKeyword() {
		d.addf("%s: optional keyword %v, want %v", at, ours.HasOptionalKeyword(), ref.HasOptionalKeyword())
	}
	if ref.IsPacked() != ours.IsPacked() {
		d.addf("%s: packed %v, want %v", at, ours.IsPacked(), ref.IsPacked())
	}
	if ref.IsMap() != ours.IsMap() {
		d.addf("%s: map %v, want %v", at, ours.IsMap(), ref.IsMap())
	}
	if ref.HasDefault() != ours.HasDefault() || (ref.HasDefault() && ref.Default().Interface() != ours.Default().Interface()) {
		d.addf("%s: default %v, want %v", at, ours.Default(), ref.Default())
	}
}

// typeName is the full name of a message or enum field's type, else "".
func typeName(f protoreflect.FieldDescriptor) protoreflect.FullName {
	switch {
	case f.Message() != nil:
		return f.Message().FullName()
	case f.Enum() != nil:
		return f.Enum().FullName()
	}
	return ""
}

// oneofName is the name of the real (not synthetic, proto3 optional) oneof
// holding f, else "".
func oneofName(f protoreflect.FieldDescriptor) protoreflect.Name {
	if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() {
		return o.Name()
	}
	return ""
}

func (d *differ) enum(ref, ours protoreflect.EnumDescriptor) {
	for i := 0; i < ref.Values().Len(); i++ {
		rv := ref.Values().Get(i)
		ov := ours.Values().ByName(rv.Name())
		switch {
		case ov == nil:
			d.addf("enum value %s = %d: missing in ours", rv.FullName(), rv.Number())
		case ov.Number() != rv.Number():
			d.addf("enum value %s: number %d, want %d", rv.FullName(), ov.Number(), rv.Number())
		}
	}
	for i := 0; i < ours.Values().Len(); i++ {
		ov := ours.Values().Get(i)
		if ref.Values().ByName(ov.Name()) == nil {
			d.addf("enum value %s = %d: not in the reference", ov.FullName(), ov.Number())
		}
	}
	if ref.IsClosed() != ours.IsClosed() {
		d.addf("enum %s: closed %v, want %v", ref.FullName(), ours.IsClosed(), ref.IsClosed())
	}
	d.reserved(string(ref.FullName()), enumSpans(ref.ReservedRanges()), enumSpans(ours.ReservedRanges()), ref.ReservedNames(), ours.ReservedNames())
}

func (d *differ) service(ref, ours protoreflect.ServiceDescriptor) {
	for i := 0; i < ref.Methods().Len(); i++ {
		rm := ref.Methods().Get(i)
		om := ours.Methods().ByName(rm.Name())
		if om == nil {
			d.addf("method %s: missing in ours", rm.FullName())
			continue
		}
		if rm.Input().FullName() != om.Input().FullName() {
			d.addf("method %s: input %s, want %s", rm.FullName(), om.Input().FullName(), rm.Input().FullName())
		}
		if rm.Output().FullName() != om.Output().FullName() {
			d.addf("method %s: output %s, want %s", rm.FullName(), om.Output().FullName(), rm.Output().FullName())
		}
		if rm.IsStreamingClient() != om.IsStreamingClient() || rm.IsStreamingServer() != om.IsStreamingServer() {
			d.addf("method %s: streaming (client %v, server %v), want (client %v, server %v)", rm.FullName(),
				om.IsStreamingClient(), om.IsStreamingServer(), rm.IsStreamingClient(), rm.IsStreamingServer())
		}
	}
	for i := 0; i < ours.Methods().Len(); i++ {
		if om := ours.Methods().Get(i); ref.Methods().ByName(om.Name()) == nil {
			d.addf("method %s: not in the reference", om.FullName())
		}
	}
}

// span is an inclusive range of field or enum numbers.
type span struct{ lo, hi int64 }

func fieldSpans(r protoreflect.FieldRanges) []span {
	out := make([]span, r.Len())
	for i := range out {
		b := r.Get(i) // end exclusive
		out[i] = span{int64(b[0]), int64(b[1]) - 1}
	}
	return out
}

func enumSpans(r protoreflect.EnumRanges) []span {
	out := make([]span, r.Len())
	for i := range out {
		b := r.Get(i) // end inclusive
		out[i] = span{int64(b[0]), int64(b[1])}
	}
	return out
}

// covered reports whether some span in spans contains all of want.
func covered(spans []span, want span) bool {
	for _, s := range spans {
		if s.lo <= want.lo && want.hi <= s.hi {
			return true
		}
	}
	return false
}

// reserved requires ours to reserve every number and name ref reserves.
func (d *differ) reserved(where string, refRanges, ourRanges []span, refNames, ourNames protoreflect.Names) {
	for i := 0; i < refNames.Len(); i++ {
		if n := refNames.Get(i); !ourNames.Has(n) {
			d.addf("%s: reserved name %q is not reserved in ours", where, n)
		}
	}
	for _, r := range refRanges {
		// Check number by number, so that ours may split a range; a huge
		// range (such as "to max") must be covered whole.
		if r.hi-r.lo > 10000 {
			if !covered(ourRanges, r) {
				d.addf("%s: reserved range %d to %d is not reserved in ours", where, r.lo, r.hi)
			}
			continue
		}
		for n := r.lo; n <= r.hi; n++ {
			if !covered(ourRanges, span{n, n}) {
				d.addf("%s: reserved number %d is not reserved in ours", where, n)
			}
		}
	}
}

func sortedKeys[V any](m map[protoreflect.FullName]V) []protoreflect.FullName {
	keys := make([]protoreflect.FullName, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

// compareSets reports what is missing on either side and compares the
// elements both sides have.
func compareSets[T any](d *differ, kind string, ref, ours map[protoreflect.FullName]T, compare func(ref, ours T)) {
	for _, name := range sortedKeys(ref) {
		o, ok := ours[name]
		if !ok {
			d.addf("%s %s: missing in ours", kind, name)
			continue
		}
		compare(ref[name], o)
	}
	for _, name := range sortedKeys(ours) {
		if _, ok := ref[name]; !ok {
			d.addf("%s %s: not in the reference", kind, name)
		}
	}
}
