#!/usr/bin/env bash
# Connections lost across a binary upgrade, two ways, under wrk load with a new connection per
# request (Connection: close, so every request goes through a listening socket's accept queue):
#
#   overlap: start a second gateway on the same port (SO_REUSEPORT), then SIGTERM the first
#            (what an upgrade looks like without socket hand-over);
#   usr2:    kill -USR2 the gateway (it hands its sockets to a new process and drains).
#
# Prints wrk's socket errors per run. Loopback only; every run is bounded (wrk -d8s under a
# 20 s timeout); every process started here is ended by its PID.
#
# Usage: loadtest/upgrade.sh            (RUNS=5, MODES="overlap usr2", PORT=18080, UP_PORT=19001)
# Needs wrk (loadtest/run.sh installs it) and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
RUNS=${RUNS:-5}
MODES=${MODES:-"overlap usr2"}
PORT=${PORT:-18080}
UP_PORT=${UP_PORT:-19001}
command -v wrk >/dev/null || { echo "wrk missing (loadtest/run.sh installs it)"; exit 1; }
[ -x $BIN/ringgate ] && [ -x $BIN/ringgate-demo-upstream ] || { echo "cargo build --release first"; exit 1; }

DIR=$(mktemp -d)
cat >"$DIR/gw.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
workers = 2
drain_timeout = "5s"

[[services]]
name = "s"
url = "http://127.0.0.1:$UP_PORT"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
EOF

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

$BIN/ringgate-demo-upstream --listen "127.0.0.1:$UP_PORT" --name up 2>/dev/null &
PIDS+=($!)
sleep 0.3

# Waits (at most 10 s) until no process listed is alive.
wait_gone() {
  for _ in $(seq 1 100); do
    local alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
}

for run in $(seq 1 "$RUNS"); do
  for mode in $MODES; do
    log="$DIR/$mode-$run.log"
    $BIN/ringgate run "$DIR/gw.toml" 2>"$log" &
    A=$!
    PIDS+=($A)
    sleep 0.5
    timeout 20 wrk -t2 -c64 -d8s -H "Connection: close" "http://127.0.0.1:$PORT/" >"$DIR/wrk.out" 2>&1 &
    W=$!
    sleep 2.5
    if [ "$mode" = overlap ]; then
      $BIN/ringgate run "$DIR/gw.toml" 2>>"$log" &
      B=$!
      PIDS+=($B)
      sleep 1
      kill -TERM "$A"
    else
      kill -USR2 "$A"
      sleep 1
      B=$(grep -o "upgrade started pid=[0-9]*" "$log" | tail -1 | grep -o "[0-9]*$" || true)
      [ -n "$B" ] && PIDS+=("$B")
    fi
    wait "$W" || true
    requests=$(grep -o "^ *[0-9]* requests in" "$DIR/wrk.out" | grep -o "[0-9]*" | head -1)
    errors=$(grep -o "Socket errors:.*" "$DIR/wrk.out" || echo "Socket errors: none")
    non2xx=$(grep -o "Non-2xx or 3xx responses: [0-9]*" "$DIR/wrk.out" || true)
    echo "run $run $mode: requests=$requests $errors $non2xx"
    [ -n "$B" ] && kill -TERM "$B" 2>/dev/null || true
    kill -TERM "$A" 2>/dev/null || true
    wait_gone "$A" ${B:+"$B"}
  done
done
rm -rf "$DIR"
