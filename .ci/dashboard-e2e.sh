#!/usr/bin/env bash
# The dashboard (GET /) end to end in headless Chromium: Debian's chromium
# package and playwright-core from npm (`npx playwright install` cannot work
# offline; playwright-core drives the system browser instead).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [[ ! -x /usr/bin/chromium ]]; then
    echo "== installing chromium"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
cache=${PIXPOOL_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pixpool-ci}
pw_dir=$cache/playwright-core
if [[ ! -d $pw_dir/node_modules/playwright-core ]]; then
    echo "== installing playwright-core into $pw_dir"
    mkdir -p "$pw_dir"
    npm i --prefix "$pw_dir" --no-audit --no-fund --loglevel=error playwright-core@1
fi
# /stats needs the admin process: on a free port.
SERVER_ADMIN=127.0.0.1:0
# The thumbnail, and a preset of three formats whose AVIF the browser decodes.
SERVER_ARGS="--preset thumb:200x200:cover:q85 --preset pic:480:avif+webp+jpeg:q75"
source .ci/server.sh
start_server dashboard
status=0
PIXPOOL_URL="http://$addr" NODE_PATH="$pw_dir/node_modules" \
    node crates/front/e2e/dashboard.test.cjs || status=$?
if [[ $status -ne 0 ]]; then
    echo "dashboard e2e failed; the server's log:" >&2
    tail -n 50 "$log" >&2
fi
exit "$status"
