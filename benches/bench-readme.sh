#!/usr/bin/env bash
# The README's Performance figures, measured with `sluice bench`: the same
# streaming clients against `sluice mock` directly, through a plain TCP
# relay (the load generator's `--relay-to`) and through `sluice serve`
# (SQLite ledger, a price, a daily budget, metrics), in alternating rounds.
#
#   cargo build --release -p sluice -p sluice-benches --bins
#   benches/bench-readme.sh            # writes target/bench-readme/{report.json,report.html}
#
# Environment: BIN (default target/release), OUT (default
# target/bench-readme), REQUESTS per step and side (default 20000),
# CONCURRENCY (default 1,50), ROUNDS (default 4).
set -euo pipefail

BIN=${BIN:-target/release}
OUT=${OUT:-target/bench-readme}
REQUESTS=${REQUESTS:-20000}
CONCURRENCY=${CONCURRENCY:-1,50}
ROUNDS=${ROUNDS:-4}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
die() { echo "error: $1" >&2; exit 1; }
trap cleanup EXIT

# Starts a server that prints its address as its first line on stdout.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    PIDS+=($!)
    for _ in $(seq 100); do
        if [ -s "$WORK/$name.out" ]; then
            head -1 "$WORK/$name.out"
            return
        fi
        sleep 0.05
    done
    die "$name did not start: $(tail -5 "$WORK/$name.log")"
}

# 64 tokens per stream with no gap between events, usage at the end.
MOCK=$(start mock "$BIN/sluice" mock --listen 127.0.0.1:0 --tokens 64 --itl 0us)
RELAY=$(start relay "$BIN/load" --relay-to "$MOCK")

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/pipelines/data"
cat >"$WORK/pipelines/settings.yaml" <<EOF
server:
  keepalive: 15s
  shutdown_grace: 1s
providers:
  mock:
    kind: openai
    base_url: http://$MOCK/v1
storage: sqlite:data/ledger.db
prices:
  bench-model: {input: 0.15, output: 0.60}
EOF
cat >"$WORK/pipelines/bench.yaml" <<EOF
name: bench
model: {provider: mock, name: bench-model}
limits: {max_tokens: 1024}
timeouts: {connect: 30s, first_token: 30s, idle: 30s, total: 120s}
budget: {daily_usd: 1000000}
EOF
SLUICE_LOG=warn "$BIN/sluice" serve "$WORK/pipelines" --listen "127.0.0.1:$PORT" \
    >/dev/null 2>"$WORK/sluice.log" &
PIDS+=($!)
for _ in $(seq 200); do
    curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.05
done
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || die "sluice did not start: $(tail -5 "$WORK/sluice.log")"

"$BIN/sluice" bench "http://$MOCK/v1/chat/completions" --model bench-model \
    --via "relay=http://$RELAY/v1/chat/completions" --via "sluice=http://127.0.0.1:$PORT/v1/chat/completions" \
    --via-model bench-model --via-model bench \
    --concurrency "$CONCURRENCY" --requests "$REQUESTS" --warmup 200 --rounds "$ROUNDS" \
    --prompt-tokens 16 --output-tokens 64 \
    --json "$OUT/report.json" --html "$OUT/report.html" --quiet
