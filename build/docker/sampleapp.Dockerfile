# sampleapp: the sample application's service (manifests/samples/shop).
#
# Build from the repository root (the context must hold go.mod):
#   docker build -f build/docker/sampleapp.Dockerfile -t ambient/sampleapp:dev .
# A static Go binary (CGO_ENABLED=0, -trimpath); see manifests/README.md.
ARG GO_VERSION=1.26.8
FROM golang:${GO_VERSION}-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/sampleapp ./cmd/sampleapp

FROM debian:trixie-slim
COPY --from=build /out/sampleapp /usr/local/bin/sampleapp
USER 65532:65532
EXPOSE 8080 9000
ENTRYPOINT ["/usr/local/bin/sampleapp"]
