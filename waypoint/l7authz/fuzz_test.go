package l7authz

import (
	"strings"
	"testing"
)

// FuzzNormalizePath: never panics; the result is idempotent, absolute, and
// in STRICT free of everything the mode removes.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "//admin", "/%2Fadmin", "/%5cadmin", "/admin;x=y", "/./admin", "/a/../admin",
		"/a//../b", "\\da", "/%2e%2e/x", "/a%252F", "/..;/..;/x", "/a?b#c", "/%zz", "/a%00", "/;/;/", "/.%2e/"} {
		f.Add(s)
	}
	modes := []Normalization{NormalizeStrict, NormalizeNone, NormalizeBase, NormalizeMergeSlashes, NormalizeDecodeAndMergeSlashes}
	f.Fuzz(func(t *testing.T, p string) {
		for _, mode := range modes {
			got, err := NormalizePath(p, mode)
			if err != nil {
				continue
			}
			if !strings.HasPrefix(got, "/") {
				t.Fatalf("%v: %q → %q: not absolute", mode, p, got)
			}
			again, err := NormalizePath(got, mode)
			if err != nil || again != got {
				t.Fatalf("%v: %q → %q → %q, %v: not idempotent", mode, p, got, again, err)
			}
			if mode == NormalizeStrict {
				if strings.Contains(got, "//") || strings.ContainsAny(got, "\\;?#") ||
					strings.Contains(got, "%2F") || strings.Contains(got, "%5C") {
					t.Fatalf("%q → %q: left something STRICT removes", p, got)
				}
				for _, seg := range strings.Split(got, "/") {
					if seg == "." || seg == ".." {
						t.Fatalf("%q → %q: dot segment left", p, got)
					}
				}
			}
		}
	})
}
