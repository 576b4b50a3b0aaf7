#!/usr/bin/env bash
# A local demo, end to end on this machine:
#   HTTP request -> wstun-client -> WebSocket -> wstun-server -> demo target (HTTP server)
# Sets up .venv, starts the three processes on free loopback ports, sends one
# request through the tunnel, prints the answer and both tunnel log lines,
# then stops everything it started. Pass --keep to leave the tunnel up until
# Ctrl-C and try it yourself: it prints a client command (with the demo's
# token file) you can paste to open a forward of your own.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup-venv.sh

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for FILE REGEX: print the first capture group once a line matches (10 s at most).
wait_for() {
    for _ in $(seq 100); do
        if match=$(sed -nE "s/.*$2.*/\\1/p" "$1" | head -n1) && [ -n "$match" ]; then
            echo "$match"; return 0
        fi
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

mkdir "$work/site"
echo "Hello from the demo target, carried through a wstun tunnel." > "$work/site/index.html"
head -c 4194304 /dev/urandom > "$work/site/random.bin"

.venv/bin/python -u -m http.server --bind 127.0.0.1 --directory "$work/site" 0 \
    > "$work/target.log" 2>&1 &
pids+=($!)
target_port=$(wait_for "$work/target.log" 'port ([0-9]+)')

# The token lives in a file only its owner can read; both sides get it from there.
token_file="$work/token"
(umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$token_file")

.venv/bin/wstun-server --listen 127.0.0.1:0 --allow "127.0.0.1:$target_port" \
    --token-file "$token_file" > "$work/server.log" 2>&1 &
pids+=($!)
server_port=$(wait_for "$work/server.log" 'listening on 127\.0\.0\.1:([0-9]+)')

.venv/bin/wstun-client -L "0:127.0.0.1:$target_port" "ws://127.0.0.1:$server_port/" \
    --token-file "$token_file" > "$work/client.log" 2>&1 &
pids+=($!)
local_port=$(wait_for "$work/client.log" 'forwarding 127\.0\.0\.1:([0-9]+)')

echo "target  http://127.0.0.1:$target_port/  (python -m http.server)"
echo "server  ws://127.0.0.1:$server_port/    (wstun-server --allow 127.0.0.1:$target_port)"
echo "client  127.0.0.1:$local_port            (wstun-client -L $local_port:127.0.0.1:$target_port)"
echo
echo "GET http://127.0.0.1:$local_port/"
fetch() { .venv/bin/python -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=10).read())' "$1"; }
fetch "http://127.0.0.1:$local_port/"
echo
echo "GET http://127.0.0.1:$local_port/random.bin (4 MiB), SHA-256 compared with the file"
got=$(fetch "http://127.0.0.1:$local_port/random.bin" | sha256sum | cut -d' ' -f1)
want=$(sha256sum < "$work/site/random.bin" | cut -d' ' -f1)
echo "$got"
[ "$got" = "$want" ] || { echo "MISMATCH: expected $want" >&2; exit 1; }
echo "matches the file on the target side"

wait_for "$work/client.log" '(tunnel closed id=c2 .*)' > /dev/null
wait_for "$work/server.log" '(tunnel closed id=s2 .*)' > /dev/null
echo
echo "client log:"; sed 's/^/  /' "$work/client.log"
echo "server log:"; sed 's/^/  /' "$work/server.log"

if [ "${1:-}" = "--keep" ]; then
    mine=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo
    echo "The tunnel stays up: try  curl http://127.0.0.1:$local_port/"
    echo "or run a client of your own against the demo server (in another terminal):"
    echo "  $PWD/.venv/bin/wstun-client --token-file $token_file -L $mine:127.0.0.1:$target_port ws://127.0.0.1:$server_port/"
    echo "  curl http://127.0.0.1:$mine/"
    echo "Ctrl-C stops the demo (and removes its token file)."
    wait "${pids[0]}"
fi
