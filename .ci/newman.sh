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

source .ci/server.sh
start_server newman

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
