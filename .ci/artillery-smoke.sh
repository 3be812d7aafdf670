#!/usr/bin/env bash
# artillery/smoke.yml against a fresh server: a debug build on a free port, in
# a temp uploads directory. Exits with artillery's status (non-zero when an
# `ensure` check or an expectation fails).
#
#   .ci/artillery-smoke.sh         # from anywhere in the repository
#
# Needs Rust and Node.js (npm) only: artillery 2 is installed on first use
# under $PIXPOOL_CI_CACHE (default ~/.cache/pixpool-ci), not in the repository.
# --ignore-scripts skips the browser download of artillery's Playwright engine,
# which fails offline and is not used here.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cache=${PIXPOOL_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pixpool-ci}
artillery_dir=$cache/artillery2
artillery=$artillery_dir/node_modules/.bin/artillery
if [[ ! -x $artillery ]]; then
    echo "== installing artillery 2 into $artillery_dir"
    mkdir -p "$artillery_dir"
    npm i --ignore-scripts --prefix "$artillery_dir" --no-audit --no-fund --loglevel=error artillery@2
fi

source .ci/server.sh
start_server artillery

# Artillery sends a telemetry event at exit even with ARTILLERY_DISABLE_TELEMETRY
# set (only anonymised then), and waits for it: offline, that is ~10 s of DNS
# timeout after every run. This preload swaps its PostHog client for a no-op,
# so nothing leaves the machine and the run ends when the test does.
no_telemetry=$artillery_dir/no-telemetry.cjs
cat >"$no_telemetry" <<'EOF'
const Module = require('module');
const load = Module._load;
Module._load = function (request, ...rest) {
  if (request === 'posthog-node') {
    return { PostHog: class { capture() {} async shutdownAsync() {} } };
  }
  return load.call(this, request, ...rest);
};
EOF

status=0
ARTILLERY_DISABLE_TELEMETRY=true NO_COLOR=1 NODE_OPTIONS="--require $no_telemetry" \
    "$artillery" run --target "http://$addr" artillery/smoke.yml || status=$?

if [[ $status -ne 0 ]]; then
    echo "artillery failed (status $status); the server's log:" >&2
    tail -n 50 "$log" >&2
fi
exit "$status"
