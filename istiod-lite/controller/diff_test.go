package controller

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// workload returns an Address for uid whose services map is filled in the
// order given, so that equal maps built differently can be compared.
func workload(uid, rev string, services ...string) proto.Message {
	w := &workloadapi.Workload{Uid: uid, Name: uid, CanonicalRevision: rev}
	for _, s := range services {
		if w.Services == nil {
			w.Services = map[string]*workloadapi.PortList{}
		}
		w.Services[s] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

func TestDiff_UpsertsOnlyChangedEncodingsAndSortsRemovals(t *testing.T) {
	encode := func(m map[string]proto.Message) map[string][]byte {
		_, _, enc, err := Diff(nil, m)
		if err != nil {
			t.Fatal(err)
		}
		return enc
	}
	prev := encode(map[string]proto.Message{
		"a": workload("a", "v1", "ns/x", "ns/y", "ns/z"),
		"b": workload("b", "v1"),
		"c": workload("c", "v1"),
		"d": workload("d", "v1"),
	})
	for _, tc := range []struct {
		name         string
		prev         map[string][]byte
		next         map[string]proto.Message
		wantUpserts  []string
		wantRemovals []string
	}{
		{
			name:        "no previous set: everything is new",
			prev:        nil,
			next:        map[string]proto.Message{"a": workload("a", "v1"), "b": workload("b", "v1")},
			wantUpserts: []string{"a", "b"},
		},
		{
			name: "unchanged content built in another map order: nothing",
			prev: prev,
			next: map[string]proto.Message{
				"a": workload("a", "v1", "ns/z", "ns/y", "ns/x"),
				"b": workload("b", "v1"), "c": workload("c", "v1"), "d": workload("d", "v1"),
			},
		},
		{
			name: "one field changed, one added, two removed",
			prev: prev,
			next: map[string]proto.Message{
				"a": workload("a", "v1", "ns/x", "ns/y", "ns/z"),
				"b": workload("b", "v2"),
				"e": workload("e", "v1"),
			},
			wantUpserts:  []string{"b", "e"},
			wantRemovals: []string{"c", "d"},
		},
		{
			name:         "everything removed",
			prev:         prev,
			next:         map[string]proto.Message{},
			wantRemovals: []string{"a", "b", "c", "d"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			upserts, removals, enc, err := Diff(tc.prev, tc.next)
			if err != nil {
				t.Fatal(err)
			}
			got := slices.Sorted(func(yield func(string) bool) {
				for k := range upserts {
					if !yield(k) {
						return
					}
				}
			})
			if diff := cmp.Diff(tc.wantUpserts, got, cmpEmptyNil); diff != "" {
				t.Errorf("upserts (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantRemovals, removals, cmpEmptyNil); diff != "" {
				t.Errorf("removals (-want +got):\n%s", diff)
			}
			for k, v := range upserts {
				if v != tc.next[k] {
					t.Errorf("upsert %q is not the message of next", k)
				}
			}
			if len(enc) != len(tc.next) {
				t.Errorf("encodings for %d names, want %d", len(enc), len(tc.next))
			}
			// Feeding the encodings back finds nothing to do.
			if u, r, _, _ := Diff(enc, tc.next); len(u) != 0 || len(r) != 0 {
				t.Errorf("second Diff with its own encodings = %d upserts, %v removals; want none", len(u), r)
			}
		})
	}
}

func TestDiff_InvalidMessageIsAnError(t *testing.T) {
	bad := &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: "a", Name: "\xff"}}}
	if _, _, _, err := Diff(nil, map[string]proto.Message{"a": bad}); err == nil {
		t.Error("Diff of a message with invalid UTF-8 succeeded; want the encoding error")
	}
}

var cmpEmptyNil = cmp.Comparer(func(a, b []string) bool { return slices.Equal(a, b) })
