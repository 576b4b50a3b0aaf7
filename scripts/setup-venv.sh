#!/usr/bin/env bash
# Create .venv (with $PYTHON, default python3) if it is missing and install
# wstun into it in editable mode, with the extras named by $1 if any
# (e.g. "test" or "bench").
#
# Also makes .venv/typecheck/wstun for mypy: an editable install maps the
# folders client/, server/ and common/ to wstun.client, wstun.server and
# wstun.common with an import hook, which mypy can't follow, so mypy finds
# the package through these links instead (pyproject.toml's mypy_path).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${1:+[$1]}"

mkdir -p .venv/typecheck/wstun
for part in client server common; do
    ln -sfn "../../../$part" ".venv/typecheck/wstun/$part"
done
