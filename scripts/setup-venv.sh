#!/usr/bin/env bash
# Create .venv (with $PYTHON, default python3) if it is missing and install
# wstun into it in editable mode, with the extras named by $1 if any
# (e.g. "test" or "bench").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${1:+[$1]}"
