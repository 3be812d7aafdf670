#!/usr/bin/env bash
# The Postman collection (crates/pixpool/postman/) run by newman against a
# fresh server: a debug build on a free port, in a temp uploads directory.
# Exits with newman's status.
#
#   .ci/newman.sh                  # from anywhere in the repository
#
# Needs Rust and Node.js (npm) only: newman 6 is installed on first use under
# $PIXPOOL_CI_CACHE (default ~/.cache/pixpool-ci), not in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cache=${PIXPOOL_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pixpool-ci}
newman_dir=$cache/newman6
newman=$newman_dir/node_modules/.bin/newman
if [[ ! -x $newman ]]; then
    echo "== installing newman 6 into $newman_dir"
    mkdir -p "$newman_dir"
    npm i --prefix "$newman_dir" --no-audit --no-fund --loglevel=error newman@6
fi

echo "== cargo build -p pixpool"
cargo build -p pixpool --quiet
bin=${CARGO_TARGET_DIR:-$root/target}/debug/pixpool

uploads=$(mktemp -d "${TMPDIR:-/tmp}/pixpool-newman.XXXXXX")
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

# The collection expects the built-in presets and an open API.
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

status=0
"$newman" run crates/pixpool/postman/pixpool.postman_collection.json \
    --environment crates/pixpool/postman/pixpool.postman_environment.json \
    --env-var "baseUrl=http://$addr" \
    --working-dir "$root" \
    --timeout-request 60000 \
    --color off \
    || status=$?

if [[ $status -ne 0 ]]; then
    echo "newman failed (status $status); the server's log:" >&2
    tail -n 50 "$log" >&2
fi
exit "$status"
