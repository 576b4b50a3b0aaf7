#!/usr/bin/env bash
# Run the stream, relay, handshake and tunnel tests again on the oldest release
# of every websockets major that pyproject.toml allows (the main run has the
# newest). Each release is installed on its own into .venv-websockets/VERSION
# and put in front of the venv's copy with PYTHONPATH, which the tests' server
# and client processes inherit. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest release of each allowed major: keep in step with pyproject.toml.
VERSIONS=(16.0 17.0)
TESTS=(
    tests/common tests/server tests/client
    tests/e2e/test_tunnel.py tests/e2e/test_http.py tests/e2e/test_bad_input.py
    tests/e2e/test_interop.py
)

[ -x .venv/bin/python ] || ./scripts/setup-venv.sh test
for version in "${VERSIONS[@]}"; do
    target=.venv-websockets/$version
    [ -d "$target/websockets" ] ||
        .venv/bin/python -m pip install --quiet --no-deps --target "$target" "websockets==$version"
    echo "== websockets $version"
    PYTHONPATH=$target .venv/bin/python -c "
import sys, websockets.version as v
sys.exit(0 if v.version == '$version' else f'expected websockets $version, got {v.version}')"
    PYTHONPATH=$target .venv/bin/python -m pytest -q -n "${WSTUN_TEST_WORKERS:-3}" "${TESTS[@]}" "$@"
done
