#!/usr/bin/env python3
"""The floor: gateway-core CPU per request of two do-nothing relays, beside nginx and ringgate.

relay_epoll and relay_uring copy bytes between 1:1 kept-alive client and upstream connections
with no HTTP work at all (see their headers). Whatever they cost per request on the gateway core
is kernel work (TCP on loopback, wakeups, syscalls or io_uring) that any proxy pays. Their cost
as a fraction of nginx's shows how far below nginx a real proxy can go on this machine.

Usage: python3 loadtest/floor/floor.py   (env: ROUNDS=5 DURATION=6 POINTS=small:64,small:256,16k:64,
       RELAYS=relay_epoll,relay_uring,relay_splice (relay_splice: relay_epoll with splice(2), zero-copy),
       UPSTREAM_SPLIT=1 for an upstream that sends head and body apart, as run.sh documents;
       MODE=latency: oha at run.sh's fixed rate on the first point's size, added p50/p99 over direct)
Builds the relays with gcc (relay_uring needs liburing-dev), pins like run.sh: load and upstream on
core 0, the gateway on core 1; interleaves targets within each round; prints medians as a table.
"""
import json, os, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import bench as B  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "5"))
DUR = float(os.environ.get("DURATION", "6"))
MODE = os.environ.get("MODE", "cpu")  # cpu: wrk, CPU per request; latency: oha, added latency
RELAYS = os.environ.get("RELAYS", "relay_epoll,relay_uring").split(",")  # relay_splice: zero-copy
POINTS = [(p.split(":")[0], int(p.split(":")[1]))
          for p in os.environ.get("POINTS", "small:64,small:256,16k:64").split(",")]


def build(run_dir):
    bins = {}
    relays = (("relay_epoll", "relay_epoll", []), ("relay_uring", "relay_uring", ["-luring"]),
              ("relay_splice", "relay_epoll", ["-DSPLICE"]))
    for name, src, flags in relays:
        if name not in RELAYS:
            continue
        out = os.path.join(run_dir, name)
        r = subprocess.run(["gcc", "-O2", "-Wall", "-o", out, os.path.join(HERE, src + ".c")] + flags,
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"building {name} failed (relay_uring needs liburing-dev):\n{r.stderr}")
        bins[name] = out
    return bins


def latency(targets, upport, run_dir):
    """oha at run.sh's fixed rate, direct first in every round: added p50/p99 over direct."""
    targets = [B.Target("direct", upport, None)] + targets
    flags = B.oha_flags()
    size = POINTS[0][0]
    res = {t.name: [] for t in targets}
    for rnd in range(ROUNDS):
        order = [targets[0]] + targets[1:][rnd % (len(targets) - 1):] + targets[1:][:rnd % (len(targets) - 1)]
        for t in order:
            rec = B.oha_run(t, size, f"lat-{t.name}-{rnd}", run_dir, flags, rnd)
            d = rec.get("dist_ms") or {}
            if rec.get("error") or "50" not in d:
                sys.exit(f"{t.name}: {rec.get('error', 'no distribution')}")
            res[t.name].append((d["50"], d["99"]))
            print(f"round {rnd} {t.name:11s} p50 {d['50']:.3f} p99 {d['99']:.3f} ms", flush=True)
    with open(os.path.join(run_dir, "latency.json"), "w") as f:
        json.dump(res, f, indent=1)
    # added latency per round (against that round's direct run), then the median over rounds
    print(f"\nraw: {run_dir}/latency.json\n")
    print(f"| /{size} at {B.CFG['lat_rate']} req/s | added p50 (ms) | added p99 (ms) |")
    print("|---|---|---|")
    for t in targets[1:]:
        a50 = statistics.median(x[0] - d[0] for x, d in zip(res[t.name], res["direct"]))
        a99 = statistics.median(x[1] - d[1] for x, d in zip(res[t.name], res["direct"]))
        print(f"| {t.name} | {a50:+.3f} | {a99:+.3f} |")


def main():
    os.sched_setaffinity(0, {B.CFG["gen_cpu"]})  # the harness and wrk: core 0
    run_dir = tempfile.mkdtemp(prefix="floor-")
    os.chmod(run_dir, 0o755)
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    bins = build(run_dir)
    try:
        upport = B.free_port()
        B.start_upstream(run_dir, upport)
        targets = []
        port = B.free_port()
        p, err = B.start_nginx_proxy(run_dir, port, upport)
        targets.append(B.Target("nginx", port, p, err))
        port = B.free_port()
        p, err = B.start_ringgate(run_dir, port, upport)
        targets.append(B.Target("ringgate", port, p, err))
        for name, path in bins.items():
            port = B.free_port()
            p = B.PROCS.start([path, str(port), str(upport)], os.path.join(run_dir, name + ".log"),
                              cpu=B.CFG["gw_cpu"])
            ok = B.wait_port(port, p, 10)
            targets.append(B.Target(name, port, p, None if ok else f"{name} did not start"))
        for t in targets:
            err = t.error or B.verify(t)
            if err:
                sys.exit(f"{t.name}: {err}")
        if MODE == "latency":
            return latency(targets, upport, run_dir)
        runs = B.interleaved_wrk(targets, POINTS, ROUNDS, DUR, run_dir)
        with open(os.path.join(run_dir, "floor.json"), "w") as f:
            json.dump(runs, f, indent=1)
        print(f"\nraw runs: {run_dir}/floor.json\n")
        names = [t.name for t in targets]
        print("| point | " + " | ".join(f"{n} us/req" for n in names) + " | " +
              " | ".join(f"{n}/nginx" for n in names[1:]) + " |")
        print("|---" * (2 * len(names)) + "|")
        for size, conns in POINTS:
            med = {}
            for n in names:
                v = [r["cpu_us_per_req"] for r in runs
                     if r["target"] == n and r["size"] == size and r["conns"] == conns]
                med[n] = (statistics.median(v), min(v), max(v))
            cells = [f"{med[n][0]:.1f} ({med[n][1]:.1f}-{med[n][2]:.1f})" for n in names]
            ratios = [f"{med[n][0] / med['nginx'][0]:.2f}" for n in names[1:]]
            print(f"| /{size} c={conns} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    finally:
        B.PROCS.stop_all()


if __name__ == "__main__":
    main()
