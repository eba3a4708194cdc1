#!/usr/bin/env bash
# CPU time per cast, by thread group: what each part of the server spends on one `demo/hello`
# cast under a steady load. CPU time (from /proc, utime + stime of each thread) moves far less
# than throughput on a shared machine, so A/B comparisons of a change read better here.
#
#   benches/cpu_per_cast.sh [connections, default 64] [seconds, default 8] [VAR=value …]
#
# The VAR=value pairs go to the server's environment (e.g. SPELLHOST_CAST_OUTPUT_RETENTION_SECONDS=0).
# SPELLHOST_BENCH_BIN runs another spellhost binary instead of building this checkout.
# Prints casts/s and µs of CPU per cast for tokio-rt-worker (HTTP), spellhost-wasm (runs),
# spellhost-money (the settlement writer), spellhost-epoch and the total.
# Needs wrk (apt-get install wrk). SQLite, loopback, rate limits off.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONNECTIONS="${1:-64}"
DURATION="${2:-8}"
shift $(($# < 2 ? $# : 2))
PORT="${SPELLHOST_BENCH_PORT:-18201}"
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }

BIN="${SPELLHOST_BENCH_BIN:-}"
if [[ -z "$BIN" ]]; then
  cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" --bin spellhost
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/spellhost"
fi
DATA="$(mktemp -d)"
PID=""
cleanup() {
  [[ -n "$PID" ]] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  rm -rf "$DATA"
}
trap cleanup EXIT
ENVIRONMENT=(SPELLHOST_DATA_DIR="$DATA" RUST_LOG=warn
  SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE=0 SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE=0 "$@")
env "${ENVIRONMENT[@]}" SPELLHOST_LISTEN="127.0.0.1:$PORT" "$BIN" serve --demo 2>"$DATA/log" &
PID=$!
for _ in $(seq 300); do grep -q "listening on" "$DATA/log" && break; sleep 0.1; done
grep -q "listening on" "$DATA/log" || { cat "$DATA/log" >&2; exit 1; }
KEY="$(grep -o 'spk_[A-Za-z0-9_]*' "$DATA/log" | head -1)"
env "${ENVIRONMENT[@]}" "$BIN" credits grant --user demo --amount-microusd 10000000000 \
  --reason "cpu per cast" >/dev/null
cat >"$DATA/cast.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"spell":"demo/hello","input":{"name":"Ada"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
URL="http://127.0.0.1:$PORT/v1/cast"
# Warm up: compile cache, verified-key cache, leases.
wrk -t1 -c4 -d2s -s "$DATA/cast.lua" "$URL" >/dev/null

# CPU ticks per thread group (thread names without their number).
snapshot() {
  for task in /proc/"$PID"/task/*; do
    name="$(cat "$task/comm")"
    # Names are cut at 15 characters ("spellhost-wasm-0" reads "spellhost-wasm-").
    [[ "$name" =~ ^(.*)-[0-9]*$ ]] && name="${BASH_REMATCH[1]}"
    read -r utime stime < <(cut -d' ' -f14,15 "$task/stat")
    echo "$name $((utime + stime))"
  done | awk '{ticks[$1] += $2} END {for (n in ticks) print n, ticks[n]}' | sort
}
snapshot >"$DATA/before"
OUT="$(wrk -t"$((CONNECTIONS > 1 ? 2 : 1))" -c"$CONNECTIONS" -d"${DURATION}s" -s "$DATA/cast.lua" "$URL")"
snapshot >"$DATA/after"
CASTS="$(awk '/requests in/ {print $1}' <<<"$OUT")"
RPS="$(awk '/Requests\/sec/ {print $2}' <<<"$OUT")"
join "$DATA/before" "$DATA/after" | awk -v n="$CASTS" -v hz="$(getconf CLK_TCK)" -v rps="$RPS" -v c="$CONNECTIONS" '
  BEGIN { printf "c=%s casts/s %.0f, CPU µs per cast:", c, rps }
  { us = ($3 - $2) * 1e6 / hz / n; total += us; if (us >= 0.5) printf " %s %.0f", $1, us }
  END { printf ", total %.0f\n", total }'
