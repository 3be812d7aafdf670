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

echo "== cargo build -p pixpool"
cargo build -p pixpool --quiet
bin=${CARGO_TARGET_DIR:-$root/target}/debug/pixpool

uploads=$(mktemp -d "${TMPDIR:-/tmp}/pixpool-artillery.XXXXXX")
log=$uploads.log
: >"$log" # exists before the server writes to it: the wait below reads it at once
server=
stop_server() {
    if [[ -n $server ]] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$uploads" "$log"
}
trap stop_server EXIT

# smoke.yml expects the built-in presets and an open API.
# No admin listener: its fixed default port would clash with any other server
# running on this machine.
env -u PIXPOOL_API_TOKENS -u PIXPOOL_PRESETS PIXPOOL_ADMIN=off \
    "$bin" serve --bind 127.0.0.1:0 --uploads "$uploads" 2>"$log" &
server=$!

# The supervisor logs `listening on ADDR` once bound; /readyz answers 200 once
# every worker is connected.
addr=
deadline=$((SECONDS + 30))
while ((SECONDS < deadline)); do
    addr=$(sed -n '/admin listening/d; s/.* listening on \([0-9.:]*[0-9]\).*/\1/p' "$log" | head -n 1)
    if [[ -n $addr ]] && node -e '
        require("http").get(process.argv[1], r => process.exit(r.statusCode === 200 ? 0 : 1))
            .on("error", () => process.exit(1));' "http://$addr/readyz"; then
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        echo "the server exited during start-up; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    addr=
    sleep 0.1
done
if [[ -z $addr ]]; then
    echo "the server did not become ready in 30 s; its log:" >&2
    cat "$log" >&2
    exit 1
fi
echo "== server ready on $addr"

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
