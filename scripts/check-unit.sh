#!/usr/bin/env bash
# Checks systemd/dockcast.service: `systemd-analyze verify` must be clean and the offline
# `systemd-analyze security` exposure must stay at or below 2.5.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${1:-target/release/dockcast}
[ -x "$bin" ] || { echo "check-unit: build $bin first" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify wants ExecStart's binary to exist: point the copy at the built one.
sed "s#/usr/bin/dockcast#$(realpath "$bin")#" systemd/dockcast.service > "$tmp/dockcast.service"
out=$(systemd-analyze verify "$tmp/dockcast.service" 2>&1) || { echo "$out" >&2; exit 1; }
[ -z "$out" ] || { echo "systemd-analyze verify: $out" >&2; exit 1; }
score=$(systemd-analyze security --offline=true "$tmp/dockcast.service" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for dockcast.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security exposure: $score (goal <= 2.5)"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.5) }'
