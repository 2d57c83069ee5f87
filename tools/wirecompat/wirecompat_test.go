package wirecompat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ambientmesh/ambient/tools/internal/protosrc"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The reference definitions: Istio's published .proto files, read from the
// Go module cache. Bump these versions to track a newer Istio.
const (
	istioModule = "istio.io/istio@v0.0.0-20260827124520-eed52ebb66ad"
	apiModule   = "istio.io/api@v1.31.0-rc.0.0.20260824154656-b943409680a7"
)

// ourRoot holds our .proto files, relative to this package's directory.
const ourRoot = "../../proto"

// TestOursMatchIstio compiles Istio's reference files and ours and fails on
// any wire-level difference.
func TestOursMatchIstio(t *testing.T) {
	dirs := downloadModules(t, istioModule, apiModule)
	ref := compile(t, protosrc.Options{
		// Istio's files import each other relative to pkg/ (istio) and the
		// repository root (api).
		ImportPaths: []string{filepath.Join(dirs[istioModule], "pkg"), dirs[apiModule]},
	},
		"workloadapi/workload.proto",
		"workloadapi/security/authorization.proto",
		"security/v1alpha1/ca.proto",
	)
	ours := compileOurs(t, nil)

	messages, fields, values, methods := Counts(ref)
	t.Logf("compared %d messages, %d fields, %d enum values, %d methods", messages, fields, values, methods)
	// Guard against a vacuous pass (e.g. the reference resolving to nothing).
	if messages < 20 || fields < 80 || values < 30 || methods < 1 {
		t.Fatalf("reference looks incomplete: %d messages, %d fields, %d enum values, %d methods", messages, fields, values, methods)
	}
	for _, pkg := range []protoreflect.FullName{"istio.workload", "istio.security", "istio.v1.auth"} {
		if !hasPackage(ref, pkg) {
			t.Fatalf("reference has no file in package %s", pkg)
		}
	}
	if diffs := Diff(ref, ours); len(diffs) > 0 {
		t.Fatalf("proto/ is not wire-compatible with Istio (%s, %s); fix the .proto files under proto/, then run `make gen`:\n  %s",
			istioModule, apiModule, strings.Join(diffs, "\n  "))
	}
}

// TestDiff_CatchesDrift alters one line of our sources at a time and checks
// that Diff, comparing the altered copy against the original, reports it. It
// proves that TestOursMatchIstio can fail.
func TestDiff_CatchesDrift(t *testing.T) {
	original := compileOurs(t, nil)
	if diffs := Diff(original, original); len(diffs) > 0 {
		t.Fatalf("Diff of a file set with itself is not empty:\n%s", strings.Join(diffs, "\n"))
	}
	tests := []struct {
		name     string
		file     string
		old, new string
		want     string // substring of some reported difference; "" means no difference
	}{
		{"field number", "workloadapi/workload.proto", "uint32 weight = 2;", "uint32 weight = 5;",
			"field istio.workload.WeightedWaypoint.weight: number 5, want 2"},
		{"field renamed", "workloadapi/workload.proto", "string trust_domain = 6;", "string trust_domains = 6;",
			"named trust_domains, want trust_domain"},
		{"field type", "workloadapi/workload.proto", "uint32 hbone_mtls_port = 3;", "int32 hbone_mtls_port = 3;",
			"hbone_mtls_port = 3: type int32, want uint32"},
		{"field label", "workloadapi/workload.proto", "string node = 9;", "repeated string node = 9;",
			"node = 9: label repeated, want optional"},
		{"message type", "workloadapi/workload.proto", "GatewayAddress network_gateway = 19;", "NetworkAddress network_gateway = 19;",
			"type istio.workload.NetworkAddress, want istio.workload.GatewayAddress"},
		{"proto3 optional dropped", "workloadapi/workload.proto", "optional uint32 length = 3;", "uint32 length = 3;",
			"length = 3: explicit presence false, want true"},
		{"enum value", "workloadapi/workload.proto", "DUAL = 3;", "DUAL = 4;",
			"enum value istio.workload.DUAL: number 4, want 3"},
		{"enum value added", "workloadapi/workload.proto", "LEGACY_ISTIO_MTLS = 2;", "LEGACY_ISTIO_MTLS = 2;\n  QUIC = 3;",
			"enum value istio.workload.QUIC = 3: not in the reference"},
		{"reserved number dropped", "workloadapi/workload.proto", "reserved 15;", "",
			"istio.workload.Workload: reserved number 15 is not reserved in ours"},
		{"low-numbered extra field", "workloadapi/workload.proto", "uint32 weight = 2;", "uint32 weight = 2;\n  string zone = 999;",
			"zone = 999: not in the reference"},
		{"extension field from 1000 is allowed", "workloadapi/workload.proto", "uint32 weight = 2;", "uint32 weight = 2;\n  string zone = 1000;",
			""},
		{"field json name", "workloadapi/security/authorization.proto", "string serviceAccount = 2;", "string service_account = 2;",
			`named service_account, want serviceAccount`},
		{"oneof membership", "workloadapi/security/authorization.proto", "    google.protobuf.Empty presence = 4;\n  }", "  }\n  google.protobuf.Empty presence = 4;",
			`presence = 4: in oneof "", want "match_type"`},
		{"method renamed", "ca/ca.proto", "rpc CreateCertificate(", "rpc SignCertificate(",
			"method istio.v1.auth.IstioCertificateService.CreateCertificate: missing in ours"},
		{"message removed", "ca/ca.proto", "message IstioCertificateResponse {\n  // PEM certificates, leaf first and root last.\n  repeated string cert_chain = 1;\n}", "message IstioCertificateResponse {}",
			"cert_chain = 1: missing in ours"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			altered := compileOurs(t, func(name string, src []byte) []byte {
				if name != tt.file {
					return src
				}
				if !bytes.Contains(src, []byte(tt.old)) {
					t.Fatalf("%s no longer contains %q; update this test case", name, tt.old)
				}
				return bytes.Replace(src, []byte(tt.old), []byte(tt.new), 1)
			})
			diffs := Diff(original, altered)
			if tt.want == "" {
				if len(diffs) > 0 {
					t.Fatalf("want no difference, got:\n%s", strings.Join(diffs, "\n"))
				}
				return
			}
			for _, d := range diffs {
				if strings.Contains(d, tt.want) {
					return
				}
			}
			t.Fatalf("no reported difference contains %q; got:\n%s", tt.want, strings.Join(diffs, "\n"))
		})
	}
}

// downloadModules returns the module cache directory of each module@version,
// downloading it through the go command (run in this module, whose go.mod
// need not mention the modules).
func downloadModules(t *testing.T, mods ...string) map[string]string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"mod", "download", "-json"}, mods...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s%s\n(the reference files come from the Go module proxy; check network access to it)",
			strings.Join(mods, " "), err, out, stderr.String())
	}
	dirs := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var m struct{ Path, Version, Dir, Error string }
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go mod download: decode output: %v", err)
		}
		if m.Error != "" {
			t.Fatalf("go mod download %s@%s: %s", m.Path, m.Version, m.Error)
		}
		dirs[m.Path+"@"+m.Version] = m.Dir
	}
	for _, mod := range mods {
		if dirs[mod] == "" {
			t.Fatalf("go mod download gave no directory for %s", mod)
		}
	}
	return dirs
}

// compileOurs compiles every .proto file under ourRoot, passing each file's
// source through alter if it is non-nil.
func compileOurs(t *testing.T, alter func(name string, src []byte) []byte) []protoreflect.FileDescriptor {
	t.Helper()
	files, err := protosrc.FindProtoFiles(ourRoot)
	if err != nil {
		t.Fatal(err)
	}
	opts := protosrc.Options{ImportPaths: []string{ourRoot}, WarningsAreErrors: true}
	if alter != nil {
		opts.Accessor = func(path string) (io.ReadCloser, error) {
			src, err := os.ReadFile(path)
			if err != nil {
				return nil, err
			}
			rel, err := filepath.Rel(ourRoot, path)
			if err != nil {
				return nil, err
			}
			return io.NopCloser(bytes.NewReader(alter(filepath.ToSlash(rel), src))), nil
		}
	}
	return compile(t, opts, files...)
}

func compile(t *testing.T, opts protosrc.Options, files ...string) []protoreflect.FileDescriptor {
	t.Helper()
	compiled, err := protosrc.Compile(context.Background(), opts, files...)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]protoreflect.FileDescriptor, len(compiled))
	for i, f := range compiled {
		out[i] = f
	}
	return out
}

func hasPackage(files []protoreflect.FileDescriptor, pkg protoreflect.FullName) bool {
	for _, f := range files {
		if f.Package() == pkg {
			return true
		}
	}
	return false
}
