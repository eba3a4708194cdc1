#!/usr/bin/env bash
# Load test: end-to-end `POST /v1/cast` of `demo/hello` against the no-database ceiling
# (../shared/ceiling: axum + pooled wasmtime running the same module), measured in the same run
# with rounds interleaved, at concurrency 1 and 64; then the same casts governed by three
# budgets. Reports casts/s, p50/p99, non-2xx, the ratio to the ceiling per round, and the
# database work per cast (statements and transactions of the money path, from /metrics).
#
#   benches/load.sh [seconds per run, default 10] [rounds, default 3]
#
# Environment:
#   SPELLHOST_BENCH_DATABASE_URL  postgres://… to run on PostgreSQL (default: embedded SQLite)
#   SPELLHOST_BENCH_BIN           a spellhost binary to run instead of building this checkout
#   SPELLHOST_BENCH_INSTANCES     1 or 2 server processes on that database (2 needs PostgreSQL);
#                                 the load is split evenly between them, one wrk per instance
#   CEILING_DIR                   where the ceiling's sources are (default ../shared/ceiling);
#                                 without it the ceiling runs are skipped
#
# Needs wrk (apt-get install wrk). Builds and runs release binaries on loopback only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${1:-10}"
ROUNDS="${2:-3}"
PORT="${SPELLHOST_BENCH_PORT:-18181}"
INSTANCES="${SPELLHOST_BENCH_INSTANCES:-1}"
DATABASE_URL="${SPELLHOST_BENCH_DATABASE_URL:-}"
CEILING_DIR="${CEILING_DIR:-$ROOT/../shared/ceiling}"
CEILING_PORT=$((PORT + 10))
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
if [[ "$INSTANCES" -gt 1 && "$DATABASE_URL" != postgres* ]]; then
  echo "several instances need SPELLHOST_BENCH_DATABASE_URL=postgres://…" >&2
  exit 1
fi

# SPELLHOST_BENCH_BIN runs a binary built elsewhere (another commit, to compare in one run).
BIN="${SPELLHOST_BENCH_BIN:-}"
if [[ -z "$BIN" ]]; then
  cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" --bin spellhost
  # Where cargo put it: CARGO_TARGET_DIR is honoured, as cargo itself does.
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/spellhost"
fi
DATA="$(mktemp -d)"
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

# The ceiling, built outside the project's tree (its README says how).
CEILING=""
if [[ -f "$CEILING_DIR/Cargo.toml" ]]; then
  CEILING_TARGET="${CEILING_TARGET_DIR:-$HOME/.cache/ceiling-target}"
  CARGO_TARGET_DIR="$CEILING_TARGET" cargo build --quiet --release --manifest-path "$CEILING_DIR/Cargo.toml"
  WASM="$ROOT/spells/hello/module.wasm" LISTEN="127.0.0.1:$CEILING_PORT" \
    "$CEILING_TARGET/release/ceiling" >"$DATA/ceiling.log" 2>&1 &
  PIDS+=("$!")
  CEILING="http://127.0.0.1:$CEILING_PORT"
else
  echo "no ceiling at $CEILING_DIR: ceiling runs skipped" >&2
fi

# The database: a fresh PostgreSQL database per run, or SQLite in the data directory.
# The rate limits are off: this casts thousands of times a second with one key from one
# address, which the defaults (60 a minute per key, 10 per address) exist to refuse.
ENVIRONMENT=(SPELLHOST_DATA_DIR="$DATA" RUST_LOG=warn
  SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE=0 SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE=0)
if [[ -n "$DATABASE_URL" ]]; then
  DB_NAME="spellhost_bench_$$"
  psql "$DATABASE_URL" -qc "CREATE DATABASE $DB_NAME" >/dev/null
  BENCH_URL="${DATABASE_URL%/*}/$DB_NAME"
  trap 'cleanup; psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null' EXIT
  ENVIRONMENT+=(SPELLHOST_DATABASE_URL="$BENCH_URL")
fi

URLS=()
for i in $(seq 0 $((INSTANCES - 1))); do
  port=$((PORT + i))
  log="$DATA/server-$i.log"
  demo=()
  [[ $i -eq 0 ]] && demo=(--demo)
  env "${ENVIRONMENT[@]}" SPELLHOST_LISTEN="127.0.0.1:$port" "$BIN" serve "${demo[@]}" 2>"$log" &
  PIDS+=("$!")
  for _ in $(seq 300); do grep -q "listening on" "$log" && break; sleep 0.1; done
  grep -q "listening on" "$log" || { cat "$log" >&2; exit 1; }
  URLS+=("http://127.0.0.1:$port")
done
KEY="$(grep -o 'spk_[A-Za-z0-9_]*' "$DATA/server-0.log" | head -1)"
# Enough credit for every cast of the run (the demo grants $1.00 = 500 000 hello casts).
env "${ENVIRONMENT[@]}" "$BIN" credits grant --user demo --amount-microusd 10000000000 \
  --reason "load test" >/dev/null

SCRIPT="$DATA/cast.lua"
cat >"$SCRIPT" <<LUA
wrk.method = "POST"
wrk.body = '{"spell":"demo/hello","input":{"name":"Ada"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA

# Warm up: compile caches, connection pools, the verified-key cache, leases.
for url in "${URLS[@]}"; do wrk -t1 -c4 -d2s -s "$SCRIPT" "$url/v1/cast" >/dev/null; done
[[ -n "$CEILING" ]] && wrk -t1 -c4 -d2s -s "$SCRIPT" "$CEILING/v1/cast" >/dev/null

# One wrk per target URL, run at once, `connections` split between them; prints
# "rps p50_ms p99_ms non2xx" (rps summed, latencies the worst of the instances).
measure() { # connections url...
  local connections=$1
  shift
  local per=$((connections / $#))
  ((per < 1)) && per=1
  local outputs=() loaders=()
  for url in "$@"; do
    # Unique names: the caller reads this function's output through a process substitution,
    # so the previous call may still be removing its files when the next one starts.
    local out
    out="$(mktemp "$DATA/wrk-XXXXXX")"
    wrk -t"$((per > 1 ? 2 : 1))" -c"$per" -d"${DURATION}s" --latency -s "$SCRIPT" "$url/v1/cast" >"$out" &
    loaders+=("$!")
    outputs+=("$out")
  done
  wait "${loaders[@]}"
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps += $2 }
    $1 == "50%" { v = ms($2); if (v > p50) p50 = v }
    $1 == "99%" { v = ms($2); if (v > p99) p99 = v }
    /Non-2xx/ { errors += $5 }
    END { printf "%.0f %.2f %.2f %d\n", rps, p50, p99, errors }
  ' "${outputs[@]}"
  rm -f "${outputs[@]}"
}

counter() { # metric name, summed over instances
  local total=0 value
  for url in "${URLS[@]}"; do
    value=$(curl -s "$url/metrics" | awk -v name="$1" '$1 == name || index($1, name "{") == 1 { s += $2 } END { printf "%d", s }')
    total=$((total + value))
  done
  echo "$total"
}

DB_LABEL="SQLite"
[[ -n "$DATABASE_URL" ]] && DB_LABEL="PostgreSQL"
echo "spellhost load test: ${DURATION}s per run, $ROUNDS rounds, $(nproc) cores, $DB_LABEL, $INSTANCES instance(s), loopback"
printf '%-22s %-5s %9s %9s %9s %8s %8s\n' run conns casts/s p50_ms p99_ms non2xx ratio

declare -A RATIOS
rounds() { # label
  local label=$1 c spell ceil rps p50 p99 errors crps cp99
  for round in $(seq "$ROUNDS"); do
    for c in 1 64; do
      if [[ -n "$CEILING" ]]; then
        read -r crps _ cp99 _ < <(measure "$c" "$CEILING")
        printf '%-22s %-5s %9s %9s %9s %8s %8s\n' "ceiling r$round" "$c" "$crps" "-" "$cp99" "-" "-"
      fi
      read -r rps p50 p99 errors < <(measure "$c" "${URLS[@]}")
      local ratio="-"
      if [[ -n "$CEILING" ]]; then
        ratio=$(awk -v a="$rps" -v b="$crps" -v p="$p99" -v q="$cp99" 'BEGIN { printf "%.2f (p99 %.1fx)", a / b, p / q }')
        RATIOS["$label $c"]+="$(awk -v a="$rps" -v b="$crps" 'BEGIN { printf "%.2f ", a / b }')"
      fi
      printf '%-22s %-5s %9s %9s %9s %8s %s\n' "$label r$round" "$c" "$rps" "$p50" "$p99" "$errors" "$ratio"
    done
  done
}

casts_before=$(counter spellhost_casts_total)
statements_before=$(counter spellhost_money_db_statements_total)
transactions_before=$(counter spellhost_money_db_transactions_total)
batches_before=$(counter spellhost_settlement_batches_total)
rounds "cast hello"
casts=$(($(counter spellhost_casts_total) - casts_before))
statements=$(($(counter spellhost_money_db_statements_total) - statements_before))
transactions=$(($(counter spellhost_money_db_transactions_total) - transactions_before))
batches=$(($(counter spellhost_settlement_batches_total) - batches_before))
awk -v c="$casts" -v s="$statements" -v t="$transactions" -v b="$batches" 'BEGIN {
  printf "database work per cast: %.3f statements, %.3f transactions (%d casts, %d settlement batches, %.1f casts per batch)\n",
    s / c, t / c, c, b, (b > 0 ? c / b : 0) }'

# The same casts governed by three budgets (account, the key, the spell), none of which binds:
# what budget enforcement costs the cast path.
for scope in "" "--key ${KEY:0:16}" "--spell demo/hello"; do
  # shellcheck disable=SC2086 # $scope is two words or none
  env "${ENVIRONMENT[@]}" "$BIN" budget set --user demo $scope --period month \
    --hard 100000000000 >/dev/null
done
rounds "cast+3 budgets"

if [[ -n "$CEILING" ]]; then
  for run in "cast hello 1" "cast hello 64" "cast+3 budgets 1" "cast+3 budgets 64"; do
    # shellcheck disable=SC2086 # the ratios are words
    echo "$run: ratio to the ceiling per round: ${RATIOS[$run]}(median $(tr ' ' '\n' <<<"${RATIOS[$run]}" | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'))"
  done
fi
env "${ENVIRONMENT[@]}" "$BIN" ledger verify
