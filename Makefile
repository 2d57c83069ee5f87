# Ambient mesh: build, test, benchmark and demo entry points.
# `make demo` runs the main job; `make test` runs every test tier.

GO       ?= go
BIN      := bin
# Fuzzing is bounded by executions, not time: a duration -fuzztime can fail
# with a spurious "context deadline exceeded" in Go 1.26 (golang/go#75804).
FUZZTIME ?= 50000x
# Packages with goroutines and locks, run again under the race detector.
RACE_PKGS := ./internal/... ./ztunnel/... ./istiod-lite/... ./bench/... ./nodeagent/... ./ambientctl/... ./localcluster/... ./waypoint/...

.PHONY: all build test test-unit test-race test-fuzz gen gen-check bench bench-go bench-tunnel bench-ztunnel bench-waypoint bench-controlplane demo demo-down demo-tunnel lint deps

all: build

deps:
	hack/install-deps.sh test
	$(GO) mod download
	@# The Kubernetes control plane for cluster tests, built once per machine
	@# from the module proxy (about 12 minutes the first time) and cached.
	hack/build-k8s.sh >/dev/null
	@# The CNI plugins (ptp, bridge, host-local, loopback) the node agent runs.
	hack/build-cni-plugins.sh >/dev/null

build:
	$(GO) build -o $(BIN)/ ./cmd/...

## test: everything CI runs — unit tests, race detector, fuzzing, generated code check.
test: deps lint test-unit test-race test-fuzz gen-check
	@echo "make test: all tiers passed"

test-unit:
	$(GO) test -count=1 ./...

test-race:
	$(GO) test -count=1 -race -short $(RACE_PKGS)

test-fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZTIME) ./internal/hbone/
	$(GO) test -run '^$$' -fuzz '^FuzzServerConn$$' -fuzztime $(FUZZTIME) ./internal/hbone/
	$(GO) test -run '^$$' -fuzz '^FuzzSelect$$' -fuzztime $(FUZZTIME) ./waypoint/route/
	$(GO) test -run '^$$' -fuzz '^FuzzNormalizePath$$' -fuzztime $(FUZZTIME) ./waypoint/l7authz/
	$(GO) test -run '^$$' -fuzz '^FuzzCapsuleReader$$' -fuzztime $(FUZZTIME) ./internal/connectudp/
	$(GO) test -run '^$$' -fuzz '^FuzzParsePath$$' -fuzztime $(FUZZTIME) ./internal/connectudp/
	$(GO) test -run '^$$' -fuzz '^FuzzLikeNetHTTP$$' -fuzztime 10000x ./waypoint/h1server/

gen:
	tools/gen.sh

gen-check:
	tools/gencheck.sh
	cd tools && $(GO) test -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## bench: Go micro-benchmarks, the tunnel against C TLS proxies, then ztunnel
## as a process in network namespaces (pod to pod vs C pairs, idle conns),
## the waypoint between two ztunnels against nginx, and istiod-lite.
bench: bench-go bench-tunnel bench-ztunnel bench-waypoint bench-controlplane

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./internal/hbone/ ./ztunnel/

bench-tunnel: build
	hack/install-deps.sh bench
	$(BIN)/meshbench tunnel $(BENCH_FLAGS)

# Needs root (network namespaces); about 4 minutes. Knobs: PROCBENCH_ROUNDS,
# PROCBENCH_BULK_MIB, PROCBENCH_LATENCY_SECONDS, PROCBENCH_PAIRS (see
# docs/benchmarks.md).
bench-ztunnel:
	hack/install-deps.sh bench
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./ztunnel/procbench/
	$(GO) test -run '^$$' -bench PodToPod -benchtime 300x -timeout 10m ./ztunnel/

# Needs root (network namespaces); about 5 minutes. client → ztunnel →
# waypoint → ztunnel → server against plain and an nginx TLS reverse-proxy
# path, HTTP/1.1. Knobs: PROCBENCH_ROUNDS, PROCBENCH_RATES,
# PROCBENCH_LATENCY_SECONDS, PROCBENCH_MAX_SECONDS, PROCBENCH_MAX_CONNS,
# PROCBENCH_CONNS, PROCBENCH_PATHS, PROCBENCH_WAYPOINT_PROCS,
# PROCBENCH_ZTUNNEL_PROCS (see docs/benchmarks.md).
bench-waypoint:
	hack/install-deps.sh bench
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./waypoint/procbench/
	$(GO) test -run '^$$' -bench Waypoint_Request -benchmem -count 3 ./waypoint/proxy/

# istiod-lite as a process against a real apiserver: 5,000 pods, 50 services,
# one ztunnel xDS client per node; about 1.5 minutes, no root. Knob:
# BENCH_CLIENTS_PER_NODE (see docs/benchmarks.md).
bench-controlplane: deps
	$(GO) test -run '^$$' -bench ControlPlane -benchtime 1x -timeout 30m ./bench/controlplane/
	$(GO) test -run '^$$' -bench Recompute -benchmem ./bench/controlplane/

## demo: a two-node local cluster with the mesh, the sample app, ambient
## mode, a policy and identity-tagged flows (hack/demo.sh; root). Leaves the
## cluster up; `make demo-down` removes it. DEMO_NONINTERACTIVE=1: no pauses,
## non-zero exit on any failure.
demo:
	hack/demo.sh

demo-down: build
	$(BIN)/ambientctl cluster down $(if $(DEMO_STATE_DIR),--state-dir $(DEMO_STATE_DIR) --cluster-state $(DEMO_STATE_DIR).json)

## demo-tunnel: the HBONE tunnel alone, end to end on loopback, narrated.
demo-tunnel: build
	$(BIN)/tunnel-demo
