# waypoint: the shared L7 proxy of a namespace (Deployment created for a
# Gateway of class istio-waypoint).
#
# Build from the repository root (the context must hold go.mod):
#   docker build -f build/docker/waypoint.Dockerfile -t ambient/waypoint:dev .
# A static Go binary (CGO_ENABLED=0, -trimpath); see manifests/README.md.
ARG GO_VERSION=1.26.8
FROM golang:${GO_VERSION}-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/waypoint ./cmd/waypoint

# Debian slim as the other images, non-root: the waypoint runs in its own
# pod's network namespace (never captured), needs no tools and listens only
# above 1024 (15008, 15000, 15020, 15021).
FROM debian:trixie-slim
COPY --from=build /out/waypoint /usr/local/bin/waypoint
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/waypoint"]
