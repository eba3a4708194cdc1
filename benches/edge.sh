#!/usr/bin/env bash
# The cost of the HTTP edge (rate limits, client address, security headers, CORS layer off,
# connection watchdog, body deadline): requests/s of this checkout against another build, on
# `GET /healthz` and on `POST /v1/cast` of `demo/hello`, at concurrency 1 and 64. Both servers
# run at once (SQLite, loopback, rate limits off) and the rounds interleave, so the ratio
# compares like with like on a noisy machine.
#
#   SPELLHOST_BENCH_BASE_BIN=/path/to/old/spellhost benches/edge.sh [seconds per run, 5] [rounds, 3]
#
# SPELLHOST_BENCH_BIN runs a binary instead of building this checkout. Needs wrk.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${1:-5}"
ROUNDS="${2:-3}"
BASE="${SPELLHOST_BENCH_BASE_BIN:?set SPELLHOST_BENCH_BASE_BIN to the build to compare with}"
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
NEW="${SPELLHOST_BENCH_BIN:-}"
if [[ -z "$NEW" ]]; then
  cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" --bin spellhost
  NEW="${CARGO_TARGET_DIR:-$ROOT/target}/release/spellhost"
fi
WORK="$(mktemp -d)"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

start() { # name binary port
  mkdir -p "$WORK/$1"
  # The rate limits are off (an older build ignores the variables): one key casts thousands
  # of times a second here.
  env SPELLHOST_DATA_DIR="$WORK/$1" RUST_LOG=warn SPELLHOST_LISTEN="127.0.0.1:$3" \
    SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE=0 SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE=0 \
    "$2" serve --demo 2>"$WORK/$1.log" &
  PIDS+=("$!")
  for _ in $(seq 300); do grep -q "listening on" "$WORK/$1.log" && break; sleep 0.1; done
  grep -q "listening on" "$WORK/$1.log" || { cat "$WORK/$1.log" >&2; exit 1; }
  env SPELLHOST_DATA_DIR="$WORK/$1" "$2" credits grant --user demo --amount-microusd 10000000000 \
    --reason "edge bench" >/dev/null
  local key
  key="$(grep -o 'spk_[A-Za-z0-9_]*' "$WORK/$1.log" | head -1)"
  cat >"$WORK/$1.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"spell":"demo/hello","input":{"name":"Ada"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
  wrk -t1 -c4 -d2s -s "$WORK/$1.lua" "http://127.0.0.1:$3/v1/cast" >/dev/null
}
start base "$BASE" 18401
start new "$NEW" 18402

rps() { wrk "$@" | awk '/Requests\/sec/ { printf "%.0f", $2 }'; }
echo "round build healthz_c1 healthz_c64 cast_c1 cast_c64 (requests/s)"
for round in $(seq "$ROUNDS"); do
  for name in base new; do
    port=$([[ $name == base ]] && echo 18401 || echo 18402)
    url="http://127.0.0.1:$port"
    echo "$round $name $(rps -t1 -c1 -d"${DURATION}s" "$url/healthz") \
$(rps -t2 -c64 -d"${DURATION}s" "$url/healthz") \
$(rps -t1 -c1 -d"${DURATION}s" -s "$WORK/$name.lua" "$url/v1/cast") \
$(rps -t2 -c64 -d"${DURATION}s" -s "$WORK/$name.lua" "$url/v1/cast")"
  done
done | tee "$WORK/results"
# Medians per build and the ratio new/base.
awk 'NR > 1 || $1 != "round" {
       for (i = 3; i <= 6; i++) v[$2, i, ++n[$2, i]] = $i
     }
     function median(build, col,   k, m, a, j, t) {
       m = n[build, col]
       for (k = 1; k <= m; k++) a[k] = v[build, col, k]
       for (k = 1; k <= m; k++) for (j = k + 1; j <= m; j++) if (a[j] < a[k]) { t = a[k]; a[k] = a[j]; a[j] = t }
       return a[int((m + 1) / 2)]
     }
     END {
       split("healthz_c1 healthz_c64 cast_c1 cast_c64", names, " ")
       for (i = 3; i <= 6; i++)
         printf "%s median base %d new %d ratio %.2f\n", names[i - 2], median("base", i), median("new", i), median("new", i) / median("base", i)
     }' "$WORK/results"
