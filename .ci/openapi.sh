#!/usr/bin/env bash
# The published API document, checked by a real OpenAPI 3.1 validator (PyPI's
# openapi-spec-validator, in a venv of its own). That its paths are the
# server's routes is a cargo test (crates/pixpool/tests/openapi.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${XDG_CACHE_HOME:-$HOME/.cache}/pixpool-ci/openapi-venv
if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  echo "== installing openapi-spec-validator into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q openapi-spec-validator
fi
"$venv/bin/openapi-spec-validator" crates/pixpool/openapi.json
