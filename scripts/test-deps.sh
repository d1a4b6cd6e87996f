#!/usr/bin/env bash
# What the test suite needs from Debian (real containerd, dnsmasq, network namespaces, openssl,
# nftables), installed when missing and running as root; `npm test` runs this first (its
# pretest script).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v containerd >/dev/null || need+=(containerd)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v ip >/dev/null || need+=(iproute2)
command -v openssl >/dev/null || need+=(openssl)
command -v nft >/dev/null || need+=(nftables)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need[*]} (run as root to install them, or install them yourself)" >&2
    exit 1
  fi
fi

