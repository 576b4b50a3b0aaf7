#!/usr/bin/env bash
# Install the Debian packages the tests drive as real peers (when missing),
# set up a virtualenv with the test extras, then run lint, type checks and
# the whole test suite, in $WSTUN_TEST_WORKERS parallel processes (default 3:
# most tests wait on sockets and processes, not on the CPU). Extra arguments
# go to pytest (e.g. -k relay, or -n 0 for one process).
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
.venv/bin/python -m pytest -n "${WSTUN_TEST_WORKERS:-3}" "$@"
