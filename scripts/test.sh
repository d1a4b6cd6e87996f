#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs them.
# Real parts only: containerd, dnsmasq and network namespaces come from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v containerd >/dev/null || need+=(containerd)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v ip >/dev/null || need+=(iproute2)
command -v openssl >/dev/null || need+=(openssl)
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

npm ci --no-audit --no-fund
npm test
