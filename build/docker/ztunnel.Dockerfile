# ztunnel: the per-node tunnel (DaemonSet istio-system/ztunnel).
#
# Build from the repository root (the context must hold go.mod):
#   docker build -f build/docker/ztunnel.Dockerfile -t ambient/ztunnel:dev .
# A static Go binary (CGO_ENABLED=0, -trimpath); see manifests/README.md.
ARG GO_VERSION=1.26.8
FROM golang:${GO_VERSION}-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/ztunnel ./cmd/ztunnel

# Debian slim, not distroless: internal/redirect installs the in-pod capture
# by running nft(8) inside each pod's network namespace, so the image needs
# the nftables package. Runs as root (privileged DaemonSet).
FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ztunnel /usr/local/bin/ztunnel
ENTRYPOINT ["/usr/local/bin/ztunnel"]
