#!/usr/bin/env bash
# `make run`: the gateway on 127.0.0.1:8080, serving the sample graph "social"
# (created from config/social.pg on first start and seeded with
# config/seed.json through the gateway, as the dev admin).
#
# The gateway owns its config at run time (POST /graphs rewrites it, and it
# keeps a .lock beside it), so it runs from a copy, .omnigraph/omnigraph.yaml,
# made from the tracked config/omnigraph.yaml on first run and kept after
# that, with the graphs created meanwhile. `make clean-data` starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
ADDR=127.0.0.1:8080
CONFIG=.omnigraph/omnigraph.yaml
mkdir -p .omnigraph
if [ ! -f "$CONFIG" ]; then
  # Paths in config/ are relative to config/; from .omnigraph/ the repo root
  # is `..` as well, so only the files beside the config and .omnigraph/ itself move.
  sed -e 's#\.\./\.omnigraph/##g' \
      -e 's#{ file: tokens.yaml }#{ file: ../config/tokens.yaml }#' \
      -e 's#{ file: social.pg }#{ file: ../config/social.pg }#' \
      config/omnigraph.yaml > "$CONFIG.tmp"
  mv "$CONFIG.tmp" "$CONFIG"
fi
fresh=0
[ -d data/social/_commits.lance ] || fresh=1
"$BIN/omnigraph-gateway" serve --config "$CONFIG" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM
for _ in $(seq 1 600); do
  curl -fsS "http://$ADDR/readyz" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "the gateway exited"; exit 1; }
  sleep 0.1
done
if [ "$fresh" = 1 ]; then
  curl -fsS -X POST "http://$ADDR/graphs/social/change" -H 'authorization: Bearer dev-admin-token' \
    -H 'content-type: application/json' --data @config/seed.json >/dev/null
  echo "seeded the graph 'social' from config/seed.json"
fi
cat <<MSG

omnigraph-gateway is serving on http://$ADDR (dev tokens: see config/tokens.yaml). Try:
  curl -s -X POST http://$ADDR/graphs/social/read -H 'authorization: Bearer dev-reader-token' \\
       -d '{"match":{"type":"Person","key":"alice"},"traverse":[{"edge":"Knows","max_hops":2}]}'
MSG
wait $pid
