// Package protosrc compiles .proto sources with protocompile, a proto
// compiler written in Go, so that neither code generation nor the
// wire-compatibility check needs a protoc binary.
//
// The standard imports (google/protobuf/*.proto) resolve to the descriptors
// compiled into google.golang.org/protobuf, so only the project's own files
// (or the reference files) have to be on the import path.
package protosrc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bufbuild/protocompile"
	"github.com/bufbuild/protocompile/linker"
	"github.com/bufbuild/protocompile/reporter"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Options configures Compile.
type Options struct {
	// ImportPaths are the directories searched for the files and their imports,
	// in order.
	ImportPaths []string
	// Accessor, if set, opens sources instead of the file system. It receives
	// a path already joined with an import path. Tests use it to compile
	// altered copies of a file.
	Accessor func(path string) (io.ReadCloser, error)
	// WarningsAreErrors makes any compiler warning (such as an unused import)
	// fail the compilation.
	WarningsAreErrors bool
}

// Compile compiles files, given as paths relative to an import path, with
// source code info (comments) retained.
func Compile(ctx context.Context, opts Options, files ...string) (linker.Files, error) {
	var warnings []string
	rep := reporter.NewReporter(
		func(err reporter.ErrorWithPos) error { return err },
		func(err reporter.ErrorWithPos) { warnings = append(warnings, err.Error()) },
	)
	c := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{
			ImportPaths: opts.ImportPaths,
			Accessor:    opts.Accessor,
		}),
		// One worker keeps error ordering deterministic; these files are small.
		MaxParallelism: 1,
		Reporter:       rep,
		SourceInfoMode: protocompile.SourceInfoStandard,
	}
	out, err := c.Compile(ctx, files...)
	if err != nil {
		return nil, fmt.Errorf("protosrc: compile %s: %w", strings.Join(files, " "), err)
	}
	if opts.WarningsAreErrors && len(warnings) > 0 {
		return nil, fmt.Errorf("protosrc: compile %s: warnings treated as errors:\n%s",
			strings.Join(files, " "), strings.Join(warnings, "\n"))
	}
	return out, nil
}

// FindProtoFiles returns the .proto files below root as slash-separated paths
// relative to root, sorted.
func FindProtoFiles(root string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || filepath.Ext(path) != ".proto" {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("protosrc: find .proto files under %s: %w", root, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("protosrc: no .proto files under %s", root)
	}
	sort.Strings(files)
	return files, nil
}

// DescriptorProtos returns FileDescriptorProtos for files and everything
// they import, each file after its imports, as protoc hands them to plugins.
func DescriptorProtos(files linker.Files) ([]*descriptorpb.FileDescriptorProto, error) {
	var (
		out  []*descriptorpb.FileDescriptorProto
		seen = map[string]bool{}
	)
	var visit func(fd protoreflect.FileDescriptor) error
	visit = func(fd protoreflect.FileDescriptor) error {
		if seen[fd.Path()] {
			return nil
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := 0; i < imports.Len(); i++ {
			if imp := imports.Get(i); imp.IsPlaceholder() {
				return fmt.Errorf("protosrc: %s: import %s was not resolved", fd.Path(), imp.Path())
			} else if err := visit(imp.FileDescriptor); err != nil {
				return err
			}
		}
		out = append(out, fileDescriptorProto(fd))
		return nil
	}
	for _, f := range files {
		if err := visit(f); err != nil {
			return nil, err
		}
	}
	if len(out) == 0 {
		return nil, errors.New("protosrc: no files")
	}
	return out, nil
}

// fileDescriptorProto prefers the compiler's own descriptor proto (which
// carries source code info exactly as produced) and falls back to converting
// a compiled-in descriptor (the standard imports).
func fileDescriptorProto(fd protoreflect.FileDescriptor) *descriptorpb.FileDescriptorProto {
	if r, ok := fd.(linker.Result); ok {
		return r.FileDescriptorProto()
	}
	return protodesc.ToFileDescriptorProto(fd)
}
