#!/usr/bin/env python3
"""Per-request event counts and core-1 time for each gateway, from `perf stat` on the gateway core.

Starts the upstream, nginx, ringgate and (with gcc) the floor's relay_epoll as run.sh pins them (wrk
and the upstream on core 0, the gateway alone on core 1); for each point and target: a 1 s warm-up,
then one wrk run with `perf stat -C 1` over its middle. Prints µs per request, core 1's idle jiffies
(is the gateway core saturated?) and each event per request: syscalls, io_uring submissions and poll
arms, context switches, softirqs. Use it to compare how two gateways spend the kernel's time. The
syscall tracepoints cost time on every syscall, so the µs and idle figures include that overhead:
for those run with EVENTS=context-switches (a software counter), and for CPU comparisons use run.sh
or ab.py, which interleave rounds.

Usage: python3 loadtest/counts.py [OUT_DIR]
  env: POINTS=small:64,small:256  TARGETS=nginx,ringgate,relay_epoll  DUR=6
       EVENTS=<perf event list>  (default below; uprobes such as probe_libc:clock_gettime work too)
Needs perf with tracepoint access (root or perf_event_paranoid <= 1), wrk and nginx.
"""
import os, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as B  # noqa: E402

POINTS = [(p.split(":")[0], int(p.split(":")[1]))
          for p in os.environ.get("POINTS", "small:64,small:256").split(",")]
TARGETS = os.environ.get("TARGETS", "nginx,ringgate,relay_epoll").split(",")
DUR = int(os.environ.get("DUR", "6"))
EVENTS = os.environ.get("EVENTS", ",".join([
    "context-switches", "sched:sched_wakeup", "irq:softirq_entry",
    "syscalls:sys_enter_io_uring_enter", "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_writev",
    "syscalls:sys_enter_read", "syscalls:sys_enter_write",
    "io_uring:io_uring_submit_req", "io_uring:io_uring_poll_arm",
]))


def cpu1_fields():
    """cpu1's /proc/stat fields: user nice system idle iowait irq softirq steal ..."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu1 "):
                return [int(x) for x in line.split()[1:]]
    return []


def start_targets(run_dir, upport):
    targets = {}
    for name in TARGETS:
        port = B.free_port()
        if name == "nginx":
            p, err = B.start_nginx_proxy(run_dir, port, upport)
        elif name == "ringgate":
            p, err = B.start_ringgate(run_dir, port, upport)
        elif name == "relay_epoll":
            binp = os.path.join(run_dir, "relay_epoll")
            subprocess.run(["gcc", "-O2", "-o", binp, os.path.join(HERE, "floor", "relay_epoll.c")],
                           check=True)
            p = B.PROCS.start([binp, str(port), str(upport)], os.path.join(run_dir, "relay.log"),
                              cpu=B.CFG["gw_cpu"])
            err = None if B.wait_port(port, p, 10) else "relay_epoll did not start"
        else:
            sys.exit(f"unknown target {name!r}")
        t = B.Target(name, port, p, err)
        err = t.error or B.verify(t)
        if err:
            sys.exit(f"{name}: {err}")
        targets[name] = t
    return targets


def main():
    os.sched_setaffinity(0, {B.CFG["gen_cpu"]})
    run_dir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/ringgate-counts"
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    os.chmod(run_dir, 0o755)
    try:
        upport = B.free_port()
        B.start_upstream(run_dir, upport)
        targets = start_targets(run_dir, upport)
        for size, conns in POINTS:
            for name in TARGETS:
                t = targets[name]
                url = f"http://{B.HOST}:{t.port}/{size}"
                wrk = [B.CFG["wrk_bin"], "-t1", f"-c{conns}", "--timeout", "5s"]
                subprocess.run(["taskset", "-c", "0"] + wrk + ["-d1s", url], capture_output=True,
                               timeout=30)
                stat = os.path.join(run_dir, f"{name}-{size}-{conns}.stat")
                perf = subprocess.Popen(["perf", "stat", "-C", str(B.CFG["gw_cpu"]), "-x", ",",
                                         "-e", EVENTS, "-o", stat, "--", "sleep", str(DUR - 1)])
                c0 = cpu1_fields()
                r = subprocess.run(["taskset", "-c", "0"] + wrk + [f"-d{DUR}s", url],
                                   capture_output=True, text=True, timeout=DUR + 30)
                c1 = cpu1_fields()
                perf.wait(timeout=DUR + 30)
                reqs = next((int(l.split()[0]) for l in r.stdout.splitlines() if "requests in" in l), 0)
                d = [b - a for a, b in zip(c0, c1)]
                busy = sum(d) - d[3] - d[4] if len(d) > 4 else 0
                us = busy / os.sysconf("SC_CLK_TCK") * 1e6 / max(reqs, 1)
                print(f"/{size} c={conns} {name}: {reqs / DUR:,.0f} req/s, core 1 {us:.2f} us/req, "
                      f"idle {d[3] if len(d) > 3 else 0} of {sum(d)} jiffies", flush=True)
                in_window = reqs * (DUR - 1) / DUR  # perf covers DUR-1 s of the DUR s run
                with open(stat) as f:
                    for line in f:
                        parts = line.strip().split(",")
                        if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                            print(f"    {parts[2]:42s} {float(parts[0]) / max(in_window, 1):8.3f} /req")
    finally:
        B.PROCS.stop_all()


if __name__ == "__main__":
    main()
