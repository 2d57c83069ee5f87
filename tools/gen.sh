#!/usr/bin/env bash
# gen.sh regenerates the Go code for the .proto files under proto/.
#
# The proto compiler is protocompile (Go, pinned in tools/go.mod) driven by
# tools/cmd/protogen; the plugins protoc-gen-go and protoc-gen-go-grpc are
# tool directives in tools/go.mod and run as `go tool NAME`. Nothing is
# downloaded but Go modules, and the output is the same on every run.
#
# Usage: tools/gen.sh   (or `make gen`)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
go run ./cmd/protogen -root ../proto
