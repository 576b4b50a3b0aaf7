#!/usr/bin/env bash
# Create .venv (with $PYTHON, default python3) if it is missing and install
# wstun into it in editable mode, with the extras named by $1 if any
# (e.g. "test" or "bench"). When .venv already holds this pyproject.toml's
# install with those extras, nothing is installed again: a second run takes
# a moment, not minutes.
#
# Also makes .venv/typecheck/wstun for mypy: an editable install maps the
# folders client/, server/ and common/ to wstun.client, wstun.server and
# wstun.common with an import hook, which mypy can't follow, so mypy finds
# the package through these links instead (pyproject.toml's mypy_path).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
extra=${1:-}
stamp=.venv/.wstun-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)

up_to_date() {
    [ -x .venv/bin/python ] && [ -f "$stamp" ] || return 1
    [ "$(head -n1 "$stamp")" = "$want" ] || return 1
    [ -z "$extra" ] || grep -qx "$extra" "$stamp" || return 1
    .venv/bin/python -c 'import wstun.client, wstun.server' 2> /dev/null
}

if ! up_to_date; then
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".${extra:+[$extra]}"
    # The stamp: the pyproject.toml installed, then every extra installed with it.
    previous=()
    if [ -f "$stamp" ] && [ "$(head -n1 "$stamp")" = "$want" ]; then
        mapfile -t previous < <(tail -n +2 "$stamp")
    fi
    printf '%s\n' "$want" "${previous[@]}" ${extra:+"$extra"} | awk '!seen[$0]++' > "$stamp"
fi

mkdir -p .venv/typecheck/wstun
for part in client server common; do
    ln -sfn "../../../$part" ".venv/typecheck/wstun/$part"
done
