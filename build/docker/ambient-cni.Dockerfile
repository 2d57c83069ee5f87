# ambient-cni: the chained CNI plugin and its node agent (DaemonSet istio-system/ambient-cni-node).
#
# Build from the repository root (the context must hold go.mod):
#   docker build -f build/docker/ambient-cni.Dockerfile -t ambient/ambient-cni:dev .
# A static Go binary (CGO_ENABLED=0, -trimpath); see manifests/README.md.
ARG GO_VERSION=1.26.8
FROM golang:${GO_VERSION}-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/ambient-cni ./cmd/ambient-cni

# The plugin runs on the host (the runtime execs it from /opt/cni/bin); this
# image only carries it there. The node agent is manifests/cni/install-cni.sh
# (mounted from a ConfigMap), a POSIX shell script that needs jq and cmp.
FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends jq \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ambient-cni /opt/ambient/bin/ambient-cni
CMD ["/bin/sh", "-c", "echo 'ambient-cni: run /etc/ambient-cni/install-cni.sh (see manifests/cni)' >&2; exit 2"]
