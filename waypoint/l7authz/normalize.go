package l7authz

import (
	"errors"
	"strings"
)

// Normalization is how request paths are normalized before they are matched
// against paths and notPaths. The first four are Istio's mesh config
// pathNormalization options, with the behaviour its documentation gives
// (https://istio.io/latest/docs/ops/best-practices/security/#customize-your-system-on-path-normalization
// and https://istio.io/latest/docs/reference/config/security/normalization/);
// [NormalizeStrict], the default, adds path-parameter stripping on top of
// the strictest of them, as DESIGN §7 asks.
type Normalization uint8

const (
	// NormalizeStrict is [NormalizeDecodeAndMergeSlashes] plus removal of
	// ";params" from every segment ("/admin;x=y" → "/admin",
	// "/public/..;/admin" → "/admin"). Envoy, and so Istio, keep path
	// parameters as part of the segment, but common backends (Tomcat,
	// Spring, Jetty) drop them before routing; without this step a DENY of
	// "/admin" is bypassed with "/admin;x". It is the zero value and the
	// default.
	NormalizeStrict Normalization = iota
	// NormalizeNone does nothing but cut the query and fragment and check
	// the encoding (Istio NONE).
	NormalizeNone
	// NormalizeBase is Istio's BASE, the Istio installation default, Envoy's
	// normalize_path: decode percent-encoded unreserved characters
	// (ALPHA, DIGIT, "-", ".", "_", "~"), upper-case the hex digits of the
	// escapes left, turn "\" into "/", resolve "." and ".." segments as RFC
	// 3986 §5.2.4 does.
	NormalizeBase
	// NormalizeMergeSlashes is Istio's MERGE_SLASHES: BASE, then runs of
	// "/" become one.
	NormalizeMergeSlashes
	// NormalizeDecodeAndMergeSlashes is Istio's DECODE_AND_MERGE_SLASHES:
	// "%2F" and "%5C" (any case) are decoded to "/" and "\" first, then
	// MERGE_SLASHES.
	NormalizeDecodeAndMergeSlashes
)

func (n Normalization) String() string {
	switch n {
	case NormalizeStrict:
		return "STRICT"
	case NormalizeNone:
		return "NONE"
	case NormalizeBase:
		return "BASE"
	case NormalizeMergeSlashes:
		return "MERGE_SLASHES"
	case NormalizeDecodeAndMergeSlashes:
		return "DECODE_AND_MERGE_SLASHES"
	}
	return "UNKNOWN"
}

// Errors [NormalizePath] returns. A request whose path cannot be normalized
// is answered 400 (Istio rejects "%00" with 400 in every mode).
var (
	ErrPathEmpty       = errors.New("l7authz: path is empty")
	ErrPathNotAbsolute = errors.New("l7authz: path does not start with /")
	ErrPathEncoding    = errors.New("l7authz: path has an invalid percent-encoding")
	ErrPathNUL         = errors.New("l7authz: path contains %00")
	ErrPathCharacter   = errors.New("l7authz: path contains a control character, space or non-ASCII byte")
	ErrNormalization   = errors.New("l7authz: unknown path normalization")
)

// NormalizePath returns the path part of an HTTP request target in
// origin form ("/a/b?q#f") normalized for authorization, in these steps:
//
//  1. The query and fragment are cut at the first "?" or "#" (Istio: "remove
//     anything after the question mark when comparing with the path"; Envoy
//     strips the fragment).
//  2. Checks: the path must be non-empty ASCII without control characters
//     or spaces; every "%" must start a two-hex-digit escape; "%00" is
//     refused (Istio always rejects it with 400).
//  3. One decoding pass, never twice (Istio: "normalization happens only
//     once, no double decoding"): unreserved characters are decoded in
//     every mode but NONE; "%2F" and "%5C" in STRICT and
//     DECODE_AND_MERGE_SLASHES; every other escape is kept with upper-case
//     hex, so "%2f" and "%2F" compare equal in BASE and MERGE_SLASHES. "%25"
//     stays "%25": "%252F" is not a slash.
//  4. "\" becomes "/" (BASE and above). The path must then start with "/".
//  5. STRICT: ";params" is removed from every segment.
//  6. "." and ".." segments are resolved (RFC 3986 §5.2.4; ".." above the
//     root stays at the root), then, in MERGE_SLASHES and above, runs of
//     "/" are merged — Istio's documented order.
//
// The result is what policies are matched against; Istio also forwards
// the normalized path to the backend, and the waypoint should forward it
// too so the backend serves what was authorized. Case is never changed:
// "/ADMIN" is not "/admin" (see the package doc). Normalizing a normalized
// path returns it unchanged.
func NormalizePath(target string, mode Normalization) (string, error) {
	if mode > NormalizeDecodeAndMergeSlashes {
		return "", ErrNormalization
	}
	p := target
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if p == "" {
		return "", ErrPathEmpty
	}
	if mode == NormalizeNone {
		if err := checkPath(p); err != nil {
			return "", err
		}
		if p[0] != '/' {
			return "", ErrPathNotAbsolute
		}
		return p, nil
	}
	if fastPathClean(p, mode) {
		return p, nil
	}
	decodeSlashes := mode == NormalizeStrict || mode == NormalizeDecodeAndMergeSlashes
	b := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c <= ' ' || c >= 0x7f:
			return "", ErrPathCharacter
		case c == '\\':
			b = append(b, '/')
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", ErrPathEncoding
			}
			d := unhex(p[i+1])<<4 | unhex(p[i+2])
			i += 2
			switch {
			case d == 0:
				return "", ErrPathNUL
			case isUnreserved(d):
				b = append(b, d)
			case decodeSlashes && (d == '/' || d == '\\'):
				b = append(b, '/')
			default:
				b = append(b, '%', upperHex[d>>4], upperHex[d&0xf])
			}
		default:
			b = append(b, c)
		}
	}
	if len(b) == 0 || b[0] != '/' {
		return "", ErrPathNotAbsolute
	}
	b = resolveSegments(b, mode == NormalizeStrict, mode != NormalizeBase)
	return string(b), nil
}

// checkPath applies step 2 to a path that is otherwise left as is.
func checkPath(p string) error {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c <= ' ' || c >= 0x7f:
			return ErrPathCharacter
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return ErrPathEncoding
			}
			if p[i+1] == '0' && p[i+2] == '0' {
				return ErrPathNUL
			}
			i += 2
		}
	}
	return nil
}

// fastPathClean reports whether p is already normalized for mode: it
// starts with "/" and has no byte any step would change. Most paths are,
// and this lets NormalizePath return them without allocating.
func fastPathClean(p string, mode Normalization) bool {
	if p[0] != '/' {
		return false
	}
	merge := mode != NormalizeBase
	prev := byte(0)
	segStart := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c <= ' ' || c >= 0x7f, c == '\\', c == '%':
			return false
		case c == ';' && mode == NormalizeStrict:
			return false
		case c == '/':
			if merge && prev == '/' {
				return false
			}
			if isDotSegment(p[segStart:i]) {
				return false
			}
			segStart = i + 1
		}
		prev = c
	}
	return !isDotSegment(p[segStart:])
}

func isDotSegment(s string) bool { return s == "." || s == ".." }

// resolveSegments strips path parameters (strict), resolves dot segments
// and merges slashes (merge) in an absolute path. Istio's modes resolve
// dot segments first and merge after, as Envoy does, so "/a//../b" is
// "/a/b". STRICT merges first, as Go's path.Clean, nginx and Tomcat do,
// making it "/b": the backend most likely serves "/b", and a DENY of "/b"
// must see it.
func resolveSegments(b []byte, strict, merge bool) []byte {
	in := string(b) // out below overwrites b
	out := b[:0]
	trailing := false
	for i := 1; ; {
		end := len(in)
		if j := strings.IndexByte(in[i:], '/'); j >= 0 {
			end = i + j
		}
		seg := in[i:end]
		last := end == len(in)
		if strict {
			if k := strings.IndexByte(seg, ';'); k >= 0 {
				seg = seg[:k]
			}
		}
		trailing = false
		switch {
		case seg == ".":
			trailing = last
		case seg == "..":
			if k := lastSlash(out); k >= 0 {
				out = out[:k]
			}
			trailing = last
		case seg == "" && strict && !last:
			// Merged before dot segments are resolved.
		default:
			out = append(out, '/')
			out = append(out, seg...)
		}
		if last {
			break
		}
		i = end + 1
	}
	if trailing || len(out) == 0 {
		out = append(out, '/')
	}
	if merge {
		out = mergeSlashes(out)
	}
	return out
}

// lastSlash returns the index of the last '/' in b, or -1.
func lastSlash(b []byte) int {
	for k := len(b) - 1; k >= 0; k-- {
		if b[k] == '/' {
			return k
		}
	}
	return -1
}

// mergeSlashes collapses runs of '/' in place.
func mergeSlashes(b []byte) []byte {
	out := b[:0]
	for i, c := range b {
		if c == '/' && i > 0 && b[i-1] == '/' {
			continue
		}
		out = append(out, c)
	}
	return out
}

const upperHex = "0123456789ABCDEF"

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// isUnreserved reports whether c is an RFC 3986 unreserved character, the
// set Istio's BASE decodes (%2D %2E %30-%39 %41-%5A %5F %61-%7A %7E).
func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
