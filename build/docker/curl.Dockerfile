# curl: the sample client (manifests/samples/shop/curl.yaml), a shell with
# curl to run requests from inside a namespace with kubectl exec.
#
#   docker build -f build/docker/curl.Dockerfile -t ambient/curl:dev build/docker
FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
USER 65532:65532
ENTRYPOINT ["/usr/bin/curl"]
