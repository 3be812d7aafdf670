#!/usr/bin/env bash
# Sourced by the CI scripts that need a live server: builds the debug binary,
# starts `pixpool serve` on a free port in a temp uploads directory, waits for
# /readyz, and stops it (and removes the directory) on exit. Sets `bin`,
# `uploads`, `log`, `server` and `addr`. Call as `start_server NAME`; SERVER_ARGS
# adds flags (word-split).

start_server() {
    # .ci/run sets PIXPOOL_BIN to the binary `cargo test` built; run alone, a
    # script builds it (a build of `-p pixpool` alone resolves other features
    # than the workspace's, which in CI would compile the dependencies again).
    if [[ -n ${PIXPOOL_BIN:-} ]]; then
        bin=$PIXPOOL_BIN
    else
        echo "== cargo build -p pixpool"
        cargo build -p pixpool --quiet
        bin=${CARGO_TARGET_DIR:-$root/target}/debug/pixpool
    fi

    uploads=$(mktemp -d "${TMPDIR:-/tmp}/pixpool-$1.XXXXXX")
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

    # The collection and the scenarios expect the built-in presets and an open API.
    # No admin listener: its fixed default port would clash with any other server
    # running on this machine.
    env -u PIXPOOL_API_TOKENS -u PIXPOOL_PRESETS PIXPOOL_ADMIN="${SERVER_ADMIN:-off}" \
        "$bin" serve --bind 127.0.0.1:0 --uploads "$uploads" ${SERVER_ARGS:-} 2>"$log" &
    server=$!

    # The supervisor logs `listening on ADDR` once bound; /readyz answers 200 once
    # every worker is connected.
    addr=
    deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        addr=$(sed -n '/admin listening/d; s/.* listening on \([0-9.:]*[0-9]\).*/\1/p;T;q' "$log")
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
}
