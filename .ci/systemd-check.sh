#!/usr/bin/env bash
# Checks the shipped systemd units: `systemd-analyze verify` must print nothing
# (it exits 0 even on unknown keys), and the service's exposure must be <= 2.0.
# Needs the binary built (target/debug/pixpool): ExecStart is pointed at it in a
# temporary copy, since /usr/bin/pixpool exists only once the .deb is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { apt-get update -qq && apt-get install -y -qq systemd >/dev/null; }
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/pixpool"
[ -x "$bin" ] || cargo build -q -p pixpool
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in pixpool.service pixpool.socket; do
  sed "s#/usr/bin/pixpool#$bin#" "crates/pixpool/packaging/$unit" > "$tmp/$unit"
done
out=$(cd "$tmp" && systemd-analyze verify pixpool.service pixpool.socket 2>&1 || true)
if [ -n "$out" ]; then
  echo "systemd-analyze verify complained:"; echo "$out"; exit 1
fi
echo "systemd-analyze verify: clean"
line=$(systemd-analyze security --offline=yes "$tmp/pixpool.service" 2>&1 | grep 'Overall exposure level')
echo "$line"
level=$(echo "$line" | sed -E 's/.*: ([0-9.]+).*/\1/')
awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }' || { echo "exposure $level > 2.0"; exit 1; }
