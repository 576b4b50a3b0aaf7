#!/usr/bin/env bash
# Install the Debian packages that tests and benchmarks run as real peers
# (nginx, tinyproxy, sshd, curl, iperf3, redis, wrk, socat, iproute2, dnsmasq,
# dig), when any is missing. Services are not started by the install: the tests start
# their own on loopback ports. Needs root (or sudo) and apt-get.
set -euo pipefail

# command -> Debian package
declare -A PACKAGES=(
    [nginx]=nginx
    [tinyproxy]=tinyproxy
    [sshd]=openssh-server
    [ssh]=openssh-client
    [curl]=curl
    [ip]=iproute2
    [iperf3]=iperf3
    [redis-server]=redis-server
    [redis-benchmark]=redis-tools
    [wrk]=wrk
    [socat]=socat
    [dnsmasq]=dnsmasq-base
    [dig]=bind9-dnsutils
)

missing=()
for cmd in "${!PACKAGES[@]}"; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" > /dev/null || missing+=("${PACKAGES[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get > /dev/null; then
    echo "missing commands need Debian packages: ${missing[*]} (no apt-get here)" >&2
    exit 1
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "installing Debian packages: ${missing[*]}"
# Keep package scripts from starting system services (nginx on :80, redis on :6379).
policy=/usr/sbin/policy-rc.d
created_policy=false
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" > /dev/null
    "${sudo[@]}" chmod +x "$policy"
    created_policy=true
fi
trap '$created_policy && "${sudo[@]}" rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
