#!/usr/bin/env bash
# The API contract check: schemathesis (PyPI, pinned) against the committed
# docs/openapi.json. `tests/e2e/tests/api_contract_e2e.rs` starts a gateway
# with one graph and runs this with the arguments for `schemathesis run`;
# run it by hand the same way against any gateway:
#
#   scripts/schemathesis.sh docs/openapi.json --url http://127.0.0.1:8080 \
#       -H "Authorization: Bearer $TOKEN" --checks not_a_server_error,response_schema_conformance
#
# schemathesis lives in its own virtualenv under target/ (made on first use,
# so nothing is installed system-wide and `cargo clean` removes it).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
VENV=${SCHEMATHESIS_VENV:-target/schemathesis-$VERSION}
# A venv cannot be moved (its scripts name its own path), so a finished
# install is marked with a stamp instead; a half-made one is made again.
if [ ! -f "$VENV/.installed" ]; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 keeps venv in its own package.
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
  touch "$VENV/.installed"
fi
export SCHEMATHESIS_HOOKS="$PWD/scripts/schemathesis_hooks.py"
# SCHEMATHESIS_CONFIG names a schemathesis.toml (the test pins path parameters there).
if [ -n "${SCHEMATHESIS_CONFIG:-}" ]; then
  exec "$VENV/bin/schemathesis" --config-file "$SCHEMATHESIS_CONFIG" run "$@"
fi
exec "$VENV/bin/schemathesis" run "$@"
