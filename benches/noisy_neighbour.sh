#!/usr/bin/env bash
# Noisy neighbour: what one tenant's load does to another's latency (issue 11).
#
# Tenant A (the demo user) casts `demo/hello` at a steady low rate with an open-model client
# (benches/open_load.py: latency from each request's scheduled time; it takes the shortest
# time slice, as a client on another machine would not wait for the server's cores). Tenant B
# (another user) saturates the host with 64 connections, first of CPU-bound `demo/primes`
# casts, then of `demo/sleeper` casts that sleep in `poll_oneoff` until their wall limit.
# Reported, in one run: A's p50/p99 idle and under each load, the ratio of A's p99 to its idle
# p99 (goal ≤ 2), and B's primes throughput with A beside it against B alone (goal ≥ 0.9).
#
#   benches/noisy_neighbour.sh [seconds per phase, default 20] [A's casts per second, default 50]
#
# SPELLHOST_BENCH_BIN runs another spellhost binary instead of building this checkout. The
# server inherits SPELLHOST_* from the environment: SPELLHOST_WASM_THREAD_POLICY=idle measures
# what fly.toml deploys.
# NOISY_TRACE_DIR=DIR keeps each of A's requests (scheduled time, latency, status, how late the
# client sent it, and the server's Server-Timing stages; see benches/open_load.py) in
# DIR/a-{idle,primes,sleepers}.txt, to tell where A's slow casts waited and to line them up with
# what the server did at the time (e.g. `perf record -k CLOCK_MONOTONIC` of its fdatasyncs).
# Needs wrk (apt-get install wrk) and python3. Builds and runs the release binary on loopback,
# on the embedded SQLite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${1:-20}"
RATE="${2:-50}"
PORT="${SPELLHOST_BENCH_PORT:-18191}"
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }

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
# The rate limits are off: this casts thousands of times a second with one key from one
# address, which the defaults (60 a minute per key, 10 per address) exist to refuse.
ENVIRONMENT=(SPELLHOST_DATA_DIR="$DATA" RUST_LOG=warn
  SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE=0 SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE=0)
URL="http://127.0.0.1:$PORT"

env "${ENVIRONMENT[@]}" SPELLHOST_LISTEN="127.0.0.1:$PORT" "$BIN" serve --demo 2>"$DATA/server.log" &
PIDS+=("$!")
for _ in $(seq 300); do grep -q "listening on" "$DATA/server.log" && break; sleep 0.1; done
grep -q "listening on" "$DATA/server.log" || { cat "$DATA/server.log" >&2; exit 1; }
KEY_A="$(grep -o 'spk_[A-Za-z0-9_]*' "$DATA/server.log" | head -1)"

cli() { env "${ENVIRONMENT[@]}" "$BIN" "$@"; }
cli credits grant --user demo --amount-microusd 100000000000 --reason "bench" >/dev/null
cli user create --handle bob --email bob@example.com >/dev/null
KEY_B="$(cli key create --user bob --json | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')"
cli credits grant --user bob --amount-microusd 100000000000 --reason "bench" >/dev/null

# The sleeper (spells/hostile/sleeper.wat, compiled), published by demo with the demo key.
SLEEPER="$DATA/sleeper"
mkdir -p "$SLEEPER"
cp "$ROOT/benches/sleeper/module.wasm" "$SLEEPER/"
cat >"$SLEEPER/spell.toml" <<TOML
name = "sleeper"
version = "1.0.0"
description = "Sleeps in poll_oneoff until its wall-time limit"
[limits]
wall_ms_max = 2000
fuel_max = 1000000
TOML
cli spell sbom "$SLEEPER" >/dev/null
cli spell sign "$SLEEPER" --key "$ROOT/spells/demo-key/spell.key" >/dev/null
cli spell publish "$SLEEPER" --user demo >/dev/null

script() { # file key spell input
  cat >"$1" <<LUA
wrk.method = "POST"
wrk.body = '{"spell":"$3","input":$4}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $2"
LUA
}
script "$DATA/primes.lua" "$KEY_B" demo/primes '{"below":100000}'
script "$DATA/sleeper.lua" "$KEY_B" demo/sleeper '{}'
HELLO='{"spell":"demo/hello","input":{"name":"Ada"}}'

a_load() { # phase
  OPEN_LOAD_TRACE="${NOISY_TRACE_DIR:+$NOISY_TRACE_DIR/a-$1.txt}" \
    python3 "$ROOT/benches/open_load.py" "$URL/v1/cast" "$KEY_A" "$HELLO" "$RATE" "$DURATION"
}
b_load() { # script → "casts/s non2xx"
  wrk -t2 -c64 -d"${DURATION}s" -s "$1" "$URL/v1/cast" | awk '
    /Requests\/sec/ { rps = $2 } /Non-2xx/ { errors = $5 }
    END { printf "%.0f %d\n", rps, errors }'
}
b_ok_rate() { # "casts/s non2xx" → 2xx casts/s
  # wrk rounds its rate: when every cast was refused the difference can fall just below 0.
  awk -v d="$DURATION" '{ ok = $1 - $2 / d; printf "%.0f", (ok > 0 ? ok : 0) }' <<<"$1"
}

# Warm up: compiled modules, pools, leases.
wrk -t1 -c4 -d2s -s "$DATA/primes.lua" "$URL/v1/cast" >/dev/null
python3 "$ROOT/benches/open_load.py" "$URL/v1/cast" "$KEY_A" "$HELLO" "$RATE" 2 >/dev/null

echo "noisy neighbour: ${DURATION}s per phase, A at ${RATE}/s open model, B at 64 connections, $(nproc) cores, SQLite, loopback"
printf '%-28s %8s %8s %8s %8s %10s\n' phase "A sent" "A non2xx" "A p50" "A p99" "B casts/s"
report() { # phase a_line b_rate
  read -r sent _ bad p50 p99 _ <<<"$2"
  printf '%-28s %8s %8s %8s %8s %10s\n' "$1" "$sent" "$bad" "$p50" "$p99" "$3"
}

read -r _ _ _ _ IDLE_P99 _ <<<"$(a_load idle | tee "$DATA/idle")"
report "A alone" "$(cat "$DATA/idle")" "-"

B_ALONE="$(b_load "$DATA/primes.lua")"
report "B primes alone" "0 0 0 - - -" "$(b_ok_rate "$B_ALONE") (non2xx $(cut -d' ' -f2 <<<"$B_ALONE"))"

b_load "$DATA/primes.lua" >"$DATA/b_primes" &
B_PID=$!
A_PRIMES="$(a_load primes)"
wait "$B_PID"
B_WITH_A="$(cat "$DATA/b_primes")"
report "A + B primes (64 conns)" "$A_PRIMES" "$(b_ok_rate "$B_WITH_A") (non2xx $(cut -d' ' -f2 <<<"$B_WITH_A"))"

b_load "$DATA/sleeper.lua" >"$DATA/b_sleep" &
B_PID=$!
A_SLEEP="$(a_load sleepers)"
wait "$B_PID"
B_SLEEP="$(cat "$DATA/b_sleep")"
report "A + B sleepers (64 conns)" "$A_SLEEP" "$(b_ok_rate "$B_SLEEP") (non2xx $(cut -d' ' -f2 <<<"$B_SLEEP"))"

awk -v idle="$IDLE_P99" -v primes="$(cut -d' ' -f5 <<<"$A_PRIMES")" -v sleep="$(cut -d' ' -f5 <<<"$A_SLEEP")" \
    -v alone="$(b_ok_rate "$B_ALONE")" -v with="$(b_ok_rate "$B_WITH_A")" 'BEGIN {
  printf "A p99 under B primes / idle: %.2fx; under B sleepers / idle: %.2fx (goal <= 2)\n", primes / idle, sleep / idle
  printf "B primes throughput beside A / alone: %.2f (goal >= 0.9)\n", with / alone }'
curl -s "$URL/metrics" | grep -E '^spellhost_casts_refused_total|^spellhost_sandbox_queue_wait_seconds_(sum|count)' || true
cli ledger verify
