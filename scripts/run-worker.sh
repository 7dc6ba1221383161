#!/usr/bin/env bash
# `make run-worker`: one worker, no gateway, on 127.0.0.1:8090, serving
# data/social-direct (created from config/social.pg and config/seed.json).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
ADDR=127.0.0.1:8090
args=(serve --graph-id social --uri data/social-direct --listen "$ADDR")
fresh=0
if [ ! -d data/social-direct/_commits.lance ]; then
  args+=(--init --schema config/social.pg)
  fresh=1
fi
"$BIN/omnigraph-worker" "${args[@]}" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM
for _ in $(seq 1 600); do
  curl -fsS "http://$ADDR/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
if [ "$fresh" = 1 ]; then
  curl -fsS -X POST "http://$ADDR/change" -H 'content-type: application/json' --data @config/seed.json >/dev/null
  echo "seeded data/social-direct from config/seed.json"
fi
echo "try: curl -s -X POST http://$ADDR/read -d '{\"match\":{\"type\":\"Person\",\"key\":\"alice\"},\"traverse\":[{\"edge\":\"Knows\",\"max_hops\":2}]}'"
wait $pid
