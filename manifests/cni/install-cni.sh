#!/bin/sh
# install-cni.sh: the ambient-cni node agent (DaemonSet ambient-cni-node).
#
# Like Istio's istio-cni node agent it installs the chained plugin on the
# node and keeps it installed:
#   1. copies the ambient-cni binary into the node's CNI bin directory
#      (atomically: copy next to it, then rename);
#   2. appends {"type": "ambient-cni", ...} to the plugins of the node's
#      primary network configuration (the lexically first *.conflist or
#      *.conf in the CNI conf directory, the one the runtime uses), turning
#      a single-plugin .conf into a .conflist; an existing ambient-cni entry
#      is replaced, so the file is rewritten only when it differs;
#   3. repeats every INTERVAL seconds, because the cluster's network plugin
#      may rewrite its file (and ours with it) at any time.
# It waits for a primary configuration to appear; it never creates one.
#
# `install-cni.sh uninstall` removes the entry and the binary. The entry is
# left in place when the agent stops: ambient-cni lets pods start when
# ztunnel is down (ztunnel picks them up from the state directory), so a
# restart of the agent never blocks pod creation.
#
# Environment (defaults for the DaemonSet's host mounts):
#   CNI_BIN_DIR     /host/opt/cni/bin
#   CNI_NET_DIR     /host/etc/cni/net.d
#   PLUGIN_SRC      /opt/ambient/bin/ambient-cni
#   ZTUNNEL_SOCKET  /var/run/ambient/ztunnel.sock  (host path, as the plugin sees it)
#   STATE_DIR       /var/run/ambient/pods          (host path)
#   INTERVAL        5
#   ONCE            unset; "1": install once and exit (for tests)
#   READY_FILE      /tmp/ready, touched once installed (readiness probe)
# Needs: sh, jq, cmp.
set -eu

CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
CNI_NET_DIR=${CNI_NET_DIR:-/host/etc/cni/net.d}
PLUGIN_SRC=${PLUGIN_SRC:-/opt/ambient/bin/ambient-cni}
ZTUNNEL_SOCKET=${ZTUNNEL_SOCKET:-/var/run/ambient/ztunnel.sock}
STATE_DIR=${STATE_DIR:-/var/run/ambient/pods}
INTERVAL=${INTERVAL:-5}
ONCE=${ONCE:-}
READY_FILE=${READY_FILE:-/tmp/ready}

log() { echo "install-cni: $*" >&2; }

# primary_conf prints the runtime's network configuration file, if any.
primary_conf() {
	for f in "$CNI_NET_DIR"/*; do
		case "$f" in
		*.conflist | *.conf | *.json) [ -f "$f" ] && { echo "$f"; return 0; } ;;
		esac
	done
	return 0
}

install_binary() {
	dst="$CNI_BIN_DIR/ambient-cni"
	if [ -f "$dst" ] && cmp -s "$PLUGIN_SRC" "$dst"; then
		return 0
	fi
	cp "$PLUGIN_SRC" "$dst.tmp"
	chmod 0755 "$dst.tmp"
	mv -f "$dst.tmp" "$dst"
	log "installed $dst"
}

# chain adds or refreshes our entry in the primary configuration; it
# returns 1 while there is none.
chain() {
	conf=$(primary_conf)
	if [ -z "$conf" ]; then
		log "no network configuration in $CNI_NET_DIR yet; waiting for the cluster's network plugin"
		return 1
	fi
	out="$conf"
	case "$conf" in *.conflist) ;; *) out="${conf%.*}.conflist" ;; esac
	want=$(jq --arg sock "$ZTUNNEL_SOCKET" --arg state "$STATE_DIR" '
		(if has("plugins") then . else {cniVersion: .cniVersion, name: .name, plugins: [del(.cniVersion, .name)]} end)
		| .plugins |= (map(select(.type != "ambient-cni"))
			+ [{type: "ambient-cni", ztunnelSocket: $sock, stateDir: $state, ztunnelTimeout: "2s"}])' "$conf")
	if [ "$out" = "$conf" ] && [ "$(jq -S . "$conf")" = "$(echo "$want" | jq -S .)" ]; then
		return 0
	fi
	echo "$want" >"$out.tmp"
	mv -f "$out.tmp" "$out"
	[ "$out" = "$conf" ] || rm -f "$conf"
	log "chained ambient-cni into $out"
}

uninstall() {
	conf=$(primary_conf)
	if [ -n "$conf" ] && jq -e 'has("plugins")' "$conf" >/dev/null; then
		jq '.plugins |= map(select(.type != "ambient-cni"))' "$conf" >"$conf.tmp"
		mv -f "$conf.tmp" "$conf"
		log "removed ambient-cni from $conf"
	fi
	rm -f "$CNI_BIN_DIR/ambient-cni"
}

if [ "${1:-}" = uninstall ]; then
	uninstall
	exit 0
fi

trap 'log "stopping; ambient-cni stays chained"; exit 0' TERM INT
while :; do
	if install_binary && chain; then
		touch "$READY_FILE"
		[ -n "$ONCE" ] && exit 0
	elif [ -n "$ONCE" ]; then
		exit 1
	fi
	sleep "$INTERVAL" &
	wait $! || true
done
