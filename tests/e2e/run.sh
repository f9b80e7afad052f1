#!/usr/bin/env bash
# Run the querygate end-to-end tests: real BigQuery clients (Python, Node)
# -> querygate -> bqemulator.  Installs what it needs (setup.sh), then runs
# pytest from the repository root with the test venv's interpreter.
#
#   tests/e2e/run.sh                 # all e2e tests, stop at the first failure
#   tests/e2e/run.sh -k audit        # extra arguments go to pytest
#
# Needs the gateway binary: $QUERYGATE_BIN, or
# ${CARGO_TARGET_DIR:-~/.cache/querygate/target}/debug/querygate (build it first).
# QUERYGATE_E2E_TARGET=emulator runs the client flows straight against the
# emulator (harness self-check, no gateway; gateway-only tests are skipped).
# QUERYGATE_E2E_KEEP=1 keeps the temp dir (configs, logs, audit db) after a pass.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

bash "$HERE/setup.sh"
cd "$ROOT"
exec "$HERE/.venv-client/bin/python" -m pytest -x -q tests/e2e "$@"
