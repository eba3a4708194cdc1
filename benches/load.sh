#!/usr/bin/env bash
# Load test: casts/s and p50/p99 latency of `demo/hello` at concurrency 1 and 64 on the
# embedded SQLite default, without and with three applicable budgets, with GET /healthz in the
# same run for comparison.
#
#   benches/load.sh [seconds per run, default 10]
#
# Needs wrk (apt-get install wrk). Builds and runs the release binary on loopback only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${1:-10}"
PORT="${SPELLHOST_BENCH_PORT:-18181}"
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }

cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" --bin spellhost
DATA="$(mktemp -d)"
LOG="$DATA/server.log"
SPELLHOST_LISTEN="127.0.0.1:$PORT" SPELLHOST_DATA_DIR="$DATA" RUST_LOG=warn \
  "$ROOT/target/release/spellhost" serve --demo 2>"$LOG" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$LOG" && break; sleep 0.1; done
KEY="$(grep -o 'spk_[A-Za-z0-9_]*' "$LOG" | head -1)"
# Enough credit for every cast of the run (the demo grants $1.00 = 500 000 hello casts).
SPELLHOST_DATA_DIR="$DATA" "$ROOT/target/release/spellhost" credits grant --user demo \
  --amount-microusd 100000000 --reason "load test" >/dev/null

SCRIPT="$DATA/cast.lua"
cat >"$SCRIPT" <<LUA
wrk.method = "POST"
wrk.body = '{"spell":"demo/hello","input":{"name":"Ada"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA

URL="http://127.0.0.1:$PORT"
# Warm up: compile caches, connection pools, the verified-key cache.
wrk -t1 -c4 -d2s -s "$SCRIPT" "$URL/v1/cast" >/dev/null

run() { # name connections threads url [script]
  local name=$1 connections=$2 threads=$3 url=$4 script=${5:-}
  local output
  output=$(wrk -t"$threads" -c"$connections" -d"${DURATION}s" --latency ${script:+-s "$script"} "$url")
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$output")
  p50=$(awk '$1=="50%" {print $2}' <<<"$output")
  p99=$(awk '$1=="99%" {print $2}' <<<"$output")
  errors=$(awk '/Non-2xx/ {print $5}' <<<"$output")
  printf '%-16s c=%-3s %10s req/s   p50 %-9s p99 %-9s non-2xx %s\n' "$name" "$connections" "$rps" "$p50" "$p99" "${errors:-0}"
}

echo "spellhost load test: ${DURATION}s per run, $(nproc) cores, SQLite, loopback"
run healthz 1 1 "$URL/healthz"
run healthz 64 2 "$URL/healthz"
run "cast hello" 1 1 "$URL/v1/cast" "$SCRIPT"
run "cast hello" 64 2 "$URL/v1/cast" "$SCRIPT"
# The same casts governed by three budgets (account, the key, the spell), none of which binds:
# what budget enforcement costs the cast path.
for scope in "" "--key ${KEY:0:16}" "--spell demo/hello"; do
  # shellcheck disable=SC2086 # $scope is two words or none
  SPELLHOST_DATA_DIR="$DATA" "$ROOT/target/release/spellhost" budget set --user demo $scope \
    --period month --hard 100000000000 >/dev/null
done
run "cast+3 budgets" 1 1 "$URL/v1/cast" "$SCRIPT"
run "cast+3 budgets" 64 2 "$URL/v1/cast" "$SCRIPT"
SPELLHOST_DATA_DIR="$DATA" "$ROOT/target/release/spellhost" ledger verify
