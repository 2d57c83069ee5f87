package l7authz

import (
	"errors"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	const (
		strict = NormalizeStrict
		none   = NormalizeNone
		base   = NormalizeBase
		merge  = NormalizeMergeSlashes
		decode = NormalizeDecodeAndMergeSlashes
	)
	tests := []struct {
		in   string
		mode Normalization
		want string
		err  error
	}{
		// Istio's normalization reference, one example per row.
		{"/some%2fdata/%61%62%63", decode, "/some/data/abc", nil},
		{"/some%2fdata/%61%62%63", base, "/some%2Fdata/abc", nil},
		{"/some%2fdata/%61%62%63", merge, "/some%2Fdata/abc", nil},
		{"/some\\data", base, "/some/data", nil},
		{"/some//data///abc", merge, "/some/data/abc", nil},
		{"/some//data///abc", base, "/some//data///abc", nil},
		{"/public/./data/abc/../xyz", base, "/public/data/xyz", nil},
		{"/foo?v=1", base, "/foo", nil},
		{"/a%00b", base, "", ErrPathNUL},
		{"/a%00b", none, "", ErrPathNUL},
		{"/a%00b", strict, "", ErrPathNUL},
		// Istio's best-practices table.
		{"/a/../b", base, "/b", nil},
		{"\\da", base, "/da", nil},
		{"/a//b", merge, "/a/b", nil},
		{"/a%2fb", decode, "/a/b", nil},
		{"/a%2Fb", merge, "/a%2Fb", nil},
		// Unreserved decoding; other escapes upper-cased, never decoded twice.
		{"/%2d%2E%5f%7e%41%7a", base, "/-._~Az", nil},
		{"/a%2e%2e/b", base, "/a../b", nil},
		{"/a/%2e%2e/b", base, "/b", nil},
		{"/a%3bb%3Fc", base, "/a%3Bb%3Fc", nil},
		{"/a%252Fb", strict, "/a%252Fb", nil},
		{"/a%2", base, "", ErrPathEncoding},
		{"/a%zz", strict, "", ErrPathEncoding},
		{"/a%zz", none, "", ErrPathEncoding},
		{"/a b", strict, "", ErrPathCharacter},
		{"/a\x7f", strict, "", ErrPathCharacter},
		{"/é", strict, "", ErrPathCharacter},
		{"", strict, "", ErrPathEmpty},
		{"?x", strict, "", ErrPathEmpty},
		{"a/b", strict, "", ErrPathNotAbsolute},
		{"*", strict, "", ErrPathNotAbsolute},
		{"/a", Normalization(99), "", ErrNormalization},
		// Dot segments as RFC 3986 §5.2.4.
		{"/..", base, "/", nil},
		{"/../../a", base, "/a", nil},
		{"/a/b/..", base, "/a/", nil},
		{"/a/.", base, "/a/", nil},
		{"/a/./", base, "/a/", nil},
		{"/.hidden/..x", base, "/.hidden/..x", nil},
		{"/a//../b", base, "/a/b", nil},
		{"/a//../b", merge, "/a/b", nil}, // Istio: dots first, then merge
		{"/a//../b", strict, "/b", nil},  // STRICT: merge first, as backends do
		{"/", strict, "/", nil},
		{"/a/", strict, "/a/", nil},
		{"/a//", strict, "/a/", nil},
		// NONE only cuts query and fragment.
		{"/a//./b#f", none, "/a//./b", nil},
		// STRICT: the DESIGN §7 cases.
		{"//admin", strict, "/admin", nil},
		{"/%2Fadmin", strict, "/admin", nil},
		{"/%5Cadmin", strict, "/admin", nil},
		{"/%5cadmin", strict, "/admin", nil},
		{"/admin;x=y", strict, "/admin", nil},
		{"/admin;x=y", decode, "/admin;x=y", nil},
		{"/./admin", strict, "/admin", nil},
		{"/a/../admin", strict, "/admin", nil},
		{"/admin#frag", strict, "/admin", nil},
		{"/admin?x=1#f", strict, "/admin", nil},
		{"/public/..;/admin", strict, "/admin", nil},
		{"/public;x/../admin", strict, "/admin", nil},
		{"/;x/admin", strict, "/admin", nil},
		{"/a/;x", strict, "/a/", nil},
		{"/%2e%2e%2fadmin", strict, "/admin", nil},
		{"/x/..%2fadmin", strict, "/admin", nil},
		{"/x/..%5cadmin", strict, "/admin", nil},
		{"/ADMIN", strict, "/ADMIN", nil},
	}
	for _, tt := range tests {
		got, err := NormalizePath(tt.in, tt.mode)
		if !errors.Is(err, tt.err) || got != tt.want {
			t.Errorf("NormalizePath(%q, %v) = %q, %v; want %q, %v", tt.in, tt.mode, got, err, tt.want, tt.err)
			continue
		}
		if err == nil {
			if again, err := NormalizePath(got, tt.mode); err != nil || again != got {
				t.Errorf("NormalizePath(%q, %v) = %q, %v; not idempotent", got, tt.mode, again, err)
			}
		}
	}
}

func TestNormalizePath_CleanPathDoesNotAllocate(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := NormalizePath("/api/v1/items/42?x=1", NormalizeStrict); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("allocs = %v, want 0", allocs)
	}
}
