package controller

import (
	"bytes"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
)

// deterministic encodes resources for [Diff]'s comparison.
var deterministic = proto.MarshalOptions{Deterministic: true}

// Diff compares a recomputed resource set with the deterministic encodings
// of the previous one, as returned by the previous Diff (nil or empty: no
// previous set). It returns the resources that are new or whose encoding
// differs, the names that disappeared (sorted), and the encodings of next
// for the following call. It is a pure function.
//
// Comparing encodings rather than calling proto.Equal is what keeps a
// recomputation cheap: for 5,000 workloads proto.Equal's reflection took two
// thirds of the controller's CPU per change (bench/controlplane).
func Diff(prev map[string][]byte, next map[string]proto.Message) (upserts map[string]proto.Message, removals []string, encoded map[string][]byte, err error) {
	upserts = make(map[string]proto.Message)
	encoded = make(map[string][]byte, len(next))
	for k, v := range next {
		b, err := deterministic.Marshal(v)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("controller: encode %q: %w", k, err)
		}
		encoded[k] = b
		if old, ok := prev[k]; !ok || !bytes.Equal(old, b) {
			upserts[k] = v
		}
	}
	for k := range prev {
		if _, ok := next[k]; !ok {
			removals = append(removals, k)
		}
	}
	slices.Sort(removals)
	return upserts, removals, encoded, nil
}
