#!/usr/bin/env bash
# Builds the reference CNI plugins the node agent runs (ptp, bridge,
# host-local, loopback) from github.com/containernetworking/plugins at one
# version through the Go module proxy, into a cache outside the repository
# keyed by version. Prints the directory holding the binaries (the node
# agent's --cni-bin-dir). The first build takes about a minute; later calls
# return at once.
set -euo pipefail
VERSION=v1.10.0
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ambient/cni-plugins/$VERSION"
PLUGINS="main/ptp main/bridge main/loopback ipam/host-local"
mkdir -p "$CACHE"
missing=""
for p in $PLUGINS; do
  if [ ! -x "$CACHE/$(basename "$p")" ]; then missing="$missing $p"; fi
done
if [ -n "$missing" ]; then
  echo "building CNI plugins$missing $VERSION into $CACHE" >&2
  tmp="$(mktemp -d "$CACHE/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  pkgs=""
  for p in $missing; do pkgs="$pkgs github.com/containernetworking/plugins/plugins/$p@$VERSION"; done
  # go install pkg@version builds in module mode from the module's own go.mod,
  # independent of the repository's.
  GOBIN="$tmp" GOFLAGS=-trimpath CGO_ENABLED=0 go install -ldflags "-s -w" $pkgs
  for p in $missing; do mv "$tmp/$(basename "$p")" "$CACHE/"; done
fi
echo "$CACHE"
