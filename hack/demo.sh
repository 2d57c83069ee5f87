#!/usr/bin/env bash
# The demo (`make demo`): a two-node local cluster, the mesh installed with
# kubectl, the sample app, ambient mode switched on with no pod restarted,
# an AuthorizationPolicy enforced, identity-tagged flows, then a waypoint
# and a canary shifted with an HTTPRoute. Every step prints
# the command it runs; they are the commands a user types.
#
# Leaves the cluster up (`make demo-down` removes it). Environment:
#   DEMO_NONINTERACTIVE=1  no pauses; exit non-zero at the first failure
#   DEMO_STATE_DIR         the cluster's state directory (default: ambientctl's)
#   DEMO_TIMEOUT           seconds to wait for each condition (default 180)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="/usr/local/go/bin:$PATH" # sudo's secure_path drops it

if [ "$(id -u)" != 0 ]; then
	echo "demo: the local cluster needs root (network namespaces, routes); run: sudo make demo" >&2
	exit 1
fi

TIMEOUT=${DEMO_TIMEOUT:-180}
INTERACTIVE=1
if [ -n "${DEMO_NONINTERACTIVE:-}" ] || [ ! -t 0 ]; then INTERACTIVE=; fi

bold=$'\e[1m' dim=$'\e[2m' green=$'\e[32m' red=$'\e[31m' reset=$'\e[0m'
if [ ! -t 1 ]; then bold= dim= green= red= reset=; fi

step() { printf '\n%s== %s ==%s\n' "$bold" "$*" "$reset"; }
say() { printf '%s\n' "$*"; }
# run prints a command, then runs it.
run() {
	printf '%s$ %s%s\n' "$green" "$*" "$reset"
	"$@"
}
pause() {
	if [ -n "$INTERACTIVE" ]; then
		read -r -p "${dim}(Enter to continue)${reset}" _ || true
	fi
}
fail() {
	printf '%sdemo failed: %s%s\n' "$red" "$*" "$reset" >&2
	exit 1
}
# eventually WHAT SHOWN CMD...: runs CMD until it succeeds, at most
# $TIMEOUT seconds; prints SHOWN (the command as a user would type it) once
# and CMD's last output.
eventually() {
	local what=$1 shown=$2
	shift 2
	local deadline=$((SECONDS + TIMEOUT)) out
	printf '%s$ %s%s   %s(until %s)%s\n' "$green" "$shown" "$reset" "$dim" "$what" "$reset"
	until out=$("$@" 2>&1); do
		if ((SECONDS >= deadline)); then
			printf '%s\n' "$out"
			fail "$what: not within ${TIMEOUT}s"
		fi
		sleep 1
	done
	printf '%s\n' "$out"
}

# The checks the demo waits on.
curl_shop() { kubectl exec -n shop deploy/curl -- curl -sS --fail --max-time 5 "$@"; }
chain_answers() {
	local out
	out=$(curl_shop http://frontend:8080/) && printf '%s\n' "$out" && grep -q '"service": "ratings"' <<<"$out"
}
all_captured() {
	local out
	out=$(ambientctl zc workloads -n shop) && printf '%s\n' "$out" &&
		! grep -qw TCP <<<"$out" && grep -qw HBONE <<<"$out"
}
# flow_with ARGS...: a flow line holding every ARG.
flow_with() {
	local out
	local all out
	all=$(ambientctl flows -n shop) || return 1
	out=$all
	for s in "$@"; do out=$(grep -F -- "$s" <<<"$out") || return 1; done
	head -1 <<<"$all" # the column names
	printf '%s\n' "$out"
}
refused() { ! curl_shop "$@"; }
waypoint_flows() {
	local out
	out=$(kubectl logs -n shop deploy/waypoint | grep '"reporter":"waypoint"' | tail -2) && [ -n "$out" ] && printf '%s\n' "$out"
}
# versions N: sends N requests through frontend and prints how many reviews
# v1 and v2 answered (only reviews has a v2).
versions() {
	local out v2 ratings
	out=$(kubectl exec -n shop deploy/curl -- sh -c "for i in \$(seq $1); do curl -sS --max-time 5 http://frontend:8080/; done") || return 1
	v2=$(grep -c '"version": "v2"' <<<"$out" || true)
	ratings=$(grep -c '"service": "ratings"' <<<"$out" || true)
	printf 'reviews v1: %d   v2: %d   (of %d; the chain reached ratings %d times)\n' $(($1 - v2)) "$v2" "$1" "$ratings"
}
# all_v2 N: every one of N requests reached reviews v2; some_v2 N: at
# least one did.
all_v2() { versions "$1" | tee /dev/stderr | grep "v2: $1 " | grep -q "ratings $1 times"; }
some_v2() { versions "$1" | tee /dev/stderr | grep -v "v2: 0 " | grep -q "ratings $1 times"; }

CURL='kubectl exec -n shop deploy/curl -- curl -sS'
CURL_ID=spiffe://cluster.local/ns/shop/sa/curl
FRONTEND_ID=spiffe://cluster.local/ns/shop/sa/frontend
RATINGS_ID=spiffe://cluster.local/ns/shop/sa/ratings

step "Building (the first run builds Kubernetes ${dim}(~12 min)${reset}${bold} and the CNI plugins once)"
hack/install-deps.sh test
KUBE_BIN=$(hack/build-k8s.sh)
hack/build-cni-plugins.sh >/dev/null
go build -o bin/ ./cmd/...
export PATH="$ROOT/bin:$KUBE_BIN:$PATH"

STATE_ARGS=()
if [ -n "${DEMO_STATE_DIR:-}" ]; then
	STATE_ARGS=(--state-dir "$DEMO_STATE_DIR" --cluster-state "$DEMO_STATE_DIR.json")
	export AMBIENT_CLUSTER_STATE="$DEMO_STATE_DIR.json"
fi

step "1. A local cluster: a real control plane and two simulated nodes"
run ambientctl cluster up "${STATE_ARGS[@]}"
KUBECONFIG=$(ambientctl cluster status "${STATE_ARGS[@]}" -o json | jq -r .kubeconfig)
export KUBECONFIG
run kubectl get nodes -o wide
pause

step "2. Install the mesh: CRDs, istiod-lite, ztunnel and ambient-cni, with kubectl"
run kubectl apply -k manifests/ | tail -5
run kubectl -n istio-system rollout status deploy/istiod-lite --timeout="${TIMEOUT}s"
run kubectl -n istio-system rollout status ds/ztunnel --timeout="${TIMEOUT}s"
run kubectl -n istio-system rollout status ds/ambient-cni-node --timeout="${TIMEOUT}s"
pause

step "3. The sample app: frontend -> reviews (v1, v2) -> ratings, and a curl client"
run kubectl apply -k manifests/samples/shop/ | tail -3
for d in frontend-v1 reviews-v1 reviews-v2 ratings-v1 curl; do
	run kubectl -n shop rollout status "deploy/$d" --timeout="${TIMEOUT}s"
done
run kubectl get pods -n shop -o wide
say "The namespace is not in the mesh yet: traffic is plaintext, and no ztunnel sees it."
eventually "the whole chain answers" "$CURL http://frontend:8080/" chain_answers
run ambientctl zc workloads -n shop
pause

step "4. Ambient mode on for namespace shop (no pod restarts)"
run ambientctl ambient enable -n shop
eventually "every shop pod is in the mesh (PROTOCOL HBONE)" "ambientctl zc workloads -n shop" all_captured
run kubectl get pods -n shop
eventually "the chain answers through the mesh" "$CURL http://frontend:8080/" chain_answers
say "Each hop was mTLS between the pods' ztunnels; the receiving side saw the caller's SPIFFE identity:"
eventually "a flow with both identities" "ambientctl flows -n shop" flow_with "$CURL_ID" "$FRONTEND_ID" allow
pause

step "5. An AuthorizationPolicy: only reviews may call ratings"
run cat manifests/samples/shop/policies/ratings-viewer.yaml
run kubectl apply -f manifests/samples/shop/policies/ratings-viewer.yaml
say "curl calling ratings directly is refused by the ztunnel in front of ratings ..."
eventually "curl -> ratings is refused" "$CURL http://ratings:8080/" refused http://ratings:8080/
say "... while the call chain through reviews still works:"
eventually "the chain answers" "$CURL http://frontend:8080/" chain_answers
eventually "the denial is in the flows, with both identities" "ambientctl flows -n shop" flow_with "$CURL_ID" "$RATINGS_ID" deny
pause

step "6. A waypoint for L7 features, and a canary with an HTTPRoute"
run ambientctl waypoint apply -n shop --enroll-namespace --wait
run kubectl get pods -n shop -l gateway.networking.k8s.io/gateway-name=waypoint -o wide
say "Behind a waypoint, the ztunnel in front of ratings sees the waypoint's identity, not the caller's:"
say "a policy on the caller's identity now targets the Service and runs at the waypoint (Istio's guidance)."
run kubectl delete -f manifests/samples/shop/policies/ratings-viewer.yaml
run kubectl apply -f manifests/samples/shop/policies/ratings-viewer-waypoint.yaml
say "New connections to shop's services now go through the waypoint (open ones keep their path,"
say "as in Istio), so restart frontend: its keep-alive connections to reviews start afresh."
run kubectl rollout restart -n shop deploy/frontend-v1
run kubectl rollout status -n shop deploy/frontend-v1 --timeout="${TIMEOUT}s"
eventually "curl -> ratings is refused by the waypoint (403)" "$CURL http://ratings:8080/" refused http://ratings:8080/
eventually "the chain answers through the waypoint" "$CURL http://frontend:8080/" chain_answers
run cat manifests/samples/shop/routes/reviews-canary.yaml
run kubectl apply -f manifests/samples/shop/routes/reviews-canary.yaml
eventually "the canary is in force (some requests reach v2)" "$CURL http://frontend:8080/   # x100" some_v2 100
say "Promote the canary: every request to v2."
run kubectl apply -f manifests/samples/shop/routes/reviews-v2.yaml
eventually "every request reaches v2" "$CURL http://frontend:8080/   # x100" all_v2 100
say "The waypoint logs one flow per request, with the caller's identity:"
eventually "the waypoint's request flows are in its log" "kubectl logs -n shop deploy/waypoint | tail -2" waypoint_flows
pause

step "Done. The cluster is still up:"
cat <<EOF
  export KUBECONFIG=$KUBECONFIG
  export PATH=$ROOT/bin:$KUBE_BIN:\$PATH
  kubectl get pods -A -o wide
  ambientctl flows -n shop --follow            # live, identity-tagged (Ctrl-C to stop)
  kubectl exec -n shop deploy/curl -- curl -sS http://frontend:8080/
  ambientctl zc workloads -n shop; ambientctl zc certs -n shop
  kubectl delete authorizationpolicy -n shop ratings-viewer
  ambientctl waypoint list -n shop; ambientctl waypoint delete -n shop
  ambientctl ambient disable -n shop           # plaintext again, still no restarts
  make demo-down                               # removes everything
EOF
