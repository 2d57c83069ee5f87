# istiod-lite: the control plane (Deployment istio-system/istiod-lite).
#
# Build from the repository root (the context must hold go.mod):
#   docker build -f build/docker/istiod-lite.Dockerfile -t ambient/istiod-lite:dev .
# A static Go binary (CGO_ENABLED=0, -trimpath); see manifests/README.md.
ARG GO_VERSION=1.26.8
FROM golang:${GO_VERSION}-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/istiod-lite ./cmd/istiod-lite

# Distroless static, non-root: it only talks to the apiserver and serves gRPC.
FROM debian:trixie-slim
COPY --from=build /out/istiod-lite /usr/local/bin/istiod-lite
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/istiod-lite"]
