// Command protogen compiles the project's .proto files and runs the pinned
// code generator plugins over them: our stand-in for protoc, in Go.
//
// It compiles every .proto file under -root with protocompile, builds one
// CodeGeneratorRequest for all of them, runs each plugin as `go tool NAME`
// (so the plugin version is the one pinned by a tool directive in the go.mod
// of the current module) and writes the answers next to the sources. Stale
// generated files (*.pb.go that no plugin produced) are removed.
//
// The output depends only on the sources and the pinned versions: file names
// are relative to -root and no compiler version is reported, so the plugins
// print "protoc (unknown)".
//
// Usage, from the tools module:
//
//	go run ./cmd/protogen -root ../proto
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ambientmesh/ambient/tools/internal/protosrc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

// plugin is a code generator run as `go tool Name` with Param.
type plugin struct {
	Name  string
	Param string
}

// plugins are run in order. Their versions come from the tool directives in
// tools/go.mod.
var plugins = []plugin{
	{Name: "protoc-gen-go", Param: "paths=source_relative"},
	{Name: "protoc-gen-go-grpc", Param: "paths=source_relative"},
}

func main() {
	root := flag.String("root", "../proto", "directory holding the .proto files; generated files are written beside them")
	flag.Parse()
	if err := run(context.Background(), *root); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, root string) error {
	files, err := protosrc.FindProtoFiles(root)
	if err != nil {
		return err
	}
	compiled, err := protosrc.Compile(ctx, protosrc.Options{
		ImportPaths:       []string{root},
		WarningsAreErrors: true,
	}, files...)
	if err != nil {
		return err
	}
	protoFiles, err := protosrc.DescriptorProtos(compiled)
	if err != nil {
		return err
	}
	written := map[string]bool{}
	for _, p := range plugins {
		req := &pluginpb.CodeGeneratorRequest{
			FileToGenerate: files,
			Parameter:      proto.String(p.Param),
			ProtoFile:      protoFiles,
		}
		resp, err := runPlugin(ctx, p.Name, req)
		if err != nil {
			return err
		}
		if err := checkFeatures(p.Name, resp, protoFiles, files); err != nil {
			return err
		}
		for _, f := range resp.GetFile() {
			name := f.GetName()
			if f.GetInsertionPoint() != "" {
				return fmt.Errorf("protogen: %s: insertion points are not supported (file %s)", p.Name, name)
			}
			if !filepath.IsLocal(name) {
				return fmt.Errorf("protogen: %s: refusing to write outside %s: %q", p.Name, root, name)
			}
			if written[name] {
				return fmt.Errorf("protogen: %s: %s was generated twice", p.Name, name)
			}
			written[name] = true
			if err := writeIfChanged(filepath.Join(root, filepath.FromSlash(name)), []byte(f.GetContent())); err != nil {
				return err
			}
		}
	}
	return removeStale(root, written)
}

// runPlugin runs `go tool name` with req on stdin and decodes its answer.
func runPlugin(ctx context.Context, name string, req *pluginpb.CodeGeneratorRequest) (*pluginpb.CodeGeneratorResponse, error) {
	in, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("protogen: %s: marshal request: %w", name, err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "go", "tool", name)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("protogen: run `go tool %s` (is it a tool directive in this module's go.mod?): %w\n%s", name, err, stderr.String())
	}
	resp := &pluginpb.CodeGeneratorResponse{}
	if err := proto.Unmarshal(stdout.Bytes(), resp); err != nil {
		return nil, fmt.Errorf("protogen: %s: decode response: %w", name, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("protogen: %s: %s", name, resp.GetError())
	}
	return resp, nil
}

// checkFeatures does what protoc does: refuse a plugin that does not declare
// support for proto3 optional fields when a file to generate uses them.
func checkFeatures(name string, resp *pluginpb.CodeGeneratorResponse, all []*descriptorpb.FileDescriptorProto, toGenerate []string) error {
	if resp.GetSupportedFeatures()&uint64(pluginpb.CodeGeneratorResponse_FEATURE_PROTO3_OPTIONAL) != 0 {
		return nil
	}
	gen := map[string]bool{}
	for _, f := range toGenerate {
		gen[f] = true
	}
	for _, f := range all {
		if gen[f.GetName()] && usesProto3Optional(f.GetMessageType()) {
			return fmt.Errorf("protogen: %s does not support proto3 optional fields, used in %s", name, f.GetName())
		}
	}
	return nil
}

func usesProto3Optional(msgs []*descriptorpb.DescriptorProto) bool {
	for _, m := range msgs {
		for _, f := range m.GetField() {
			if f.GetProto3Optional() {
				return true
			}
		}
		if usesProto3Optional(m.GetNestedType()) {
			return true
		}
	}
	return false
}

// writeIfChanged writes content to path unless it already holds exactly that,
// so an unchanged file keeps its modification time.
func writeIfChanged(path string, content []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, content) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("protogen: %w", err)
	}
	if err := os.WriteFile(path, content, 0o644); err != nil {
		return fmt.Errorf("protogen: %w", err)
	}
	return nil
}

// removeStale deletes generated *.pb.go files under root that this run did
// not produce, e.g. after a .proto file was removed or renamed.
func removeStale(root string, written map[string]bool) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".pb.go") {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if written[filepath.ToSlash(rel)] {
			return nil
		}
		content, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("protogen: %w", err)
		}
		if !bytes.Contains(content, []byte("DO NOT EDIT.")) {
			return fmt.Errorf("protogen: %s looks hand-written (no DO NOT EDIT marker) but no .proto produces it; rename or remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("protogen: remove stale %s: %w", path, err)
		}
		fmt.Fprintf(os.Stderr, "protogen: removed stale %s\n", path)
		return nil
	})
}
