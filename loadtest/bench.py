#!/usr/bin/env python3
"""ringgate load-test harness (stdlib only). Driven by loadtest/run.sh; see loadtest/README.md.

Targets, measured interleaved in the same run (A B C A B C ...):
  direct   - wrk/oha straight to the upstream (an nginx serving /small and /16k): the ceiling
  ringgate - target/release/ringgate run CONFIG --workers 1, pinned to core 1
  nginx    - an equivalent one-worker keep-alive reverse proxy, pinned to core 1

Core 0 runs the upstream, the load generators and this script; core 1 runs only the gateway, so
the busy jiffies of cpu1 in /proc/stat over a run are the gateway's cost (CPU us per request).

Scenarios (SCENARIOS=plain,metrics-off,ratelimit,tls,keyauth-rl,jwt-hs256-rl,jwt-rs256-rl; gzip on
request, with SCEN_SIZE=16k): after the
main matrix, one ringgate process per scenario config plus nginx (and nginx over TLS or gzip), each measured
at SCEN_CONNS/SCEN_SIZE once per round in a rotating order; gateways not being measured are
SIGSTOPped so nothing else of ours runs on core 1. Reported as CPU/req ratios vs plain ringgate.

Every process this script starts runs in its own session; on exit (normal, error, SIGTERM/SIGINT
from run.sh's timeout guard) each is killed by its own process-group id. Nothing else is touched.
"""
import base64
import datetime
import glob
import gzip
import hashlib
import hmac
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIZES = {"small": 100, "16k": 16384}
GATEWAYS = ("ringgate", "nginx")


# --------------------------------------------------------------------------- settings

def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def env_float(name, default):
    v = os.environ.get(name, "")
    return float(v) if v.strip() else default


def env_list(name, default):
    v = os.environ.get(name, "")
    return [x.strip() for x in v.split(",") if x.strip()] if v.strip() else list(default)


QUICK = os.environ.get("QUICK", "") not in ("", "0")
ROUNDS = env_int("ROUNDS", 1 if QUICK else 3)
DURATION = env_float("DURATION", 2 if QUICK else 8)
# Scenario phase: ringgate configs compared with plain ringgate (and nginx) at one load point.
ALL_SCENARIOS = ["plain", "metrics-off", "ratelimit", "tls", "keyauth-rl", "jwt-hs256-rl", "jwt-rs256-rl"]
# Asked for by name only: compression needs a body above its 1 KiB minimum (SCEN_SIZE=16k), while
# the default scenarios run at /small.
EXTRA_SCENARIOS = ["gzip"]
_scen_env = os.environ.get("SCENARIOS", "").strip()
CFG = {
    "quick": QUICK,
    "rounds": ROUNDS,
    "duration_s": DURATION,
    "warmup_s": env_float("WARMUP", 1 if QUICK else 2),
    "conns": [int(c) for c in env_list("CONNS", ["1", "64", "256"])],
    "sizes": env_list("SIZES", ["small", "16k"]),
    "wrk_threads": env_int("WRK_THREADS", 1),
    "lat_rate": env_int("LAT_RATE", 5000),
    "lat_conns": env_int("LAT_CONNS", 50),
    "lat_duration_s": env_float("LAT_DURATION", 3 if QUICK else 10),
    "lat_sizes": env_list("LAT_SIZES", ["small"] if QUICK else ["small", "16k"]),
    "idle_conns": env_int("IDLE_CONNS", 10000),
    "targets": env_list("TARGETS", ["direct", "ringgate", "nginx"]),
    # 0: the upstream corks head and body of a file into one segment (tcp_nopush on), as an app
    # server writing a small response does; 1: nginx's sendfile default, head and body apart.
    "upstream_split": env_int("UPSTREAM_SPLIT", 0),
    "gen_cpu": env_int("GEN_CPU", 0),
    "gw_cpu": env_int("GW_CPU", 1),
    "ringgate_bin": os.environ.get("RINGGATE_BIN", os.path.join(ROOT, "target/release/ringgate")),
    "oha_bin": os.environ.get("OHA_BIN", shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")),
    "wrk_bin": os.environ.get("WRK_BIN", shutil.which("wrk") or "wrk"),
    "nginx_bin": os.environ.get("NGINX_BIN", shutil.which("nginx") or "/usr/sbin/nginx"),
    # Default: the gateway's own HDR summary per route (latency it adds, and total), from its admin API.
    "gateway_hist_cmd": os.environ.get(
        "GATEWAY_HIST_CMD",
        "curl -s http://127.0.0.1:$RINGGATE_ADMIN_PORT/histograms; echo; "
        "curl -s 'http://127.0.0.1:$RINGGATE_ADMIN_PORT/histograms?route=all&kind=added' | head -60"),
    "scenarios": [] if _scen_env in ("none", "0") else env_list("SCENARIOS", ALL_SCENARIOS),
    "scenarios_only": os.environ.get("SCENARIOS_ONLY", "") not in ("", "0"),
    "scen_rounds": env_int("SCEN_ROUNDS", ROUNDS),
    "scen_duration_s": env_float("SCEN_DURATION", DURATION),
    "scen_conns": env_int("SCEN_CONNS", 64),
    "scen_size": os.environ.get("SCEN_SIZE", "").strip() or "small",
    # Paired per-request latency (rtt.py) at LAT_SIZES after the oha runs: reps (0 skips it) and
    # rounds per rep.
    "paired_reps": env_int("PAIRED_REPS", 1 if QUICK else ROUNDS),
    "paired_count": env_int("PAIRED_COUNT", 1000 if QUICK else 10000),
    "ringgate_build_status": os.environ.get("RINGGATE_BUILD_STATUS", ""),
    "ringgate_build_log": os.environ.get("RINGGATE_BUILD_LOG", ""),
}
for t in CFG["targets"]:
    if t not in ("direct", "ringgate", "nginx"):
        sys.exit(f"unknown target {t!r}")
for s in CFG["scenarios"]:
    if s not in ALL_SCENARIOS + EXTRA_SCENARIOS:
        sys.exit(f"unknown scenario {s!r} (have {', '.join(ALL_SCENARIOS + EXTRA_SCENARIOS)}, or none)")
if CFG["scenarios"] and "plain" not in CFG["scenarios"]:
    CFG["scenarios"].insert(0, "plain")  # the baseline every scenario is compared with
for s in CFG["sizes"] + CFG["lat_sizes"] + [CFG["scen_size"]]:
    if s not in SIZES:
        sys.exit(f"unknown size {s!r} (have {', '.join(SIZES)})")


def log(msg):
    ts = time.strftime("%H:%M:%S")
    print(f"[{ts}] {msg}", flush=True)


# --------------------------------------------------------------------------- processes

class Procs:
    """Every child we start; killed by its own pgid on exit."""

    def __init__(self):
        self.live = []

    def start(self, argv, logpath, cpu=None, group=False, **kw):
        """group=True: the child forks helpers (nginx master -> worker) that must die with it."""
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + list(argv)
        f = open(logpath, "ab")
        p = subprocess.Popen(argv, stdout=kw.pop("stdout", f), stderr=f, stdin=kw.pop("stdin", subprocess.DEVNULL),
                             start_new_session=True, **kw)
        f.close()
        p.rg_group = group
        self.live.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, grace=5.0):
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
                os.killpg(p.pid, signal.SIGCONT)  # a paused (SIGSTOPped) scenario gateway must see it
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        elif getattr(p, "rg_group", False):
            # the nginx master is gone; its worker may linger in the group it created
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in list(reversed(self.live)):
            self.stop(p, grace=3.0)


PROCS = Procs()
NOFILE = 4096  # set in main() to the RLIMIT_NOFILE we could get; nginx's worker_rlimit_nofile


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def run_bounded(argv, timeout, logpath, cpu=None):
    """Run a load generator to completion (bounded); return (rc, stdout)."""
    outpath = logpath + ".out"
    with open(outpath, "wb") as out:
        p = PROCS.start(argv, logpath, cpu=cpu, stdout=out)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"  ! timed out after {timeout}s: {' '.join(argv[:3])} ...")
            PROCS.stop(p, sig=signal.SIGKILL)
            rc = -9
        PROCS.stop(p)
    with open(outpath, "r", errors="replace") as f:
        return rc, f.read()


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout):
    """True when HOST:port accepts; False if proc exits or timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def http_check(port, path, expect_len, timeout=5.0):
    """One keep-alive-less GET; returns None if OK, else an error string."""
    try:
        c = http.client.HTTPConnection(HOST, port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
    except Exception as e:  # noqa: BLE001
        return f"GET {path}: {type(e).__name__}: {e}"
    if r.status != 200:
        return f"GET {path}: status {r.status}"
    if len(body) != expect_len:
        return f"GET {path}: body {len(body)} bytes, expected {expect_len}"
    return None


def tail(path, n=30):
    try:
        with open(path, "r", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- /proc readers

def cpu_jiffies():
    """{cpu_index: (busy, total)} from /proc/stat; busy = user+nice+system+irq+softirq+steal."""
    res = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                parts = line.split()
                v = [int(x) for x in parts[1:]] + [0] * 10
                user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
                busy = user + nice + system + irq + softirq + steal
                res[int(parts[0][3:])] = (busy, busy + idle + iowait)
    return res


def proc_status(pid, key):
    """kB value of key (VmRSS, VmHWM) from /proc/PID/status, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_ticks(pids):
    """utime+stime (clock ticks) summed over pids; missing pids count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total


def core_background(cpu, secs=1.0):
    """Busy fraction of a core over secs while we do nothing on it (noise from other tenants)."""
    a = cpu_jiffies()
    time.sleep(secs)
    b = cpu_jiffies()
    busy, total = b[cpu][0] - a[cpu][0], b[cpu][1] - a[cpu][1]
    return busy / total if total else None


def children_of(pid):
    kids = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return kids


def gateway_pids(proc):
    """The gateway's processes: the leader plus its direct children (nginx master + worker)."""
    if proc is None or proc.poll() is not None:
        return []
    return [proc.pid] + children_of(proc.pid)


def mem_kb(proc, key):
    pids = gateway_pids(proc)
    vals = [proc_status(p, key) for p in pids]
    vals = [v for v in vals if v is not None]
    return (sum(vals), {str(p): proc_status(p, key) for p in pids}) if vals else (None, {})


# --------------------------------------------------------------------------- targets

NGINX_COMMON = """
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_processes 1;
worker_rlimit_nofile {nofile};
events {{ worker_connections {wc}; use epoll; multi_accept off; }}
"""

NGINX_TEMPS = """
    client_body_temp_path {dir}/tmp_body;
    proxy_temp_path {dir}/tmp_proxy;
    fastcgi_temp_path {dir}/tmp_fastcgi;
    uwsgi_temp_path {dir}/tmp_uwsgi;
    scgi_temp_path {dir}/tmp_scgi;
"""

UPSTREAM_CONF = NGINX_COMMON + """
http {{
    access_log off;
""" + NGINX_TEMPS + """
    sendfile on;
    tcp_nopush off;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    open_file_cache max=16 inactive=300s;
    open_file_cache_valid 300s;
    server_tokens off;
    server {{
        listen {host}:{port} reuseport backlog=4096;
        root {dir}/www;
        default_type application/octet-stream;
        location = /small {{ }}
        location = /16k {{ }}
        location / {{ return 404; }}
    }}
}}
"""

PROXY_CONF = NGINX_COMMON + """
http {{
    access_log off;
""" + NGINX_TEMPS + """
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    server_tokens off;
    upstream bench {{
        server {host}:{upport};
        keepalive 1024;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # What ringgate adds to every upstream request (Kong and Traefik do too): without these the
            # upstream parses five fewer headers behind nginx, which showed as ~7% more throughput.
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_buffering on;
            proxy_buffer_size 8k;
            proxy_buffers 8 8k;
            proxy_busy_buffers_size 16k;
        }}
    }}
}}
"""

# nginx compressing as the gzip scenario's ringgate does: level 1, the upstream's type, 1 KiB minimum,
# and for proxied requests too.
PROXY_GZIP_CONF = PROXY_CONF.replace(
    "    tcp_nodelay on;\n",
    "    tcp_nodelay on;\n    gzip on;\n    gzip_comp_level 1;\n    gzip_min_length 1024;\n"
    "    gzip_proxied any;\n    gzip_vary on;\n    gzip_types application/octet-stream;\n", 1)
assert PROXY_GZIP_CONF != PROXY_CONF

RINGGATE_CONF = """[server]
listen = [{listen}]
workers = 1
[[upstreams]]
name = "bench"
targets = [{{ target = "{host}:{upport}", weight = 100 }}]
[[services]]
name = "bench"
upstream = "bench"
[[routes]]
name = "all"
service = "bench"
paths = ["/"]
strip_path = false

# The gateway's own per-route HDR histograms (latency it adds, and total) for the report.
[admin]
listen = "{host}:{admin_port}"
{extra}
"""

# Port of ringgate's admin listener (for GATEWAY_HIST_CMD: $RINGGATE_ADMIN_PORT).
ADMIN_PORT = {"ringgate": 0}


class Target:
    def __init__(self, name, port, proc=None, error=None):
        self.name, self.port, self.proc, self.error = name, port, proc, error

    def alive(self):
        return self.error is None and (self.proc is None or self.proc.poll() is None)


def builds_from_env(var, default=""):
    """`name=/path/to/ringgate,...` from env `var` (ab.py, rtt.py): a list of (name, path)."""
    out = []
    for item in filter(None, os.environ.get(var, default).split(",")):
        name, _, path = item.partition("=")
        if not path or not os.access(path, os.X_OK):
            sys.exit(f"{var} entry {item!r}: expected name=/path/to/ringgate (executable)")
        out.append((name, path))
    return out


def start_builds(run_dir, upport, bins):
    """nginx and one ringgate per (name, path) of `bins`, each checked by `verify`: the targets."""
    port = free_port()
    p, err = start_nginx_proxy(run_dir, port, upport)
    targets = [Target("nginx", port, p, err)]
    for name, path in bins:
        CFG["ringgate_bin"] = path
        port = free_port()
        p, err = start_ringgate(run_dir, port, upport, tag=name)
        targets.append(Target(name, port, p, err))
    for t in targets:
        err = t.error or verify(t)
        if err:
            sys.exit(f"{t.name}: {err}")
    return targets


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def nginx_prefix(run_dir, name, conf_tpl, **kw):
    d = os.path.join(run_dir, name)
    os.makedirs(d, exist_ok=True)
    for t in ("tmp_body", "tmp_proxy", "tmp_fastcgi", "tmp_uwsgi", "tmp_scgi"):
        os.makedirs(os.path.join(d, t), exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    write(conf, conf_tpl.format(dir=d, host=HOST, nofile=NOFILE, **kw))
    return d, conf


def start_nginx(d, conf, cpu):
    argv = [CFG["nginx_bin"], "-p", d + "/", "-c", conf, "-e", os.path.join(d, "error.log"), "-g", "daemon off;"]
    # nginx -t first, so a config error is reported as such
    t = subprocess.run(argv[:-2] + ["-t"], capture_output=True, text=True, timeout=20)
    if t.returncode != 0:
        raise RuntimeError(f"nginx -t failed for {conf}:\n{t.stderr}")
    return PROCS.start(argv, os.path.join(d, "stdout.log"), cpu=cpu, group=True)


def start_upstream(run_dir, port):
    conf_tpl = UPSTREAM_CONF
    if not CFG["upstream_split"]:
        conf_tpl = conf_tpl.replace("tcp_nopush off;", "tcp_nopush on;")
    d, conf = nginx_prefix(run_dir, "upstream", conf_tpl, port=port, wc=min(16384, NOFILE - 100))
    www = os.path.join(d, "www")
    os.makedirs(www, exist_ok=True)
    for name, size in SIZES.items():
        line = (b"ringgate load test payload 0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ!\n")
        write_bytes = (line * (size // len(line) + 1))[:size - 1] + b"\n"
        with open(os.path.join(www, name), "wb") as f:
            f.write(write_bytes)
    os.chmod(d, 0o755)
    os.chmod(www, 0o755)
    p = start_nginx(d, conf, CFG["gen_cpu"])
    if not wait_port(port, p, 15):
        raise RuntimeError("upstream nginx did not start:\n" + tail(os.path.join(d, "error.log")) +
                           tail(os.path.join(d, "stdout.log")))
    return p


def start_nginx_proxy(run_dir, port, upport, tag="nginx"):
    d, conf = nginx_prefix(run_dir, tag, PROXY_CONF, port=port, upport=upport,
                           wc=min(max(4096, CFG["idle_conns"] + 2048), NOFILE - 100))
    p = start_nginx(d, conf, CFG["gw_cpu"])
    if not wait_port(port, p, 15):
        return p, "nginx proxy did not start:\n" + tail(os.path.join(d, "error.log"))
    return p, None


def ringgate_conf(run_dir, tag, port, upport, extra=None, tls=False):
    """Writes RUN_DIR/TAG/ringgate.toml; returns its path. extra=None: RINGGATE_CONF_EXTRA."""
    d = os.path.join(run_dir, tag)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "ringgate.toml")
    admin_port = free_port()
    if tag == "ringgate":
        ADMIN_PORT["ringgate"] = admin_port
    if extra is None:
        extra = os.environ.get("RINGGATE_CONF_EXTRA", "").replace("\\n", "\n")
    listen = f'{{ addr = "{HOST}:{port}", tls = true }}' if tls else f'"{HOST}:{port}"'
    write(conf, RINGGATE_CONF.format(listen=listen, upport=upport, admin_port=admin_port, host=HOST,
                                     extra=extra))
    return conf


def start_ringgate(run_dir, port, upport, tag="ringgate", extra=None, tls=False):
    conf = ringgate_conf(run_dir, tag, port, upport, extra, tls)
    d = os.path.dirname(conf)
    logpath = os.path.join(d, "ringgate.log")
    binp = CFG["ringgate_bin"]
    if CFG["ringgate_build_status"] not in ("", "0"):
        return None, (f"`cargo build --release` failed (exit {CFG['ringgate_build_status']}); "
                      f"see {os.path.basename(CFG['ringgate_build_log']) or 'build.log'}:\n"
                      + tail(CFG["ringgate_build_log"], 25))
    if not os.access(binp, os.X_OK):
        return None, f"{binp} not found or not executable"
    p = PROCS.start([binp, "run", conf, "--workers", "1"], logpath, cpu=CFG["gw_cpu"])
    if not wait_port(port, p, 15):
        rc = p.poll()
        PROCS.stop(p)
        if rc is None:
            how = "did not accept connections within 15 s"
        elif rc < 0:
            try:
                how = f"was killed by {signal.Signals(-rc).name}"
            except ValueError:
                how = f"was killed by signal {-rc}"
        else:
            how = f"exited with status {rc}"
        logtail = tail(logpath, 25)
        last = " ".join(l.strip() for l in logtail.strip().splitlines()[-2:])[:300]
        return None, (f"`ringgate run CONFIG --workers 1` {how}" + (f": {last}" if last else "")
                      + f"\nconfig: {conf}\nlog tail:\n{logtail}")
    return p, None


def verify(target):
    """Functional check through the target before measuring it."""
    for size in sorted(set(CFG["sizes"]) | set(CFG["lat_sizes"])):
        err = http_check(target.port, "/" + size, SIZES[size])
        if err:
            return err
    return None


# --------------------------------------------------------------------------- load runs

def wrk_run(target, size, conns, duration, tag, run_dir, rnd=None, scheme="http", headers=()):
    threads = max(1, min(CFG["wrk_threads"], conns))
    url = f"{scheme}://{HOST}:{target.port}/{size}"
    argv = [CFG["wrk_bin"], "-t", str(threads), "-c", str(conns), "-d", f"{duration:g}s",
            "--timeout", "5s", "-s", os.path.join(HERE, "wrk_report.lua")]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    logpath = os.path.join(run_dir, "logs", f"{tag}.log")
    gpids = gateway_pids(target.proc)
    p0 = proc_cpu_ticks(gpids)
    j0, t0 = cpu_jiffies(), time.monotonic()
    rc, out = run_bounded(argv, duration + 30, logpath, cpu=CFG["gen_cpu"])
    j1, wall = cpu_jiffies(), time.monotonic() - t0
    p1 = proc_cpu_ticks(gpids)
    rec = {"kind": "wrk", "target": target.name, "size": size, "conns": conns, "threads": threads,
           "round": rnd, "duration_s": duration, "rc": rc, "wall_s": round(wall, 3)}
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if rc != 0 or not m:
        rec["error"] = f"wrk exit {rc}: " + out[-400:]
        return rec
    w = json.loads(m.group(1))
    secs = w["duration_us"] / 1e6
    rec.update(requests=w["requests"], bytes=w["bytes"], errors=w["errors"], run_s=round(secs, 3),
               rps=w["requests"] / secs if secs else 0.0,
               lat_mean_us=w["lat_mean_us"], lat_max_us=w["lat_max_us"], lat_pct_us=w["lat_pct_us"])
    rec["error_count"] = sum(w["errors"].values())
    util = {}
    for cpu in (CFG["gen_cpu"], CFG["gw_cpu"]):
        busy = j1[cpu][0] - j0[cpu][0]
        total = j1[cpu][1] - j0[cpu][1]
        util[cpu] = (busy, total)
    gb, gt = util[CFG["gw_cpu"]]
    lb, lt = util[CFG["gen_cpu"]]
    rec["gw_core_busy_s"] = gb / CLK_TCK
    rec["gw_core_util"] = gb / gt if gt else None
    rec["gen_core_util"] = lb / lt if lt else None
    if target.name == "direct":
        rec["cpu_us_per_req"] = None  # core 1 idle: nothing to attribute
        rec["proc_cpu_us_per_req"] = None
    else:
        rec["cpu_us_per_req"] = (gb / CLK_TCK) * 1e6 / w["requests"] if w["requests"] else None
        # cross-check: the gateway processes' own utime+stime (excludes other tenants on core 1,
        # and softirq work not charged to the process)
        rec["gw_proc_cpu_s"] = (p1 - p0) / CLK_TCK
        rec["proc_cpu_us_per_req"] = rec["gw_proc_cpu_s"] * 1e6 / w["requests"] if w["requests"] else None
    # noise indicator: core-1 busy time not accounted to the gateway processes (other tenants, plus
    # softirq work not charged to them), as a fraction of the run
    gw_secs = (gt / CLK_TCK) if gt else None
    other = rec["gw_core_busy_s"] - (rec.get("gw_proc_cpu_s") or 0.0)
    rec["gw_core_other_frac"] = max(0.0, other) / gw_secs if gw_secs else None
    if not target.alive():
        rec["error"] = "gateway process died during the run"
    return rec


def interleaved_wrk(targets, points, rounds, duration, run_dir):
    """wrk at each (size, conns) point: a 2 s warm-up per target, then `rounds` rounds in which every
    target runs once per point, in an order rotated per round. Exits on a failed run; returns every
    run's record (progress printed as it goes)."""
    for size, conns in points:
        for t in targets:
            wrk_run(t, size, conns, 2, f"warm-{t.name}-{size}-{conns}", run_dir)
    runs = []
    for rnd in range(rounds):
        for size, conns in points:
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for t in order:
                r = wrk_run(t, size, conns, duration, f"{t.name}-{size}-{conns}-{rnd}", run_dir, rnd=rnd)
                if r.get("error"):
                    sys.exit(f"{t.name} {size} c={conns}: {r['error']}")
                runs.append(r)
                print(f"round {rnd} {size:5s} c={conns:<3d} {t.name:11s} "
                      f"{r['cpu_us_per_req']:6.1f} us/req  {r['rps']:8.0f} req/s", flush=True)
    return runs


def oha_flags():
    """Version-dependent oha flags: JSON output and db support."""
    try:
        h = subprocess.run([CFG["oha_bin"], "--help"], capture_output=True, text=True, timeout=10).stdout
        v = subprocess.run([CFG["oha_bin"], "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    flags = {"version": v}
    flags["json"] = ["--output-format", "json"] if "--output-format" in h else ["--json"] if "--json" in h else None
    flags["no_tui"] = ["--no-tui"] if "--no-tui" in h else []
    flags["latency_correction"] = ["--latency-correction"] if "--latency-correction" in h else []
    flags["db"] = "--db-url" in h
    flags["disable_keepalive"] = "--disable-keepalive" in h
    return flags if flags["json"] else None


def pct_from_sorted(vals, p):
    if not vals:
        return None
    k = (len(vals) - 1) * p / 100.0
    f, c = math.floor(k), math.ceil(k)
    return vals[f] if f == c else vals[f] + (vals[c] - vals[f]) * (k - f)


HDR_PCTS = [0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 96.875, 97.5, 98.4375, 99,
            99.21875, 99.5, 99.609375, 99.75, 99.8046875, 99.9, 99.9375, 99.96875, 99.99, 99.999, 100]


def oha_run(target, size, tag, run_dir, flags, rnd=None):
    url = f"http://{HOST}:{target.port}/{size}"
    dur = CFG["lat_duration_s"]
    db = os.path.join(run_dir, "logs", f"{tag}.sqlite")
    argv = [CFG["oha_bin"], "-q", str(CFG["lat_rate"]), "-c", str(CFG["lat_conns"]), "-z", f"{dur:g}s",
            "-t", "5s"] + flags["latency_correction"] + flags["no_tui"] + flags["json"]
    if flags["db"]:
        argv += ["--db-url", db]
    argv.append(url)
    logpath = os.path.join(run_dir, "logs", f"{tag}.log")
    rc, out = run_bounded(argv, dur + 60, logpath, cpu=CFG["gen_cpu"])
    rec = {"kind": "oha", "target": target.name, "size": size, "round": rnd, "rate": CFG["lat_rate"],
           "conns": CFG["lat_conns"], "duration_s": dur, "rc": rc}
    try:
        j = json.loads(out[out.index("{"):])
    except ValueError:
        rec["error"] = f"oha exit {rc}: " + out[-400:] + tail(logpath, 5)
        return rec
    s = j.get("summary", {})
    rec["success_rate"] = s.get("successRate")
    rec["achieved_rps"] = s.get("requestsPerSec")
    rec["status_codes"] = j.get("statusCodeDistribution")
    rec["error_distribution"] = j.get("errorDistribution")
    lp = j.get("latencyPercentiles") or {}
    rec["oha_pct_ms"] = {k: (v * 1e3 if v is not None else None) for k, v in lp.items()}
    # full distribution from the per-request db (duration = end - corrected start), else oha's own
    dist = None
    if flags["db"] and os.path.exists(db):
        try:
            con = sqlite3.connect(db)
            vals = sorted(r[0] for r in con.execute("SELECT duration FROM oha WHERE status = 200"))
            con.close()
            rec["samples"] = len(vals)
            dist = {str(p): pct_from_sorted(vals, p) * 1e3 for p in HDR_PCTS} if vals else None
            os.remove(db)  # raw per-request data is large; the distribution is kept in runs.json
        except sqlite3.Error as e:
            rec["db_error"] = str(e)
    if dist is None and lp:
        dist = {}
        for k, v in lp.items():
            if v is not None:
                dist[k.lstrip("p")] = v * 1e3
    rec["dist_ms"] = dist
    if not target.alive():
        rec["error"] = "gateway process died during the run"
    return rec


# --------------------------------------------------------------------------- idle connections

IDLE_SETTLE_S = 12.0


def idle_step(name, run_dir, upport, results):
    port = free_port()
    tag = f"idle-{name}"
    if name == "nginx":
        p, err = start_nginx_proxy(run_dir, port, upport, tag=tag)
    else:
        p, err = start_ringgate(run_dir, port, upport, tag=tag)
    rec = {"target": name, "n": CFG["idle_conns"]}
    try:
        if err:
            rec["error"] = err
            return rec
        t = Target(name, port, p)
        e = verify(t)
        if e:
            rec["error"] = e
            return rec
        # warm-up: a few hundred keep-alive requests so pools/buffers exist before the baseline
        c = http.client.HTTPConnection(HOST, port, timeout=5)
        for _ in range(300):
            c.request("GET", "/small")
            c.getresponse().read()
        c.close()
        time.sleep(0.5)
        rec["baseline_rss_kb"], rec["baseline_by_pid"] = mem_kb(p, "VmRSS")
        logpath = os.path.join(run_dir, "logs", f"{tag}.log")
        argv = [sys.executable, os.path.join(HERE, "idle_conns.py"), "--port", str(port), "-n",
                str(CFG["idle_conns"]), "--open-timeout", "90", "--hold", "60"]
        ic = PROCS.start(argv, logpath, cpu=CFG["gen_cpu"], stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        line = _readline_timeout(ic, 120)
        if not line:
            rec["error"] = "idle client produced no result: " + tail(logpath, 10)
            PROCS.stop(ic)
            return rec
        ready = json.loads(line)
        rec["client"] = ready
        time.sleep(2.0)
        rec["rss_kb"], rec["rss_by_pid"] = mem_kb(p, "VmRSS")
        rec["hwm_kb"], _ = mem_kb(p, "VmHWM")
        # Settled: what the connections cost once the opening burst's leftovers (freed request state,
        # pooled buffers, allocator caches) were given back; the 2 s reading includes some of them.
        time.sleep(IDLE_SETTLE_S - 2.0)
        rec["rss_settled_kb"], _ = mem_kb(p, "VmRSS")
        try:
            ic.stdin.write(b"done\n")
            ic.stdin.flush()
        except OSError:
            pass
        line = _readline_timeout(ic, 30)
        if line:
            rec["still_open"] = json.loads(line).get("still_open")
        PROCS.stop(ic)
        if rec["rss_kb"] is None:
            rec["error"] = "gateway exited while holding the connections: " + tail(logpath, 5)
            return rec
        opened = ready.get("opened") or 0
        rec["delta_kb"] = rec["rss_kb"] - rec["baseline_rss_kb"]
        rec["bytes_per_conn"] = rec["delta_kb"] * 1024 / opened if opened else None
        if rec.get("rss_settled_kb") is not None and opened:
            rec["bytes_per_conn_settled"] = (rec["rss_settled_kb"] - rec["baseline_rss_kb"]) * 1024 / opened
        if opened < CFG["idle_conns"]:
            rec["warning"] = f"only {opened} of {CFG['idle_conns']} connections opened: {ready.get('errors')}"
        return rec
    finally:
        PROCS.stop(p)


def _readline_timeout(p, timeout):
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        ch = os.read(p.stdout.fileno(), 65536)
        if not ch:
            break
        buf += ch
        if b"\n" in buf:
            sel.close()
            return buf.split(b"\n", 1)[0].decode()
    sel.close()
    return None


# --------------------------------------------------------------------------- scenarios

# nginx as the same one-worker proxy, terminating TLS with the same certificate as ringgate's `tls`.
PROXY_TLS_CONF = PROXY_CONF.replace(
    "listen {host}:{port} backlog=4096;",
    "listen {host}:{port} ssl backlog=4096;\n"
    "        ssl_certificate {cert};\n"
    "        ssl_certificate_key {key};\n"
    "        ssl_protocols TLSv1.2 TLSv1.3;")

BENCH_APIKEY = "bench-key-0123456789"
BENCH_HS_SECRET = "bench-secret-0123456789abcdef"
RL_PLUGIN = '[[plugins]]\nname = "rate-limiting"\nconfig = {{ minute = 100000000, limit_by = "{by}" }}\n'

# What each scenario changes, in words (for the report).
SCENARIO_WHAT = {
    "plain": "ringgate, the plain proxy (baseline)",
    "metrics-off": "ringgate with `[metrics] enabled = false`",
    "ratelimit": "ringgate + rate-limiting, per IP, per minute, limit 100,000,000 (never rejects)",
    "tls": "ringgate terminating TLS (same cert as nginx-tls), keep-alive",
    "keyauth-rl": "ringgate + key-auth (`apikey` header) + rate-limiting by consumer",
    "jwt-hs256-rl": "ringgate + jwt HS256 (Bearer) + rate-limiting by consumer",
    "jwt-rs256-rl": "ringgate + jwt RS256 (Bearer) + rate-limiting by consumer",
    "nginx": "nginx, the equivalent plain proxy",
    "nginx-tls": "nginx terminating TLS with the same certificate",
    "gzip": "ringgate + compression (gzip level 1 of the upstream's `application/octet-stream` text)",
    "nginx-gzip": "nginx with `gzip on` (level 1, the same type, `gzip_min_length 1024`)",
}

GZIP_PLUGIN = ('[[plugins]]\nname = "compression"\n'
               'config = { level = 1, content_types = ["application/octet-stream"] }\n')


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_parts(alg, iss):
    now = int(time.time())
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"iss": iss, "sub": "bench", "iat": now, "exp": now + 10 * 365 * 86400}
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{body}"


def openssl(args, cwd):
    r = subprocess.run(["openssl"] + args, cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {r.stderr.strip()[-300:]}")


def scenario_material(run_dir, names):
    """Per run: a self-signed cert+key (shared by ringgate and nginx), an RSA key pair and the tokens."""
    d = os.path.join(run_dir, "keys")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    m = {"dir": d}
    if "tls" in names:
        m["cert"], m["key"] = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", m["key"], "-out", m["cert"], "-days", "30", "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], d)
    if "jwt-hs256-rl" in names:
        signing = jwt_parts("HS256", "bench-hs")
        sig = hmac.new(BENCH_HS_SECRET.encode(), signing.encode(), hashlib.sha256).digest()
        m["hs_token"] = f"{signing}.{b64url(sig)}"
    if "jwt-rs256-rl" in names:
        m["rs_key"], m["rs_pub"] = os.path.join(d, "jwt-rs.key"), os.path.join(d, "jwt-rs.pub.pem")
        openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", m["rs_key"]], d)
        openssl(["pkey", "-in", m["rs_key"], "-pubout", "-out", m["rs_pub"]], d)
        signing = jwt_parts("RS256", "bench-rs")
        inp, out = os.path.join(d, "jwt-rs.in"), os.path.join(d, "jwt-rs.sig")
        write(inp, signing)
        openssl(["dgst", "-sha256", "-sign", m["rs_key"], "-out", out, inp], d)
        with open(out, "rb") as f:
            m["rs_token"] = f"{signing}.{b64url(f.read())}"
    return m


def scenario_specs(names, m):
    """[{name, gateway, extra, tls, headers, rl, auth}] for the requested scenarios, plus nginx(-tls)."""
    specs = []
    for name in names:
        s = {"name": name, "gateway": "ringgate", "extra": "", "tls": False, "headers": [], "rl": False,
             "auth": False}
        if name == "metrics-off":
            s["extra"] = "[metrics]\nenabled = false\n"
        elif name == "ratelimit":
            s["extra"], s["rl"] = RL_PLUGIN.format(by="ip"), True
        elif name == "tls":
            s["tls"] = True
            s["extra"] = f'[[certificates]]\ncert = "{m["cert"]}"\nkey = "{m["key"]}"\ndefault = true\n'
        elif name == "keyauth-rl":
            s["extra"] = ('[[consumers]]\nusername = "bench"\n'
                          f'keyauth_credentials = [{{ key = "{BENCH_APIKEY}" }}]\n\n'
                          '[[plugins]]\nname = "key-auth"\n\n' + RL_PLUGIN.format(by="consumer"))
            s["headers"], s["rl"], s["auth"] = [f"apikey: {BENCH_APIKEY}"], True, True
        elif name in ("jwt-hs256-rl", "jwt-rs256-rl"):
            if name == "jwt-hs256-rl":
                secret = f'{{ key = "bench-hs", algorithm = "HS256", secret = "{BENCH_HS_SECRET}" }}'
                token = m["hs_token"]
            else:
                secret = f'{{ key = "bench-rs", algorithm = "RS256", public_key_file = "{m["rs_pub"]}" }}'
                token = m["rs_token"]
            s["extra"] = ('[[consumers]]\nusername = "bench"\n'
                          f'jwt_secrets = [\n  {secret},\n]\n\n'
                          '[[plugins]]\nname = "jwt"\n\n' + RL_PLUGIN.format(by="consumer"))
            s["headers"], s["rl"], s["auth"] = [f"Authorization: Bearer {token}"], True, True
        elif name == "gzip":
            s["extra"], s["headers"], s["gzip"] = GZIP_PLUGIN, ["Accept-Encoding: gzip"], True
        specs.append(s)
    specs.append({"name": "nginx", "gateway": "nginx", "tls": False, "headers": []})
    if "tls" in names:
        specs.append({"name": "nginx-tls", "gateway": "nginx", "tls": True, "headers": []})
    if "gzip" in names:
        specs.append({"name": "nginx-gzip", "gateway": "nginx", "tls": False, "gzip": True,
                      "headers": ["Accept-Encoding: gzip"]})
    return specs


def http_get(port, path, headers=(), tls=False, timeout=5.0):
    """One GET; returns (status, {lower-case header: value}, body, tls_info)."""
    if tls:
        ctx = ssl._create_unverified_context()  # noqa: S323 - our own self-signed bench cert
        c = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=ctx)
    else:
        c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path, headers=dict(h.split(": ", 1) for h in headers))
        r = c.getresponse()
        body = r.read()
        info = f"{c.sock.version()} {c.sock.cipher()[0]}" if tls and c.sock is not None else None
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body, info
    finally:
        c.close()


def scenario_verify(t, spec, info):
    """Before measuring: 200 + right body with the scenario's credentials; rate-limit headers present
    when a limiter is configured; 401 without the credential for auth chains. None if OK."""
    size = CFG["scen_size"]
    try:
        st, hdrs, body, tlsinfo = http_get(t.port, "/" + size, spec["headers"], spec["tls"])
    except Exception as e:  # noqa: BLE001
        return f"GET /{size}: {type(e).__name__}: {e}"
    wire = len(body)
    if spec.get("gzip"):
        if hdrs.get("content-encoding") != "gzip":
            return f"GET /{size} with Accept-Encoding: gzip: not compressed ({hdrs.get('content-encoding')})"
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as e:
            return f"GET /{size}: the gzip body does not decode: {e}"
    if st != 200 or len(body) != SIZES[size]:
        return f"GET /{size} with the scenario's credentials: status {st}, body {len(body)} bytes"
    checks = [f"GET /{size} → 200, {len(body)} B" + (f" ({wire} B gzip)" if spec.get("gzip") else "")]
    if tlsinfo:
        info["tls"] = tlsinfo
        checks.append(f"TLS {tlsinfo} (python ssl client)")
    if spec.get("rl"):
        if "x-ratelimit-limit-minute" not in hdrs:
            return "no X-RateLimit-Limit-Minute in the response: the rate-limiting plugin is not active"
        checks.append(f"X-RateLimit-Limit-Minute: {hdrs['x-ratelimit-limit-minute']}")
    if spec.get("auth"):
        try:
            st2 = http_get(t.port, "/" + size, (), spec["tls"])[0]
        except Exception as e:  # noqa: BLE001
            return f"GET /{size} without credentials: {type(e).__name__}: {e}"
        if st2 != 401:
            return f"GET /{size} without credentials: status {st2}, expected 401 (auth not enforced)"
        checks.append("without credentials → 401")
    info["checks"] = checks
    return None


def ringgate_check(conf):
    """`ringgate check CONF`: None if accepted, else its output."""
    try:
        r = subprocess.run([CFG["ringgate_bin"], "check", conf], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ringgate check: {e}"
    return None if r.returncode == 0 else (r.stdout + r.stderr).strip() or f"exit {r.returncode}"


def pause(t, on):
    """SIGSTOP / SIGCONT a scenario gateway's whole process group (ringgate, or nginx master + worker)."""
    if t.proc is not None and t.proc.poll() is None:
        try:
            os.killpg(t.proc.pid, signal.SIGSTOP if on else signal.SIGCONT)
        except ProcessLookupError:
            pass


def scenario_phase(data, run_dir, upport):
    names = CFG["scenarios"]
    sc = {"names": names, "conns": CFG["scen_conns"], "size": CFG["scen_size"], "rounds": CFG["scen_rounds"],
          "duration_s": CFG["scen_duration_s"], "info": {}, "order": []}
    data["scenarios"] = sc
    try:
        m = scenario_material(run_dir, names)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        data["notes"].append(f"scenarios: could not generate keys/certs: {e}")
        log(f"scenarios: could not generate keys/certs: {e}")
        m = {}
    m.update(upport=upport)
    specs = scenario_specs(names, m) if m.get("dir") else []
    live = []
    for spec in specs:
        name = spec["name"]
        info = sc["info"].setdefault(name, {"gateway": spec["gateway"], "what": SCENARIO_WHAT[name],
                                             "headers": [h.split(":")[0] for h in spec["headers"]]})
        port = free_port()
        tag = f"scen-{name}"
        if spec["gateway"] == "nginx":
            if spec["tls"]:
                d, conf = nginx_prefix(run_dir, tag, PROXY_TLS_CONF, port=port, upport=upport, wc=4096,
                                       cert=m["cert"], key=m["key"])
            elif spec.get("gzip"):
                d, conf = nginx_prefix(run_dir, tag, PROXY_GZIP_CONF, port=port, upport=upport, wc=4096)
            else:
                d, conf = nginx_prefix(run_dir, tag, PROXY_CONF, port=port, upport=upport, wc=4096)
            try:
                p = start_nginx(d, conf, CFG["gw_cpu"])
                err = None if wait_port(port, p, 15) else "nginx did not start:\n" + tail(
                    os.path.join(d, "error.log"))
            except RuntimeError as e:
                p, err = None, str(e)
        else:
            if CFG["ringgate_build_status"] not in ("", "0") or not os.access(CFG["ringgate_bin"], os.X_OK):
                info["error"] = "ringgate not built"
                log(f"scenario {name}: NOT MEASURED: ringgate not built")
                continue
            conf = ringgate_conf(run_dir, tag, port, upport, spec["extra"], spec["tls"])
            rejected = ringgate_check(conf)
            if rejected:
                rejected = rejected.replace(os.path.dirname(conf) + os.sep, "")
                info["skipped"] = "`ringgate check` rejects its config (feature not in this build?): " + rejected
                log(f"scenario {name}: SKIPPED: ringgate check rejects its config: "
                    + " | ".join(rejected.splitlines()[:2])[:300])
                continue
            p, err = start_ringgate(run_dir, port, upport, tag=tag, extra=spec["extra"], tls=spec["tls"])
        t = Target(name, port, p, err)
        t.spec = spec
        if t.error is None:
            e = scenario_verify(t, spec, info)
            if e:
                t.error = "functional check failed: " + e
        if t.error:
            info["error"] = t.error
            log(f"scenario {name}: NOT MEASURED: {t.error.splitlines()[0]}")
            if p is not None:
                PROCS.stop(p)
            continue
        log(f"scenario {name}: ready on port {port} ({'; '.join(info.get('checks', []))})")
        info["pid"] = p.pid
        pause(t, True)
        live.append(t)
    if not live:
        return
    size, conns, dur = CFG["scen_size"], CFG["scen_conns"], CFG["scen_duration_s"]

    def run(t, tag, secs, rnd=None):
        pause(t, False)
        time.sleep(0.2)  # let timers that fell due while it was stopped fire before the counters are read
        try:
            return wrk_run(t, size, conns, secs, tag, run_dir, rnd, scheme="https" if t.spec["tls"] else "http",
                           headers=t.spec["headers"])
        finally:
            pause(t, True)

    for t in live:
        log(f"warm-up scenario {t.name} ({CFG['warmup_s']:g}s, c={conns})")
        run(t, f"warmup-scen-{t.name}", CFG["warmup_s"])
    bg = core_background(CFG["gw_cpu"], 1.0)
    sc["gw_core_background_busy"] = bg
    if bg is not None:
        log(f"core {CFG['gw_cpu']} busy with every scenario gateway paused: {bg * 100:.1f}%")
    total = CFG["scen_rounds"] * len(live)
    n = 0
    for rnd in range(1, CFG["scen_rounds"] + 1):
        k = (rnd - 1) % len(live)
        order = live[k:] + live[:k]  # rotate: no scenario always runs first or right after another
        sc["order"].append([t.name for t in order])
        for t in order:
            if not t.alive():
                if t.error is None:
                    t.error = sc["info"][t.name]["error"] = f"process exited (status {t.proc.poll()})"
                    log(f"scenario {t.name} died: {t.error}")
                continue
            n += 1
            rec = run(t, f"wrk-scen-r{rnd}-{t.name}", dur, rnd)
            rec["scenario"] = t.name
            data["scenario_runs"].append(rec)
            cpu = rec.get("cpu_us_per_req")
            log(f"[scen {n}/{total}] r{rnd} {t.name:13s} /{size} c={conns} "
                + (f"{rec['rps']:9.0f} req/s  gw {cpu:.2f} us/req" if cpu is not None and "rps" in rec
                   else "ERROR " + rec.get("error", "")[:200])
                + (f"  non-2xx={rec['errors']['status']}" if rec.get("errors", {}).get("status") else "")
                + (f"  socket errors={rec['error_count'] - rec['errors']['status']}"
                   if rec.get("error_count", 0) - rec.get("errors", {}).get("status", 0) else ""))
    for t in live:
        if t.alive():
            pause(t, False)
            if t.spec.get("rl"):
                # after all the load: still not limited
                try:
                    st = http_get(t.port, "/" + size, t.spec["headers"], t.spec["tls"])[0]
                    sc["info"][t.name]["after_status"] = st
                except Exception as e:  # noqa: BLE001
                    sc["info"][t.name]["after_status"] = f"{type(e).__name__}: {e}"
            hwm, _ = mem_kb(t.proc, "VmHWM")
            sc["info"][t.name]["peak_rss_kb"] = hwm
        PROCS.stop(t.proc)


# --------------------------------------------------------------------------- machine info

def sh(cmd, timeout=10):
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
        return (r.stdout + r.stderr).strip()
    except subprocess.TimeoutExpired:
        return "(timed out)"


def machine_info():
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-").strip()
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "os": sh(". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\""),
        "mem": sh("free -h | awk '/Mem:/{print $2}'"),
        "nginx": sh(f"{CFG['nginx_bin']} -v"),
        "wrk": sh(f"{CFG['wrk_bin']} -v | head -1"),
        "oha": sh(f"{CFG['oha_bin']} --version") if CFG["oha_bin"] and os.path.exists(CFG["oha_bin"]) else "missing",
        "ringgate": sh(f"{CFG['ringgate_bin']} --version") if os.path.exists(CFG["ringgate_bin"]) else "missing",
        "ringgate_git": sh(f"git -C {ROOT} rev-parse --short HEAD; git -C {ROOT} status --porcelain | wc -l"),
        "python": platform.python_version(),
        "clk_tck": CLK_TCK,
        "loadavg_start": sh("cat /proc/loadavg"),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "governor": sh("cat /sys/devices/system/cpu/cpu1/cpufreq/scaling_governor 2>/dev/null || echo n/a"),
    }


# --------------------------------------------------------------------------- main

def main():
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
    try:
        os.sched_setaffinity(0, {CFG["gen_cpu"]})  # this script and its load generators: core 0
    except OSError as e:
        log(f"warning: could not pin harness to core {CFG['gen_cpu']}: {e}")
    global NOFILE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, CFG["idle_conns"] + 4096)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if NOFILE < CFG["idle_conns"] + 1024:
        log(f"warning: RLIMIT_NOFILE is {NOFILE}: too low for {CFG['idle_conns']} idle connections "
            "(raise the hard limit or lower IDLE_CONNS)")

    stamp = os.environ.get("REPORT_STAMP") or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    report_dir = os.environ.get("REPORT_DIR") or os.path.join(HERE, "reports", stamp)
    os.makedirs(report_dir, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="ringgate-lt-")
    os.chmod(run_dir, 0o755)
    os.makedirs(os.path.join(run_dir, "logs"))
    log(f"run dir {run_dir}; report dir {report_dir}")
    t_start = time.time()
    data = {"config": CFG, "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine_info(), "targets": {}, "runs": [], "latency": [], "peak_rss": {},
            "idle": [], "notes": [], "scenario_runs": []}
    try:
        _bench(data, run_dir)
    except BaseException as e:  # noqa: BLE001 - still write what we have, then re-raise
        why = f"exit status {e.code} (signal / global TIMEOUT guard)" if isinstance(e, SystemExit) else \
            f"{type(e).__name__}: {e}"
        data["notes"].append(f"RUN INCOMPLETE: stopped early by {why}; the tables hold the runs done so far")
        log(f"run stopped early: {why}")
        raise
    finally:
        PROCS.stop_all()
        data["elapsed_s"] = round(time.time() - t_start, 1)
        data["run_dir"] = run_dir
        # keep configs + gateway logs with the report (small); drop the rest of the temp dir
        keep = os.path.join(report_dir, "configs")
        os.makedirs(keep, exist_ok=True)
        for path in glob.glob(os.path.join(run_dir, "*", "nginx.conf")) + glob.glob(
                os.path.join(run_dir, "*", "ringgate.toml")):
            shutil.copy(path, os.path.join(keep, path.split(os.sep)[-2] + "-" + os.path.basename(path)))
        for path in glob.glob(os.path.join(run_dir, "*", "ringgate.log")) + glob.glob(
                os.path.join(run_dir, "*", "error.log")):
            if os.path.getsize(path) > 0:
                with open(path, "rb") as f:
                    f.seek(max(0, os.path.getsize(path) - 20000))
                    chunk = f.read()
                with open(os.path.join(keep, path.split(os.sep)[-2] + "-" + os.path.basename(path)), "wb") as f:
                    f.write(chunk)
        with open(os.path.join(report_dir, "runs.json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
        import report  # noqa: E402 - sibling module
        report.write_report(data, report_dir)
        if os.environ.get("KEEP_RUN_DIR", "") in ("", "0"):
            shutil.rmtree(run_dir, ignore_errors=True)
        log(f"report: {os.path.join(report_dir, 'report.md')}")


def paired_step(data, targets, run_dir):
    """rtt.py's paired per-request latency over the running targets, at LAT_SIZES (needs gcc)."""
    import rtt  # noqa: E402 - sibling module
    direct = next((t for t in targets if t.name == "direct"), None)
    gws = [t for t in targets if t.name != "direct" and t.alive()]
    if direct is None or not gws or not shutil.which("gcc"):
        data["notes"].append("paired latency step skipped: it needs direct, a live gateway and gcc")
        return
    reps, count = CFG["paired_reps"], CFG["paired_count"]
    log(f"paired latency: {reps} rep(s) of {count} rounds per size ({', '.join(CFG['lat_sizes'])})")
    try:
        binp = rtt.compile_rtt(run_dir)
        results = rtt.measure(binp, direct.port, gws, CFG["lat_sizes"], reps, count)
    except Exception as e:  # noqa: BLE001 - a failed extra step is a note, not a lost run
        data["notes"].append(f"paired latency step failed: {e}")
        log(f"paired latency step failed: {e}")
        return
    data["paired"] = {"reps": reps, "count": count, "about": rtt.describe(reps, count),
                      "names": ["direct"] + [t.name for t in gws], "results": results}


def run_hist_cmd(data, targets, run_dir):
    """GATEWAY_HIST_CMD runs while the gateways are still up (after the load runs), with
    RINGGATE_PORT / RINGGATE_PID / RINGGATE_LOG / NGINX_PORT / UPSTREAM_PORT / RUN_DIR in its env."""
    log("running GATEWAY_HIST_CMD")
    env = dict(os.environ, RUN_DIR=run_dir)
    for t in targets:
        if t.name == "direct":
            env["UPSTREAM_PORT"] = str(t.port)
        elif t.alive():
            env[t.name.upper() + "_PORT"] = str(t.port)
            env[t.name.upper() + "_PID"] = str(t.proc.pid)
    env["RINGGATE_LOG"] = os.path.join(run_dir, "ringgate", "ringgate.log")
    env["RINGGATE_ADMIN_PORT"] = str(ADMIN_PORT["ringgate"])
    try:
        r = subprocess.run(CFG["gateway_hist_cmd"], shell=True, capture_output=True, text=True, timeout=120,
                           cwd=ROOT, env=env, start_new_session=True)
        data["gateway_hist"] = {"rc": r.returncode, "output": (r.stdout + r.stderr)[-50000:]}
    except subprocess.TimeoutExpired:
        data["gateway_hist"] = {"rc": None, "output": "(timed out after 120 s)"}


def _bench(data, run_dir):
    upport = free_port()
    log(f"starting upstream nginx on {HOST}:{upport} (core {CFG['gen_cpu']})")
    up = start_upstream(run_dir, upport)
    if CFG["scenarios_only"]:
        if CFG["scenarios"]:
            log(f"scenarios only: {', '.join(CFG['scenarios'])}")
            scenario_phase(data, run_dir, upport)
        PROCS.stop(up)
        return
    targets = []
    for name in CFG["targets"]:
        port = free_port()
        if name == "direct":
            t = Target("direct", upport, None)
        elif name == "nginx":
            p, err = start_nginx_proxy(run_dir, port, upport)
            t = Target("nginx", port, p, err)
        else:
            p, err = start_ringgate(run_dir, port, upport)
            t = Target("ringgate", port, p, err)
        if t.error is None:
            e = verify(t)
            if e:
                t.error = "functional check failed: " + e
        if t.error:
            log(f"target {name}: NOT MEASURED: {t.error.splitlines()[0]}")
        else:
            log(f"target {name}: ready on port {t.port}")
        data["targets"][name] = {"port": t.port, "pid": t.proc.pid if t.proc else None, "error": t.error}
        targets.append(t)
    if up.poll() is not None:
        raise RuntimeError("upstream died")

    live = [t for t in targets if t.alive()]
    for t in live:
        log(f"warm-up {t.name} ({CFG['warmup_s']:g}s, c=64)")
        wrk_run(t, "small", 64, CFG["warmup_s"], f"warmup-{t.name}", run_dir)

    bg = core_background(CFG["gw_cpu"], 1.0)
    data["machine"]["gw_core_background_busy"] = bg
    log(f"core {CFG['gw_cpu']} busy with nothing of ours on it: {bg * 100:.1f}% (noise from other tenants)")
    if bg is not None and bg > 0.05:
        data["notes"].append(f"core {CFG['gw_cpu']} was {bg * 100:.0f}% busy before the runs with no gateway load: "
                             "CPU µs/req from /proc/stat is inflated by other work; see the process-time column")

    oha = oha_flags()
    if oha is None:
        data["notes"].append("oha not available: fixed-rate latency step skipped")
        log("oha not available: fixed-rate latency step skipped")
    else:
        data["machine"]["oha_flags"] = oha

    total = CFG["rounds"] * len(CFG["sizes"]) * len(CFG["conns"]) * len(live)
    n = 0
    for rnd in range(1, CFG["rounds"] + 1):
        for size in CFG["sizes"]:
            for conns in CFG["conns"]:
                for t in targets:  # A B C, same order every round
                    if not t.alive():
                        if t.proc is not None and t.error is None:
                            t.error = f"process exited (status {t.proc.poll()}) during the run"
                            data["targets"][t.name]["error"] = t.error
                            log(f"target {t.name} died: {t.error}")
                        continue
                    n += 1
                    rec = wrk_run(t, size, conns, CFG["duration_s"], f"wrk-r{rnd}-{t.name}-{size}-c{conns}",
                                  run_dir, rnd)
                    data["runs"].append(rec)
                    cpu = rec.get("cpu_us_per_req")
                    log(f"[{n}/{total}] r{rnd} {t.name:8s} /{size:5s} c={conns:<3d} "
                        + (f"{rec['rps']:9.0f} req/s  gw {cpu:.2f} us/req" if cpu is not None and "rps" in rec
                           else f"{rec['rps']:9.0f} req/s" if "rps" in rec else "ERROR " + rec.get("error", "")[:200])
                        + (f"  errors={rec['error_count']}" if rec.get("error_count") else ""))
        if oha is not None:
            # direct first (each round's reference), then the gateways in an order that rotates
            # per round, so position effects (right after direct, after the wrk matrix) do not
            # always fall on the same gateway.
            gws = [t for t in targets if t.name != "direct"]
            k = (rnd - 1) % max(1, len(gws))
            lat_order = [t for t in targets if t.name == "direct"] + gws[k:] + gws[:k]
            for size in CFG["lat_sizes"]:
                for t in lat_order:
                    if not t.alive():
                        continue
                    rec = oha_run(t, size, f"oha-r{rnd}-{t.name}-{size}", run_dir, oha, rnd)
                    data["latency"].append(rec)
                    pc = rec.get("dist_ms") or {}
                    log(f"latency r{rnd} {t.name:8s} /{size:5s} @{CFG['lat_rate']}/s "
                        + (" ".join(f"p{k}={pc[k]:.3f}ms" for k in ("50", "99", "99.9") if pc.get(k) is not None)
                           if "error" not in rec else "ERROR " + rec["error"][:200]))

    if CFG["paired_reps"] > 0:
        paired_step(data, targets, run_dir)

    for t in targets:
        if t.proc is not None:
            hwm, by_pid = mem_kb(t.proc, "VmHWM")
            data["peak_rss"][t.name] = {"kb": hwm, "by_pid": by_pid}
    if CFG["gateway_hist_cmd"]:
        run_hist_cmd(data, targets, run_dir)
    for t in targets:
        if t.proc is not None:
            PROCS.stop(t.proc)

    if CFG["scenarios"]:
        log(f"scenarios: {', '.join(CFG['scenarios'])} at /{CFG['scen_size']} c={CFG['scen_conns']}, "
            f"{CFG['scen_rounds']} round(s) of {CFG['scen_duration_s']:g} s")
        scenario_phase(data, run_dir, upport)

    if CFG["idle_conns"] > 0:
        for name in GATEWAYS:
            if name not in CFG["targets"]:
                continue
            if data["targets"].get(name, {}).get("error") and name == "ringgate":
                data["idle"].append({"target": name, "n": CFG["idle_conns"],
                                     "error": "not started: " + data["targets"][name]["error"].splitlines()[0]})
                continue
            log(f"idle connections: {CFG['idle_conns']} to a fresh {name}")
            rec = idle_step(name, run_dir, upport, data["idle"])
            data["idle"].append(rec)
            if rec.get("bytes_per_conn") is not None:
                log(f"  {name}: baseline {rec['baseline_rss_kb']} kB, with {rec['client']['opened']} idle conns "
                    f"{rec['rss_kb']} kB -> {rec['bytes_per_conn']:.0f} B/conn")
            else:
                log(f"  {name}: {rec.get('error', '?').splitlines()[0]}")

    PROCS.stop(up)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    # Sibling modules (rtt.py) `import bench`: let them share this one (its CFG and PROCS), not
    # load a second copy.
    sys.modules.setdefault("bench", sys.modules[__name__])
    main()
