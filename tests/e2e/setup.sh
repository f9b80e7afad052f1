#!/usr/bin/env bash
# Install everything the querygate end-to-end tests need, from a fresh clone:
#   tests/e2e/.venv-emu     bqemulator (the BigQuery upstream) + pinned duckdb + numpy
#   tests/e2e/.venv-client  google-cloud-bigquery + pandas/pyarrow/db-dtypes + pytest + requests
#   tests/e2e/.venv-storage the same client WITH google-cloud-bigquery-storage (test_dataframes.py)
#   tests/e2e/node/node_modules  @google-cloud/bigquery 8.x (9.x needs Node >= 22)
#   tests/e2e/.venv-mcp     bq-readonly-mcp (an MCP server on ADC) + the MCP Python SDK (test_connect.py)
#   tests/e2e/.venv-dbt     dbt-core + dbt-bigquery (test_connect.py)
#   tests/e2e/mcp-node/node_modules  @ergut/mcp-bigquery-server, an MCP server from npm (test_connect.py)
#   tests/e2e/pg-node/node_modules   node-postgres and pg-cursor (test_postgres.py)
#   /usr/share/java/postgresql.jar   Debian's PostgreSQL JDBC driver (apt-get, when root; test_postgres.py)
#   tests/oidc/node_modules      oidc-provider, the OpenID provider of the identity tests
#
# Idempotent and fast when already done: each step writes a stamp file holding a
# hash of its requirement file(s) (and the interpreter); a rerun with the same
# hash skips pip/npm entirely.
#
# Environment:
#   PYTHON   interpreter used to create the venvs (default: python3)
#   E2E_FORCE_SETUP=1   ignore stamps and reinstall
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
FORCE="${E2E_FORCE_SETUP:-0}"

log() { printf '[e2e-setup] %s\n' "$*" >&2; }

python_id() { "$PYTHON" -c 'import sys; print(sys.executable, sys.version)'; }

# ensure_venv DIR REQFILE
ensure_venv() {
    local dir="$1" req="$2" stamp="$1/.e2e-stamp" want
    want="$( { cat "$req"; python_id; } | sha256sum | cut -d' ' -f1)"
    if [[ "$FORCE" != 1 && -x "$dir/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        log "$(basename "$dir"): up to date"
        return 0
    fi
    log "$(basename "$dir"): installing from $(basename "$req")"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    printf '%s\n' "$want" > "$stamp"
}

# ensure_npm DIR: node_modules of DIR/package.json (npm ci when a lock file is there)
ensure_npm() {
    local dir="$1" stamp="$1/node_modules/.e2e-stamp" want
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        log "node and npm are required (Node >= 18; @google-cloud/bigquery 8.x)"
        exit 1
    fi
    local lockfiles=("$dir/package.json")
    [[ -f "$dir/package-lock.json" ]] && lockfiles+=("$dir/package-lock.json")
    want="$( { cat "${lockfiles[@]}"; node --version; } | sha256sum | cut -d' ' -f1)"
    if [[ "$FORCE" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        log "$(basename "$dir")/node_modules: up to date"
        return 0
    fi
    log "$(basename "$dir")/node_modules: installing"
    if [[ -f "$dir/package-lock.json" ]]; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    else
        (cd "$dir" && npm install --no-audit --no-fund --loglevel=error)
    fi
    # recompute: npm install may have just written package-lock.json
    lockfiles=("$dir/package.json" "$dir/package-lock.json")
    { cat "${lockfiles[@]}"; node --version; } | sha256sum | cut -d' ' -f1 > "$stamp"
}

ensure_venv "$HERE/.venv-emu" "$HERE/requirements-emu.txt"
ensure_venv "$HERE/.venv-client" "$HERE/requirements-client.txt"
ensure_venv "$HERE/.venv-storage" "$HERE/requirements-storage.txt"   # test_dataframes.py
ensure_npm "$HERE/node"
# The tools of test_connect.py (`querygate connect`), each in its own environment.
ensure_venv "$HERE/.venv-mcp" "$HERE/requirements-mcp.txt"
ensure_venv "$HERE/.venv-dbt" "$HERE/requirements-dbt.txt"
ensure_npm "$HERE/mcp-node"
# test_postgres.py: node-postgres, and Debian's PostgreSQL JDBC driver (root installs it).
ensure_npm "$HERE/pg-node"
if [[ ! -f /usr/share/java/postgresql.jar ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        log "libpostgresql-jdbc-java: installing (apt-get)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpostgresql-jdbc-java) >/dev/null \
            || log "libpostgresql-jdbc-java could not be installed: the JDBC test will say so"
    else
        log "libpostgresql-jdbc-java is not installed and this is not root: the JDBC test will say so"
    fi
fi
bash "$HERE/../oidc/setup.sh"   # the test OpenID provider (tests/oidc)
log "done"
