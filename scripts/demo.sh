#!/usr/bin/env bash
# Demo: builds release binaries, starts two demo upstreams (a on :9001, b on :9002), starts the gateway
# with config/ringgate.toml (listen 127.0.0.1:8080; targets :9001 weight 80, :9002 weight 20; routes
# /api with strip_path and =/health), shows the 80/20 split with curl, then runs until Ctrl-C.
# Children are tracked by PID and killed on exit; nothing else is touched.
set -euo pipefail

cd "$(dirname "$0")/.."
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi

CONFIG=config/ringgate.toml
GATEWAY_ADDR=127.0.0.1:8080
LOGDIR=""
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$LOGDIR" ]; then echo "demo stopped; logs in $LOGDIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in cargo curl; do
    command -v "$tool" >/dev/null || { echo "demo.sh: $tool is required" >&2; exit 1; }
done
[ -f "$CONFIG" ] || { echo "demo.sh: $CONFIG is missing" >&2; exit 1; }
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/ringgate-demo.XXXXXX")

echo "== building (release)"
cargo build --release --bins

echo "== starting demo upstreams"
target/release/ringgate-demo-upstream --listen 127.0.0.1:9001 --name a 2>"$LOGDIR/upstream-a.log" &
PIDS+=($!)
target/release/ringgate-demo-upstream --listen 127.0.0.1:9002 --name b 2>"$LOGDIR/upstream-b.log" &
PIDS+=($!)

echo "== checking and starting the gateway"
target/release/ringgate check "$CONFIG"
target/release/ringgate run "$CONFIG" 2>"$LOGDIR/gateway.log" &
GW_PID=$!
PIDS+=("$GW_PID")

# Bounded wait for the ready line (10 s).
for _ in $(seq 1 100); do
    if grep -q ' INFO ready ' "$LOGDIR/gateway.log" 2>/dev/null; then break; fi
    if ! kill -0 "$GW_PID" 2>/dev/null; then
        echo "gateway exited:" >&2; cat "$LOGDIR/gateway.log" >&2; exit 1
    fi
    sleep 0.1
done
grep -q ' INFO ready ' "$LOGDIR/gateway.log" || { echo "gateway not ready after 10 s" >&2; cat "$LOGDIR/gateway.log" >&2; exit 1; }
cat "$LOGDIR/gateway.log"

echo "== GET /health"
curl -sS --max-time 5 "http://$GATEWAY_ADDR/health" || true
echo

echo "== 20 x GET /api/hello (weights 80/20)"
a=0; b=0
for i in $(seq 1 20); do
    who=$(curl -sS --max-time 5 -o /dev/null -w '%header{x-upstream}' "http://$GATEWAY_ADDR/api/hello" || echo "?")
    printf '%s ' "$who"
    case "$who" in a) a=$((a + 1));; b) b=$((b + 1));; esac
done
echo
echo "a=$a b=$b (expected 16/4 per worker with smooth weighted round-robin)"
echo "== one full response"
curl -sS --max-time 5 -i "http://$GATEWAY_ADDR/api/hello?x=1"
echo

echo "== running; gateway at http://$GATEWAY_ADDR — Ctrl-C to stop"
wait "$GW_PID"
