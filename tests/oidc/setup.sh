#!/usr/bin/env bash
# Install the test OpenID provider (oidc-provider + jose, pinned by package-lock.json)
# into tests/oidc/node_modules. Idempotent: a stamp holds a hash of the lock file and the
# Node version, so a rerun with nothing changed returns at once. Safe to run from several
# test processes at once (flock). Called by scripts/test, tests/e2e/setup.sh and the Rust
# tests' support code. Needs Node >= 20.19 and npm.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STAMP="$HERE/node_modules/.setup-stamp"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "[oidc-setup] node and npm are required (Node >= 20.19) for the test OpenID provider" >&2
    exit 1
fi

want="$( { cat "$HERE/package.json" "$HERE/package-lock.json"; node --version; } | sha256sum | cut -d' ' -f1)"
exec 9>"$HERE/.setup.lock"
flock 9
if [[ "${E2E_FORCE_SETUP:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi
echo "[oidc-setup] installing oidc-provider into tests/oidc/node_modules" >&2
(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
printf '%s\n' "$want" > "$STAMP"
