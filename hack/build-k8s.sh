#!/usr/bin/env bash
# Builds the Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler), kube-proxy and kubectl at one version from the Go module proxy, in the
# build module hack/k8s, into a cache outside the repository keyed by version.
# Prints the directory holding the binaries. The first build takes about
# 12 minutes on 2 cores; later calls return at once.
set -euo pipefail
VERSION=v1.37.2
MINOR=37
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ambient/k8s/$VERSION"
mkdir -p "$CACHE"
cd "$(dirname "$0")/k8s"
# Unstamped builds report "v0.0.0-master+$Format:%H$", which kubectl cannot parse.
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS="$LDFLAGS -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR -X $pkg.gitTreeState=clean"
done
for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl; do
  if [ -x "$CACHE/$b" ]; then continue; fi
  echo "building $b $VERSION into $CACHE (first time: several minutes)" >&2
  go build -trimpath -ldflags "$LDFLAGS" -o "$CACHE/$b.tmp" "./cmd/$b"
  mv "$CACHE/$b.tmp" "$CACHE/$b"
done
echo "$CACHE"
