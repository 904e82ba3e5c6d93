#!/usr/bin/env bash
# ringgate load-test kit: direct vs ringgate vs nginx, interleaved, on a 2-core box.
#
#   loadtest/run.sh                 # full run (~12-15 min): 3 rounds
#   QUICK=1 loadtest/run.sh         # ~1-minute smoke run
#   SCENARIOS_ONLY=1 SCENARIOS=plain,metrics-off,ratelimit loadtest/run.sh   # only the scenario table
#
# Env knobs (see loadtest/README.md): ROUNDS DURATION WARMUP CONNS SIZES WRK_THREADS LAT_RATE LAT_CONNS
# LAT_DURATION LAT_SIZES IDLE_CONNS TARGETS GEN_CPU GW_CPU RINGGATE_BIN GATEWAY_HIST_CMD
# SCENARIOS (default: all; none = skip) SCENARIOS_ONLY SCEN_ROUNDS SCEN_DURATION SCEN_CONNS SCEN_SIZE
# SKIP_INSTALL=1 SKIP_BUILD=1 TIMEOUT (global guard, seconds) KEEP_RUN_DIR=1
#
# Output: loadtest/reports/<timestamp>/{report.md,runs.json,hdr-*.svg,configs/,build.log}
#         loadtest/reports/latest -> <timestamp>
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*"; }

# ---- processes we start: killed by PID on exit -------------------------------------------------
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]:-}"; do
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [[ -n "$pid" ]] && wait "$pid" 2>/dev/null || true
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- sanity ------------------------------------------------------------------------------------
if [[ "$(nproc)" -lt 2 ]]; then
  echo "need at least 2 cores (load generator on core ${GEN_CPU:-0}, gateway on core ${GW_CPU:-1})" >&2
  exit 2
fi

# ---- setup: wrk, nginx (apt), oha (apt if packaged, else cargo install --locked) --------------
export PATH="$HOME/.cargo/bin:$PATH"
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  need_apt=()
  command -v wrk >/dev/null || need_apt+=(wrk)
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx)
  command -v taskset >/dev/null || need_apt+=(util-linux)
  command -v openssl >/dev/null || need_apt+=(openssl)  # scenarios: TLS cert, RS256 JWT
  if ! command -v oha >/dev/null && [[ -z "${OHA_CHECKED:-}" ]]; then
    apt_updated=1
    log "apt-get update"; timeout 300 apt-get update -qq || true
    if apt-cache policy oha 2>/dev/null | grep -q 'Candidate: [0-9]'; then need_apt+=(oha); fi
  fi
  if ((${#need_apt[@]})); then
    [[ -n "${apt_updated:-}" ]] || { log "apt-get update"; timeout 300 apt-get update -qq || true; }
    log "apt-get install ${need_apt[*]}"
    # policy-rc.d/--no-start style: don't let the package start a system nginx on :80
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 timeout 600 apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  fi
  if ! command -v oha >/dev/null; then
    log "oha not packaged: cargo install oha --locked (a few minutes, cached in ~/.cargo/bin)"
    timeout 1800 cargo install oha --locked || log "WARNING: oha install failed: latency step will be skipped"
  fi
fi
export NGINX_BIN="${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}"
command -v wrk >/dev/null || { echo "wrk missing (SKIP_INSTALL=1?)" >&2; exit 2; }
[[ -x "$NGINX_BIN" ]] || { echo "nginx missing (SKIP_INSTALL=1?)" >&2; exit 2; }

# ---- report dir ----------------------------------------------------------------------------------
export REPORT_STAMP="${REPORT_STAMP:-$(date +%Y%m%d-%H%M%S)}"
export REPORT_DIR="${REPORT_DIR:-$HERE/reports/$REPORT_STAMP}"
mkdir -p "$REPORT_DIR"

# ---- build ringgate (a failure is reported; direct and nginx are still measured) ---------------
export RINGGATE_BUILD_LOG="$REPORT_DIR/build.log"
export RINGGATE_BUILD_STATUS=0
if [[ "${SKIP_BUILD:-0}" != 1 && " ${TARGETS:-ringgate} " == *ringgate* ]]; then
  log "cargo build --release (log: $RINGGATE_BUILD_LOG)"
  set +e
  timeout 1800 cargo build --release --bin ringgate >"$RINGGATE_BUILD_LOG" 2>&1
  RINGGATE_BUILD_STATUS=$?
  set -e
  if [[ $RINGGATE_BUILD_STATUS != 0 ]]; then
    log "WARNING: ringgate build failed (exit $RINGGATE_BUILD_STATUS): it will be reported as not measured"
    tail -n 5 "$RINGGATE_BUILD_LOG" || true
  fi
else
  : >"$RINGGATE_BUILD_LOG"
fi

# ---- run -----------------------------------------------------------------------------------------
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ -n "${QUICK:-}" && "${QUICK}" != 0 ]]; then def_timeout=600; else def_timeout=2400; fi
GUARD="${TIMEOUT:-$def_timeout}"
log "bench (global guard ${GUARD}s)"
set +e
# the harness pins itself to GEN_CPU; SIGTERM from the guard makes it kill its children and still write the report
timeout -k 20 "$GUARD" python3 "$HERE/bench.py" &
PIDS+=($!)
wait $!
rc=$?
set -e
PIDS=()

if [[ -f "$REPORT_DIR/report.md" ]]; then
  if [[ "$(cd "$REPORT_DIR/.." && pwd)" == "$HERE/reports" ]]; then
    ln -sfn "$(basename "$REPORT_DIR")" "$HERE/reports/latest" 2>/dev/null || true
  else
    ln -sfn "$REPORT_DIR" "$HERE/reports/latest" 2>/dev/null || true
  fi
  log "report: $REPORT_DIR/report.md (also loadtest/reports/latest)"
fi
exit "$rc"
