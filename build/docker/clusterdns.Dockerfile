# clusterdns: the local cluster's DNS server (manifests/cluster).
#
# Build from the repository root (the context must hold go.mod):
#   docker build -f build/docker/clusterdns.Dockerfile -t ambient/clusterdns:dev .
# A static Go binary (CGO_ENABLED=0, -trimpath); see manifests/README.md.
ARG GO_VERSION=1.26.8
FROM golang:${GO_VERSION}-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/clusterdns ./cmd/clusterdns

FROM debian:trixie-slim
COPY --from=build /out/clusterdns /usr/local/bin/clusterdns
# Runs as root: it binds port 53 (or grant CAP_NET_BIND_SERVICE and add a USER line).
EXPOSE 53/udp 53/tcp 8181 9153
ENTRYPOINT ["/usr/local/bin/clusterdns"]
