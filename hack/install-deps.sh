#!/usr/bin/env bash
# Installs the Debian packages a task needs on a fresh machine, only those
# missing. Usage: hack/install-deps.sh test|bench
set -euo pipefail

case "${1:-test}" in
  test)  pkgs=(git ca-certificates iproute2 nftables iptables jq curl stunnel4 haproxy nginx libnginx-mod-stream etcd-server) ;;
  bench) pkgs=(iproute2 nftables iptables stunnel4 haproxy nginx libnginx-mod-stream ethtool) ;;
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
