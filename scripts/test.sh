#!/usr/bin/env bash
# Install the Debian packages the tests drive as real peers (when missing),
# set up a virtualenv with the test extras, then run lint, type checks and
# the whole test suite. Extra arguments go to pytest (e.g. -k relay).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-debian-deps.sh

./scripts/setup-venv.sh test

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
