package protosrc

import (
	"context"
	"slices"
	"testing"

	"github.com/bufbuild/protocompile"
)

const ourRoot = "../../../proto"

func TestDescriptorProtos_ListsEachFileAfterItsImports(t *testing.T) {
	files, err := FindProtoFiles(ourRoot)
	if err != nil {
		t.Fatal(err)
	}
	compiled, err := Compile(context.Background(), Options{ImportPaths: []string{ourRoot}, WarningsAreErrors: true}, files...)
	if err != nil {
		t.Fatal(err)
	}
	protos, err := DescriptorProtos(compiled)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, p := range protos {
		for _, dep := range p.GetDependency() {
			if !slices.Contains(order, dep) {
				t.Errorf("%s comes before its import %s", p.GetName(), dep)
			}
		}
		if slices.Contains(order, p.GetName()) {
			t.Errorf("%s listed twice", p.GetName())
		}
		order = append(order, p.GetName())
	}
	for _, want := range append(files, "google/protobuf/any.proto", "google/protobuf/struct.proto") {
		if !slices.Contains(order, want) {
			t.Errorf("%s missing from %v", want, order)
		}
	}
	for _, p := range protos {
		if slices.Contains(files, p.GetName()) && p.GetSourceCodeInfo() == nil {
			t.Errorf("%s has no source code info; generated code would lose its comments", p.GetName())
		}
	}
}

func TestCompile_UnusedImportIsAnErrorWhenAsked(t *testing.T) {
	src := map[string]string{"a.proto": "syntax = \"proto3\";\npackage a;\nimport \"google/protobuf/empty.proto\";\nmessage A {}\n"}
	opts := Options{ImportPaths: []string{"."}, Accessor: protocompile.SourceAccessorFromMap(src)}
	if _, err := Compile(context.Background(), opts, "a.proto"); err != nil {
		t.Fatalf("without WarningsAreErrors: %v", err)
	}
	opts.WarningsAreErrors = true
	if _, err := Compile(context.Background(), opts, "a.proto"); err == nil {
		t.Fatal("with WarningsAreErrors: unused import was accepted")
	}
}
